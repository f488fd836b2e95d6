"""Hostile but fair input outside the server: loading, training, data, config and the CLI.
Nothing runs, leaks, crashes or is lost that the user did not ask for; every refusal is a
clear RerankitError (one line and exit code 2 on the command line)."""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_config, toy_lines, write_jsonl

import rerankit
from rerankit import ConfigError, DataError, ModelLoadError, Reranker, RerankitError
from rerankit.cli import main

pytestmark = pytest.mark.smoke


def edit_manifest(folder, **changes):
    manifest = json.loads((folder / "run.json").read_text())
    manifest.update(changes)
    (folder / "run.json").write_text(json.dumps(manifest))


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


# --- 1, 2: nothing from a model folder runs unless the caller asks -----------------------------


def test_a_manifest_cannot_turn_on_remote_code(run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    model_dir = run_copy / "model"
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((model_dir / "adapter_config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Evil"}
    (model_dir / "adapter_config.json").write_text(json.dumps(config))
    edit_manifest(run_copy, trust_remote_code=True)
    with pytest.raises(ModelLoadError, match=r"trust_remote_code=True \(--trust-remote-code\)"):
        Reranker.load(run_copy)
    result = cli("rerank", "--model", run_copy, "--query", "q", "--docs", run_copy / "run.json")
    assert result.exit_code == 2 and "--trust-remote-code" in result.output
    assert not marker.exists()


@pytest.mark.parametrize("model_dir", ["../elsewhere", "/etc", "model/../../x"])
def test_manifest_paths_stay_inside_the_run_folder(run_copy, model_dir):
    edit_manifest(run_copy, model_dir=model_dir)
    with pytest.raises(ModelLoadError, match="leads outside the run folder"):
        Reranker.load(run_copy)


def test_pickle_weights_are_refused_unless_asked(tiny_bert_dir, run_copy, tmp_path):
    import torch

    plain = tmp_path / "plain"
    shutil.copytree(tiny_bert_dir, plain)
    state = {k: v.clone() for k, v in Reranker.load(tiny_bert_dir, device="cpu").model.state_dict().items()}
    (plain / "model.safetensors").unlink()
    torch.save(state, plain / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pickle format \(pytorch_model.bin\).*--allow-pickle"):
        Reranker.load(plain)
    assert Reranker.load(plain, allow_pickle=True, dtype="float32").score([("apple", "apple")])

    adapter = run_copy / "model"
    from safetensors.torch import load_file

    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"adapter_model.bin"):
        Reranker.load(run_copy)


def test_a_missing_local_path_is_not_tried_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    for name in ("outputs/run-that-is-not-there", "./nothing", "a/b/c", str(tmp_path / "gone")):
        start = time.monotonic()
        with pytest.raises(ModelLoadError, match="no such folder"):
            Reranker.load(name)
        assert time.monotonic() - start < 5


# --- 10, 12: serve refuses what it cannot serve ---------------------------------------------------


def test_serve_exits_2_when_the_model_does_not_load(tmp_path):
    result = cli("serve", "--model", tmp_path / "missing", "--port", "1")
    assert result.exit_code == 2 and "missing: no such folder" in result.output


def test_a_model_that_scores_nan_is_not_served(tiny_bert_run):
    import torch

    pytest.importorskip("litestar")
    from rerankit.server import ServerSettings
    from rerankit.server.app import load_reranker

    broken = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        broken.model.classifier.weight.fill_(math.nan)
    with pytest.raises(ModelLoadError, match="scores NaN"):
        load_reranker(ServerSettings(model="broken"), broken)


# --- 11-16: training never destroys or fakes ------------------------------------------------------


def test_overwrite_checks_config_and_data_before_deleting(tiny_bert_dir, run_copy, tmp_path):
    config = tiny_config(tiny_bert_dir, tmp_path / "no-such.jsonl", None, run_copy)
    with pytest.raises(DataError, match="no-such.jsonl: cannot open"):
        rerankit.fit(config, overwrite=True)
    assert (run_copy / "run.json").exists() and (run_copy / "model").is_dir()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tiny_bert_dir, toy_data, tmp_path):
    precious = tmp_path / "my-documents"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(RerankitError, match="not a rerankit run"):
        rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, precious), overwrite=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_output_that_is_a_file_is_refused(tiny_bert_dir, toy_data, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RerankitError, match="is a file"):
        rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, target))


