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


def _train_under_torchrun(config, launcher: list[str], env) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                *args,
                "-m",
                "rerankit",
                "train",
                "--config",
                str(config),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for args in launcher
    ]


def _finished(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output[-3000:]


def test_two_nodes_by_c10d_rendezvous_train_as_one_node_of_two(tiny_bert_dir, toy_data, tmp_path):
    """Two torchrun "nodes" of one process each, meeting through the c10d rendezvous on
    localhost, give the metrics series of one node with two processes."""
    train, valid = toy_data
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    runs = {}
    for name in ("one-node", "two-nodes"):
        config = tmp_path / f"{name}.yaml"
        runs[name] = tmp_path / name
        config.write_text(
            yaml.safe_dump(
                tiny_config(tiny_bert_dir, train, valid, runs[name], quantization={"mode": "none"})
            )
        )
        if name == "one-node":
            launcher = [
                [
                    "--nnodes",
                    "1",
                    "--nproc-per-node",
                    "2",
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(free_port()),
                ]
            ]
        else:
            rendezvous = [
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{free_port()}",
                "--rdzv-id",
                "two-nodes",
            ]
            launcher = [
                ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), *rendezvous]
                for rank in (0, 1)
            ]
        _finished(_train_under_torchrun(config, launcher, env))
    one, two = (json.loads((runs[n] / "metrics.json").read_text()) for n in ("one-node", "two-nodes"))
    assert [e["step"] for e in two["evaluations"]] == [e["step"] for e in one["evaluations"]] == [3, 6, 9]
    timing = ("runtime", "per_second")
    for a, b in zip(one["evaluations"], two["evaluations"]):
        scores = {k: v for k, v in a.items() if not any(t in k for t in timing)}
        assert {k: b[k] for k in scores} == pytest.approx(scores, abs=1e-6)
    assert [e["loss"] for e in two["train_loss"]] == pytest.approx(
        [e["loss"] for e in one["train_loss"]], abs=1e-6
    )
    assert len(one["train_loss"]) > 0
