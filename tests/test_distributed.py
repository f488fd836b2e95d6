"""`rerankit train` under torchrun: two CPU processes on the gloo backend (DDP)."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import free_port, tiny_config

pytestmark = pytest.mark.slow


def test_torchrun_two_cpu_processes_train_one_run(tiny_bert_dir, toy_data, tmp_path):
    train, valid = toy_data
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(tiny_config(tiny_bert_dir, train, valid, out, quantization={"mode": "none"}))
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "rerankit",
            "train",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # 48 queries, 8 per process and step, 2 processes: 3 optimizer steps an epoch.
    assert [e["step"] for e in metrics["evaluations"]] == [3, 6, 9]
    assert (out / "run.json").exists()
    assert metrics["best"]["ndcg@10"] > metrics["baseline"]["ndcg@10"]