@pytest.mark.parametrize(
    "override, key",
    [
        ({"training.learning_rate": math.inf}, "training.learning_rate"),
        ({"training.learning_rate": math.nan}, "training.learning_rate"),
        ({"training.epochs": 1e9}, "training.epochs"),
        ({"loss.margin": math.inf}, "loss.margin"),
        ({"training.learning_rate": 50.0}, "training.learning_rate"),
    ],
)
def test_non_finite_or_absurd_values_are_refused(tiny_bert_dir, toy_data, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, tmp_path / "run"), overrides=override)


def test_a_diverging_run_stops_and_is_never_marked_finished(tiny_bert_dir, toy_data, tmp_path, monkeypatch):
    from rerankit import training

    def nan_loss(*args, **kwargs):
        return lambda scores, labels, mask: scores.sum() * math.nan

    monkeypatch.setattr(training, "build_loss", nan_loss)
    out = tmp_path / "run"
    with pytest.raises(RerankitError, match="training diverged: the train loss is nan|scores are NaN"):
        rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, out))
    assert not (out / "run.json").exists()


def test_nan_validation_scores_are_an_error_not_a_metric(tiny_bert_run):
    import numpy as np

    from rerankit.data import read_records
    from rerankit.validation import ValidationSet, Validator

    result, valid_path = tiny_bert_run
    records, _ = read_records(valid_path)
    validator = Validator(ValidationSet.from_records(records[:3]), result.tokenizer, 48)
    validator.scores = lambda model: np.array([np.nan] * validator.vset.num_pairs)
    with pytest.raises(RerankitError, match="NaN or infinite"):
        validator.evaluate(None)


def test_two_runs_never_write_one_folder(tiny_bert_dir, toy_data, tmp_path):
    from filelock import FileLock

    out = tmp_path / "run"
    holder = FileLock(str(tmp_path / ".run.lock"))
    holder.acquire()
    (tmp_path / ".run.lock").write_text("4242\n")
    try:
        with pytest.raises(RerankitError, match=r"in use by another rerankit process \(pid 4242\)"):
            rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, out))
    finally:
        holder.release()
    assert not out.exists()


def test_a_symlink_to_a_run_folder_shares_its_lock_and_is_never_overwritten(
    tiny_bert_dir, toy_data, run_copy, tmp_path
):
    from rerankit.run_folder import locked

    link = tmp_path / "link"
    link.symlink_to(run_copy, target_is_directory=True)
    with (
        locked(run_copy),
        pytest.raises(RerankitError, match=r"link is in use by another rerankit process"),
        locked(link),
    ):
        pass
    with pytest.raises(RerankitError, match=r"link is a symbolic link .*--overwrite deletes only a folder"):
        rerankit.fit(tiny_config(tiny_bert_dir, *toy_data, link), overwrite=True)
    assert link.is_symlink() and (run_copy / "run.json").exists() and (run_copy / "model").is_dir()
    result = cli("export", run_copy, "--out", link, "--overwrite")
    assert result.exit_code == 2 and "is a symbolic link" in result.output
    assert (run_copy / "run.json").exists()


def test_an_export_is_refused_while_another_process_holds_its_destination(run_copy, tmp_path):
    from filelock import FileLock

    out = tmp_path / "exported"
    holder = FileLock(str(tmp_path / ".exported.lock"))
    holder.acquire()
    (tmp_path / ".exported.lock").write_text("4242\n")
    try:
        result = cli("export", run_copy, "--out", out)
    finally:
        holder.release()
    assert result.exit_code == 2
    assert "in use by another rerankit process (pid 4242); wait for it to end or choose another --out" in (
        result.output
    )
    assert not out.exists()


