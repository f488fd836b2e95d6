"""What a run records reaches every surface, and nothing damaged is served: the run manifest and
the export record are validated whole at load, overrides merge into what was recorded, fusion
survives huge first-stage scores, and metrics do not rank ties by how ids are spelled."""

import json

import numpy as np
import pytest

from rerankit import ConfigError, ModelLoadError, Reranker
from rerankit.export import export
from rerankit.fusion import LearnedFusion, zscore
from rerankit.ranking_metrics import ranking_metrics

pytestmark = pytest.mark.smoke

QUERY = "tell me about apple"
DOCS = ["zinc of the old quartz", "apple story with apple", "the river is old"]
WINDOWS = {"mode": "windows", "window": 8, "stride": 0, "aggregate": "max", "max_windows": 8}
LONG_DOC = "zinc quartz oxide ion " * 6 + "apple story with apple"


def edit_json(path, **changes):
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def load(path, **options):
    return Reranker.load(path, device="cpu", dtype="float32", **options)


def test_an_export_keeps_the_runs_long_document_setting(run_copy, tmp_path):
    edit_json(run_copy / "run.json", long_documents=WINDOWS)
    run = load(run_copy)
    exported = load(export(run_copy, tmp_path / "export"))
    assert exported.long_documents == run.long_documents and exported.long_documents.mode == "windows"
    logits, windows = exported.window_logits([QUERY], [LONG_DOC])
    assert windows[0] > 1
    # the export's head carries the calibration: compare relevance scores
    np.testing.assert_allclose(exported.score([(QUERY, LONG_DOC)]), run.score([(QUERY, LONG_DOC)]), atol=1e-4)


def test_a_partial_override_changes_only_the_fields_it_names(run_copy, tmp_path):
    from click.testing import CliRunner

    from rerankit.cli import main

    edit_json(run_copy / "run.json", long_documents=WINDOWS)
    merged = load(run_copy, long_documents={"aggregate": "mean"}).long_documents
    assert (merged.mode, merged.aggregate, merged.window) == ("windows", "mean", 8)
    exported = export(run_copy, tmp_path / "export")
    assert load(exported, long_documents={"aggregate": "first"}).long_documents.mode == "windows"
    # --window-aggregate alone keeps the recorded windows: the long document is read by windows
    docs = tmp_path / "docs.txt"
    docs.write_text(LONG_DOC + "\n")
    result = CliRunner().invoke(
        main,
        ["rerank", "--model", str(run_copy), "--query", QUERY, "--docs", str(docs)]
        + ["--window-aggregate", "mean", "--dtype", "float32", "--json", "--raw"],
    )
    assert result.exit_code == 0, result.output
    by_mean = load(run_copy, long_documents={"aggregate": "mean"}).logits([QUERY], [LONG_DOC])[0]
    assert json.loads(result.stdout)[0]["score"] == pytest.approx(float(by_mean), abs=1e-4)
    truncated = load(run_copy, long_documents={"mode": "truncate"}).logits([QUERY], [LONG_DOC])[0]
    assert float(by_mean) != pytest.approx(float(truncated), abs=1e-4)


def test_a_prompt_mapping_changes_fields_of_the_recorded_template(tiny_qwen3_dir):
    from rerankit.prompts import PRESETS
    from rerankit.recorded import merged_prompt

    merged = merged_prompt(PRESETS["qwen3"], {"instruction": "Find the answer"})
    assert merged.instruction == "Find the answer" and merged.prefix == PRESETS["qwen3"].prefix
    with pytest.raises(ConfigError, match=r"prompt: unknown field\(s\) \['instructions'\]"):
        merged_prompt(PRESETS["qwen3"], {"instructions": "x"})
    assert merged_prompt(PRESETS["qwen3"], "plain") == "plain"


@pytest.mark.parametrize(
    ("calibration", "message"),
    [
        ({"scale": float("nan"), "bias": 0.0}, "calibration: scale must be a finite number above 0"),
        ({"scale": -1.5, "bias": 0.0}, "calibration: scale must be a finite number above 0"),
        ({"scale": float("inf"), "bias": 0.0}, "calibration: scale must be a finite number above 0"),
        ({"scale": 1.0, "bias": float("nan")}, "calibration: bias must be a finite number"),
    ],
)
def test_a_damaged_calibration_is_refused_at_load(run_copy, tmp_path, calibration, message):
    from click.testing import CliRunner

    from rerankit.cli import main

    # json.dumps writes NaN and Infinity, as a hand edit or another tool might
    edit_json(run_copy / "run.json", calibration=calibration)
    with pytest.raises(ModelLoadError, match=message):
        load(run_copy)
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n")
    result = CliRunner().invoke(
        main, ["rerank", "--model", str(run_copy), "--query", QUERY, "--docs", str(docs)]
    )
    assert result.exit_code == 2 and "calibration: " in result.output and "Traceback" not in result.output


def test_an_exports_unfolded_calibration_is_checked_too(run_copy, tmp_path):
    out = export(run_copy, tmp_path / "export")
    edit_json(out / "rerankit_export.json", calibration={"scale": -2.0, "bias": 0.0, "folded": False})
    with pytest.raises(ModelLoadError, match=r"rerankit_export.json: calibration: scale must be"):
        load(out)


