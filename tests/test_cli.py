import json

import click
import pytest
from click.testing import CliRunner

from rerankit.cli import _FiniteFloatRange, main

pytestmark = pytest.mark.smoke


def test_bad_config_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  train: x.jsonl\ntraining:\n  epcohs: 1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(config)])
    assert result.exit_code == 2
    assert "training.epcohs: unknown key (did you mean 'training.epochs'?)" in result.output
    assert "Traceback" not in result.output


def test_bad_override_and_bad_data_file(tmp_path):
    config = tmp_path / "c.yaml"
    data = tmp_path / "d.jsonl"
    data.write_text('{"query_text": "q", "positives": [{"doc_id": "a", "text": "t"}]}\n{oops\n')
    config.write_text(f"data:\n  train: {data}\n")
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--set", "seed"])
    assert result.exit_code == 2 and "KEY.PATH=VALUE" in result.output
    result = CliRunner().invoke(
        main, ["train", "--config", str(config), "--output-dir", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert f"{data}:2: not valid JSON" in result.output


def test_train_and_rerank_from_the_cli(tiny_bert_dir, toy_data, tmp_path):
    import yaml
    from conftest import tiny_config

    train, valid = toy_data
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_bert_dir, train, valid, tmp_path / "unused")))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--config",
            str(config),
            "--output-dir",
            str(out),
            "--set",
            "training.epochs=2",
            "--set",
            "quantization.mode=none",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| untrained model |" in result.output and "| trained (best, as trained) |" in result.output
    assert "| cross-encoder alone (merged, as shipped) |" in result.output
    assert "epochs: 2" in (out / "config.yaml").read_text()

    docs = tmp_path / "docs.jsonl"
    texts = ["the castle is old", "apple of the apple story", "river near people"]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = CliRunner().invoke(
        main, ["rerank", "--model", str(out), "--query", "tell me about apple", "--docs", str(docs), "--json"]
    )
    assert result.exit_code == 0, result.output
    ranked = json.loads(result.stdout)
    assert [r["rank"] for r in ranked] == [0, 1, 2]
    assert ranked[0]["index"] == 1 and ranked[0]["text"] == texts[1]
    assert all(0 <= r["score"] <= 1 for r in ranked)


def test_split_writes_disjoint_train_and_valid_files(tmp_path):
    from conftest import toy_lines, write_jsonl

    from rerankit.data import read_records

    data = write_jsonl(tmp_path / "all.jsonl", toy_lines(40, seed=3))
    out = tmp_path / "split"
    args = [
        "split",
        str(data),
        "--valid-ratio",
        "0.25",
        "--group-by",
        "source_chunk",
        "--seed",
        "1",
        "--out-dir",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    train, _ = read_records(out / "all.train.jsonl")
    valid, _ = read_records(out / "all.valid.jsonl")
    assert len(train) + len(valid) == 40 and 8 <= len(valid) <= 12
    assert {r.source_chunk for r in train}.isdisjoint({r.source_chunk for r in valid})
    summary = json.loads((out / "all.split.json").read_text())
    assert summary["valid"]["queries"] == len(valid)
    first = (out / "all.valid.jsonl").read_text()
    assert CliRunner().invoke(main, args).exit_code == 0
    assert (out / "all.valid.jsonl").read_text() == first  # same seed, same split


@pytest.mark.parametrize(
    "args, option",
    [
        (["serve", "--max-batch-tokens", "0"], "--max-batch-tokens"),
        (["serve", "--max-batch-tokens", "-5"], "--max-batch-tokens"),
        (["serve", "--port", "70000"], "--port"),
        (["serve", "--request-read-timeout", "nan"], "--request-read-timeout"),
        (["serve", "--max-connections", "0"], "--max-connections"),
        (["split", "DATA", "--valid-ratio", "1.5"], "--valid-ratio"),
        (["split", "DATA", "--valid-ratio", "nan"], "--valid-ratio"),
        (["mine", "--input", "DATA", "--out", "OUT", "--margin", "-1"], "--margin"),
        (["export", "RUN", "--out", "OUT", "--tolerance", "inf"], "--tolerance"),
    ],
)
def test_a_number_out_of_range_is_a_usage_error_naming_the_option(tmp_path, args, option):
    data = tmp_path / "d.jsonl"
    data.write_text("")
    places = {"DATA": str(data), "RUN": str(tmp_path), "OUT": str(tmp_path / "out")}
    args = [places.get(a, a) for a in args]
    if args[0] == "serve":
        args += ["--model", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_every_numeric_option_has_a_range():
    unbounded = []
    for command in main.commands.values():
        for param in command.params:
            kind = param.type
            if isinstance(kind, click.types.IntParamType) and not isinstance(kind, click.IntRange):
                unbounded.append(f"{command.name} {param.opts[0]}")
            if isinstance(kind, click.types.FloatParamType) and not isinstance(kind, _FiniteFloatRange):
                unbounded.append(f"{command.name} {param.opts[0]}")
    assert unbounded == []


@pytest.mark.parametrize(
    "setting, value",
    [
        ("max_batch_tokens", 0),
        ("max_batch_tokens", -5),
        ("batch_wait_ms", float("nan")),
        ("max_documents", 0),
    ],
)
def test_server_settings_refuse_values_out_of_range(setting, value):
    pytest.importorskip("litestar")
    from rerankit.errors import ConfigError
    from rerankit.server import ServerSettings

    with pytest.raises(ConfigError, match=rf"ServerSettings.{setting}: must be a finite number >= "):
        ServerSettings(model="x", **{setting: value})


@pytest.mark.smoke
def test_rerank_prints_only_its_own_lines_unless_asked(tiny_bert_run, tmp_path):
    """No load report, deprecation notice, weight-loading bar or third-party log line: the
    output is the query and the ranked documents. RERANKIT_LOG=debug brings the logs back."""
    import os
    import re
    import subprocess
    import sys

    docs = tmp_path / "docs.txt"
    docs.write_text("apple story with apple\nthe river is old\n")
    args = [sys.executable, "-m", "rerankit", "rerank", "--model", str(tiny_bert_run[0].output_dir)]
    args += ["--query", "tell me about apple", "--docs", str(docs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RERANKIT_LOG", None)
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in (quiet.stdout + quiet.stderr).splitlines() if line.strip()]
    assert lines[0] == "query: tell me about apple"
    assert all(re.match(r"\s+\d+\. \[\s*\d+\]\s+[\d.]+\s+\S", line) for line in lines[1:]), lines
    loud = subprocess.run(
        args, capture_output=True, text=True, env={**env, "RERANKIT_LOG": "debug"}, timeout=300
    )
    assert loud.returncode == 0 and len((loud.stdout + loud.stderr).splitlines()) > len(lines)