def test_an_export_stages_in_a_folder_of_its_own_and_clears_only_its_own_leftovers(run_copy, tmp_path):
    from rerankit.export import STAGING_INFIX, STAGING_MARKER, export
    from rerankit.prompts import EXPORT_INFO

    out = tmp_path / "exported"
    # Someone else's folders beside the destination: the name exports once staged in, and
    # one named like rerankit's staging but without its marker.
    foreign = [tmp_path / ".exported.tmp", tmp_path / f".exported{STAGING_INFIX}mine"]
    for folder in foreign:
        folder.mkdir()
        (folder / "notes.txt").write_text("keep me")
    # What a killed export leaves: its staging folder, marked.
    killed = tmp_path / f".exported{STAGING_INFIX}killed"
    (killed / "export").mkdir(parents=True)
    (killed / STAGING_MARKER).write_text("99999\n")
    (killed / "export" / "model.safetensors").write_bytes(b"\0" * 1000)

    for overwrite in (False, True):
        export(run_copy, out, overwrite=overwrite)
        assert (out / "model.safetensors").is_file() and (out / EXPORT_INFO).is_file()
        assert not (out / STAGING_MARKER).exists()
    assert not killed.exists()
    for folder in foreign:
        assert (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.glob(".exported*")) == sorted(
        [".exported.lock", *(f.name for f in foreign)]
    )


def test_a_truncated_optimizer_state_is_refused_before_training_resumes(
    tiny_bert_run, tiny_bert_dir, tmp_path
):
    from rerankit import run_folder
    from rerankit.config import config_hash, load_config

    result, valid = tiny_bert_run
    out = tmp_path / "run"
    shutil.copytree(result.output_dir, out)
    (out / "run.json").unlink()  # an interrupted run, resumable from its checkpoints
    config = tiny_config(tiny_bert_dir, valid.parent / "train.jsonl", valid, out)
    resolved = load_config(config)
    (out / "config.yaml").write_text(run_folder.config_text(resolved, config_hash(resolved)))
    checkpoint = Path(run_folder.last_checkpoint(out))
    run_folder.check_checkpoint(checkpoint)  # whole, it passes
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    expected = rf"{checkpoint.name}: damaged checkpoint .*optimizer.pt: truncated"
    with pytest.raises(RerankitError, match=expected):
        rerankit.fit(config, resume=True)


@pytest.mark.parametrize("name", ["scheduler.pt", "rng_state.pth"])
def test_every_torch_file_of_a_checkpoint_is_checked(tiny_bert_run, tmp_path, name):
    from rerankit.run_folder import check_checkpoint, last_checkpoint

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(last_checkpoint(tiny_bert_run[0].output_dir), checkpoint)
    (checkpoint / name).write_bytes((checkpoint / name).read_bytes()[:-100])
    with pytest.raises(RerankitError, match=rf"damaged checkpoint .*{name}: truncated"):
        check_checkpoint(checkpoint)


def test_huge_documents_are_cut_at_read_time_and_counted(tmp_path):
    from rerankit.data import read_records

    line = toy_lines(1)[0]
    line["negatives"][0]["text"] = "zinc " * 1_000_000  # 5 MB
    path = write_jsonl(tmp_path / "big.jsonl", [line])
    records, report = read_records(path, max_document_chars=1000)
    assert len(records[0].negatives[0].text) == 1000
    assert report.truncated_long_docs == 1 and "truncated long docs: 1" in report.summary()


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ndata: {train: x.jsonl}\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="expands past"):
        rerankit.load_config(bomb)
    assert time.monotonic() - start < 5
    result = cli("train", "--config", bomb)
    assert result.exit_code == 2 and "expands past" in result.output