def test_fitting_never_stores_a_calibration_that_reverses_the_order():
    from rerankit.calibration import fit_calibration

    logits = np.array([3.0, 2.0, -1.0, -2.0])
    assert fit_calibration(logits, [0, 0, 1, 1]) is None  # negatives score higher: no calibration
    assert fit_calibration(logits, [1, 0, 1, 0]).scale > 0


def test_fusion_survives_huge_finite_first_stage_scores(run_copy):
    from conftest import wait_ready
    from litestar.testing import TestClient

    from rerankit.server import ServerSettings, create_app

    huge = [1e308, 1.5e308, 0.0]
    assert np.isfinite(zscore(np.array(huge))).all()
    assert np.allclose(zscore(np.array(huge)), zscore(np.array([1.0, 1.5, 0.0])))
    combined = LearnedFusion("zscore", 0.0).combine(np.zeros(3), np.array(huge))
    assert list(np.argsort(-combined)) == [1, 0, 2]
    reranker = load(run_copy)
    reranker.fusion = LearnedFusion("zscore", 0.2)  # the first stage dominates
    ranked = reranker.rerank(QUERY, DOCS, first_stage=huge)
    assert all(np.isfinite(r.fused_score) for r in ranked) and ranked.indices[0] == 1
    with TestClient(create_app(ServerSettings(model="in-memory"), reranker=reranker)) as client:
        wait_ready(client)
        cohere = client.post(
            "/v2/rerank", json={"query": QUERY, "documents": DOCS, "first_stage_scores": huge}
        )
        tei = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "first_stage_scores": huge})
    assert cohere.status_code == 200 and tei.status_code == 200
    results = cohere.json()["results"]
    assert [r["index"] for r in results] == ranked.indices
    assert all(r["fused_score"] is not None for r in results)
    assert [r["index"] for r in tei.json()] == ranked.indices


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"long_documents": "windows"}, r"run.json: long_documents: .*got 'windows'"),
        ({"long_documents": {"mode": "sliding"}}, r"run.json: long_documents.mode: "),
        ({"max_length": "abc"}, r"run.json: max_length: .*got 'abc'"),
        ({"max_length": -5}, r"run.json: max_length: .*greater than or equal to 8"),
        ({"max_length": 1e9}, r"run.json: max_length: "),
        ({"adapter": "yes"}, r"run.json: adapter: "),
        ({"base_model": None}, r"run.json: base_model: "),
    ],
)
def test_a_damaged_manifest_field_is_named_at_load(run_copy, changes, message):
    edit_json(run_copy / "run.json", **changes)
    with pytest.raises(ModelLoadError, match=message):
        load(run_copy)


def test_max_length_beyond_the_models_positions_is_refused(run_copy, tmp_path):
    edit_json(run_copy / "run.json", max_length=1_000_000)
    with pytest.raises(ConfigError, match=r"max_length: 1000000 tokens is more than .* has positions for"):
        load(run_copy)
    with pytest.raises(ConfigError, match="has positions for"):
        load(run_copy, max_length=10_000)


def test_a_deeply_nested_record_is_a_load_error_not_a_recursion(run_copy, tmp_path):
    out = export(run_copy, tmp_path / "export")
    deep = "[" * 100_000 + "]" * 100_000
    (out / "rerankit_export.json").write_text(deep)
    with pytest.raises(ModelLoadError, match="rerankit_export.json: not valid JSON"):
        load(out)
    (run_copy / "run.json").write_text('{"a": ' + deep + "}")
    with pytest.raises(ModelLoadError):
        load(run_copy)


def test_ties_are_ranked_by_input_order_not_by_how_ids_are_spelled():
    # Two documents with one score: the relevant one is first in the input, whatever its id.
    for relevant, other in (("a", "b"), ("b", "a"), ("doc-9", "doc-10")):
        run = {"q": {relevant: 0.5, other: 0.5}}
        assert ranking_metrics({"q": {relevant: 1, other: 0}}, run)["ndcg@10"] == pytest.approx(1.0)
        run = {"q": {other: 0.5, relevant: 0.5}}
        assert ranking_metrics({"q": {relevant: 1, other: 0}}, run)["ndcg@10"] == pytest.approx(
            0.6309, abs=1e-4
        )


def test_a_shallower_depth_counts_the_positives_it_leaves_out_as_missed():
    from rerankit.validation import ValidationSet

    docs = tuple((d, d) for d in ("a", "b", "c", "d"))
    vset = ValidationSet(("q",), (docs,), (frozenset({"a", "d"}),), ((4.0, 3.0, 2.0, 1.0),), (1,))
    top2 = vset.at_depth(2)
    assert top2.candidates == (docs[:2],) and top2.relevant == (frozenset({"a"}),) and top2.missed == (2,)
    # the same ranking of the kept documents: recall counts all three positives
    assert top2.metrics([np.array([1.0, 0.0])])["recall@10"] == pytest.approx(1 / 3)


def test_validation_candidates_do_not_list_positives_first(tmp_path):
    from conftest import toy_lines, write_jsonl

    from rerankit.data import read_records
    from rerankit.validation import ValidationSet

    records, _ = read_records(write_jsonl(tmp_path / "valid.jsonl", toy_lines(16, seed=3)))
    vset = ValidationSet.from_records(records)
    # Every candidate tied: positives first would score 1.0; a fixed shuffle scores less.
    tied = [np.zeros(len(c)) for c in vset.candidates]
    assert vset.metrics(tied)["ndcg@10"] < 0.95
    assert ValidationSet.from_records(records) == vset  # the shuffle is fixed
