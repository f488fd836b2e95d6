"""`rerankit score --engine ray`: a Ray Data actor pool on a local two-CPU Ray gives the
single-process scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rerankit.bulk import score_file
from rerankit.cli import main

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: two CPUs, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.smoke
def test_ray_engine_gives_the_single_process_scores(local_ray, tiny_bert_dir, tmp_path):
    rows = [
        {"id": i, "query": f"what is topic {i // 5}?", "document": f"document {i} about topic {i % 7}"}
        for i in range(37)
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "ray.jsonl"
    args = ["score", "--model", str(tiny_bert_dir), "--input", str(source), "--out", str(out)]
    options = ["--dtype", "float32", "--shard-size", "8", "--no-progress"]
    result = CliRunner().invoke(main, [*args, *options, "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"37 scores in 4 shards -> {out}\n")
    single = score_file(tiny_bert_dir, source, tmp_path / "single.jsonl", dtype="float32", progress=False)
    ray_rows = [json.loads(line) for line in out.read_text().splitlines()]
    single_rows = [json.loads(line) for line in single.out.read_text().splitlines()]
    assert [r["id"] for r in ray_rows] == [str(i) for i in range(37)]
    np.testing.assert_allclose(
        [r["score"] for r in ray_rows], [r["score"] for r in single_rows], rtol=0, atol=1e-4
    )


@pytest.mark.smoke
def test_ray_engine_refuses_a_loaded_reranker(tmp_path):
    source = tmp_path / "pairs.jsonl"
    source.write_text('{"query": "q", "document": "d"}\n')
    with pytest.raises(ValueError, match="engine='ray' loads the model in each actor: pass its path"):
        score_file(object(), source, tmp_path / "out.jsonl", engine="ray")


@pytest.mark.smoke
def test_an_actors_own_error_is_raised_as_in_one_process(local_ray, tmp_path):
    from rerankit.errors import ModelLoadError

    source = tmp_path / "pairs.jsonl"
    source.write_text('{"query": "q", "document": "d"}\n')
    with pytest.raises(ModelLoadError, match="no-such-model: no such folder"):
        score_file(tmp_path / "no-such-model", source, tmp_path / "out.jsonl", engine="ray", progress=False)


@pytest.mark.smoke
def test_eval_on_ray_gives_the_in_process_metrics(local_ray, tiny_bert_run, beir_folder, tmp_path):
    base = ["eval", "--model", str(tiny_bert_run[0].output_dir), "--data", str(beir_folder)]
    base += ["--top-k", "5", "--dtype", "float32"]
    results = tmp_path / "results"
    results.mkdir()
    here, on_ray = results / "here.json", results / "ray.json"
    result = CliRunner().invoke(main, [*base, "--out", str(here)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, [*base, "--out", str(on_ray), "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    here, on_ray = json.loads(here.read_text()), json.loads(on_ray.read_text())
    assert on_ray["queries"] == here["queries"] == 12
    for row in ("first_stage", "reranked", "fused", "fused_rrf"):
        assert on_ray[row] == pytest.approx(here[row], abs=1e-6), row
    for depth, rows in here["depths"].items():
        for row, metrics in rows.items():
            assert on_ray["depths"][depth][row] == pytest.approx(metrics, abs=1e-6), (depth, row)
    assert sorted(p.name for p in results.iterdir()) == ["here.json", "ray.json"]  # work folder gone