def test_an_incomplete_or_damaged_checkpoint_is_refused(tmp_path):
    from rerankit.run_folder import check_checkpoint

    checkpoint = tmp_path / "checkpoint-6"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (checkpoint / "scheduler.pt").write_bytes(b"x")
    with pytest.raises(RerankitError, match=r"missing optimizer.pt"):
        check_checkpoint(checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"x")
    (checkpoint / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(RerankitError, match="damaged checkpoint"):
        check_checkpoint(checkpoint)


# --- 17, 18, 20: clear errors and nonsense refused ------------------------------------------------


def test_corrupted_weights_and_manifests_are_one_line_errors(run_copy):
    (run_copy / "run.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"run.json: not valid JSON"):
        Reranker.load(run_copy)
    assert cli("export", run_copy, "--out", run_copy.parent / "x").exit_code == 2
    (run_copy / "run.json").write_text('["a list"]')
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        Reranker.load(run_copy)


def test_corrupted_safetensors_is_a_model_load_error(tiny_bert_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ModelLoadError, match="cannot load a cross-encoder"):
        Reranker.load(broken)
    result = cli("rerank", "--model", broken, "--query", "q", "--docs", broken / "config.json")
    assert result.exit_code == 2 and result.output.startswith("error: ")


def test_mine_refuses_bad_qrels_text_and_empty_matches(tmp_path):
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "apple"}, {"_id": "d2", "text": "zinc"}]
    )
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "apple?"}])
    out = tmp_path / "out.jsonl"
    for score in ("inf", "nan"):
        qrels = tmp_path / "qrels.tsv"
        qrels.write_text(f"q1\td1\t{score}\n")
        result = cli("mine", "--corpus", corpus, "--queries", queries, "--qrels", qrels, "--out", out)
        assert result.exit_code == 2 and "qrels.tsv:1: score must be a number" in result.output
    qrels.write_text("q9\td1\t1\n")
    result = cli("mine", "--corpus", corpus, "--queries", queries, "--qrels", qrels, "--out", out)
    assert result.exit_code == 2 and "no query has a positive" in result.output and not out.exists()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"_id": "d1", "text": 42}])
    qrels.write_text("q1\td1\t1\n")
    result = cli("mine", "--corpus", bad, "--queries", queries, "--qrels", qrels, "--out", out)
    assert result.exit_code == 2 and "bad.jsonl:1: must be a string, got int (field 'text')" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["mine", "--num-negatives", "0"],
        ["mine", "--num-negatives", "-1"],
        ["eval", "--top-k", "0"],
        ["eval", "--recall-at", "0"],
        ["eval", "--max-queries", "0"],
        ["rerank", "--top-k", "-1"],
    ],
)
def test_nonsense_numbers_are_refused_before_anything_runs(args, tmp_path):
    docs = tmp_path / "d.txt"
    docs.write_text("a\n")
    required = {
        "mine": ["--input", docs, "--out", tmp_path / "o.jsonl"],
        "eval": ["--model", tmp_path, "--data", docs],
        "rerank": ["--model", tmp_path, "--query", "q", "--docs", docs],
    }[args[0]]
    result = cli(*args, *required)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_eval_with_nothing_to_evaluate_says_so(tiny_bert_run, tmp_path):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "text": "apple"}])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "apple"}])
    (folder / "qrels" / "test.tsv").write_text("q2\td1\t1\n")
    result = cli("eval", "--model", tiny_bert_run[0].output_dir, "--data", folder, "--dtype", "float32")
    assert result.exit_code == 2 and "nothing to evaluate" in result.output


def test_bad_override_yaml_and_fit_none_are_config_errors(tmp_path):
    result = cli("train", "--config", tmp_path / "c.yaml", "--set", "training.epochs=[1, 2")
    assert result.exit_code == 2 and "not valid YAML" in result.output
    with pytest.raises(ConfigError, match="got NoneType"):
        rerankit.fit(None)


def test_an_over_long_query_in_rerank_is_one_line(tiny_bert_run, tmp_path):
    docs = tmp_path / "d.txt"
    docs.write_text("apple story\n")
    result = cli(
        "rerank",
        "--model",
        tiny_bert_run[0].output_dir,
        "--query",
        "apple " * 200,
        "--docs",
        docs,
        "--dtype",
        "float32",
    )
    assert result.exit_code == 2 and "leaves no room for the document" in result.output


def test_empty_documents_are_refused_by_position(tiny_bert_run):
    reranker = Reranker.load(tiny_bert_run[0].output_dir, device="cpu", dtype="float32")
    with pytest.raises(ValueError, match="document 1 is empty or whitespace-only"):
        reranker.rerank("apple", ["apple story", "  \n"])
    with pytest.raises(ValueError, match="top_k must be at least 0"):
        reranker.rerank("apple", ["apple story"], top_k=-1)
