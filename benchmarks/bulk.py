"""Bulk scoring speed: ``rerankit score`` in one process against ``--engine ray`` (a local Ray
with one actor per CPU), on SQuAD pairs, with a projection for N workers.

    python benchmarks/bulk.py [--queries 100] [--top-k 20] [--shard-size 100]

Protocol:

- Pairs: ``--queries`` SQuAD dev questions (``../shared/data/squad-v1.1-dev``, seeded sample)
  and their BM25 top ``--top-k`` paragraphs over the whole corpus, each paragraph with its
  article's title, BM25's score as the pair's first-stage ``score`` — as benchmarks/quality.py
  and ensemble_speed.py read SQuAD. Written to a JSONL pairs file.
- Model: the embedded backbone (all-MiniLM-L6-v2) with a fresh, seeded score head, saved once
  to a folder that both engines load, fp32 on the CPU (so the scores must agree to 1e-4).
- Each engine runs ``rerankit.score_file`` end to end (wall time: Ray's start-up, the model
  loads, the scoring and the output). Its steady rate is the pairs of every shard after the
  first finished one, divided by the time from the first shard's end to the last's: start-up
  left out.
- Projection for N workers: shards are independent and the driver only saves small score
  arrays, so the steady rate grows with workers until the input's reads or the driver saturate;
  we project ``N × (Ray's steady rate / its workers here)`` — one worker of this machine's kind
  each — and a run's time as ``start-up + pairs / that rate``, with the start-up measured here.
  It is a model, not a measurement: a cluster's nodes, network and shared filesystem differ.

Writes ``benchmarks/results/bulk.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DATA = ROOT.parent / "shared" / "data" / "squad-v1.1-dev"
RESULTS = ROOT / "benchmarks" / "results"
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
PROJECTED_WORKERS = (1, 2, 4, 8, 16, 32)


def write_pairs(path: Path, data: Path, n_queries: int, top_k: int, seed: int) -> int:
    from rerankit.beir import read_corpus, read_queries
    from rerankit.held_out import first_stage_top_k

    corpus = read_corpus(data / "corpus.jsonl", with_title=True)
    queries = read_queries(data / "queries.jsonl")
    qids = random.Random(seed).sample(sorted(queries), n_queries)
    hits = first_stage_top_k(corpus, [queries[q] for q in qids], top_k, "bm25")
    rows = 0
    with path.open("w", encoding="utf-8") as handle:
        for qid, hit in zip(qids, hits):
            for doc_id, score in zip(hit.ids, hit.scores):
                row = {"id": f"{qid}:{doc_id}", "query": queries[qid], "document": corpus[doc_id]}
                handle.write(json.dumps(row | {"score": float(score)}) + "\n")
                rows += 1
    return rows


def save_model(folder: Path, seed: int) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from rerankit.loading import load_tokenizer, resolve_model_path

    torch.manual_seed(seed)
    path = resolve_model_path(BACKBONE)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.save_pretrained(folder)
    load_tokenizer(path).save_pretrained(folder)
    return folder


def run(engine: str, model: Path, pairs: Path, out: Path, shard_size: int, **options) -> dict:
    from rerankit.bulk import score_file

    finished: list[tuple[float, int]] = []

    def on_shard(index: int) -> None:
        finished.append((time.perf_counter(), index))

    start = time.perf_counter()
    result = score_file(
        model,
        pairs,
        out,
        engine=engine,
        shard_size=shard_size,
        dtype="float32",
        device="cpu",
        progress=False,
        on_shard=on_shard,
        **options,
    )
    wall = time.perf_counter() - start
    from rerankit.pairs_file import plan

    shard_rows = {s.index: s.rows for s in plan(pairs, shard_size).shards}
    (t_first, _), (t_last, _) = finished[0], finished[-1]
    steady_pairs = sum(shard_rows[i] for _, i in finished[1:])
    return {
        "engine": engine,
        "pairs": result.rows,
        "shards": result.shards,
        "wall_s": round(wall, 2),
        "pairs_per_s_wall": round(result.rows / wall, 1),
        "startup_s": round(t_first - start, 2),
        "steady_pairs_per_s": round(steady_pairs / (t_last - t_first), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="SQuAD dev in BEIR layout.")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "bulk"))
    parser.add_argument("--render", action="store_true", help="Only rewrite the .md from the .json.")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).with_suffix(".md").write_text(markdown(result))
        return result

    import ray
    import torch
    from machine import cpu_flags
    from quality import _commit

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = tmp / "pairs.jsonl"
        n = write_pairs(pairs, args.data, args.queries, args.top_k, args.seed)
        model = save_model(tmp / "model", seed=0)
        single = run("local", model, pairs, tmp / "single.jsonl", args.shard_size)
        ray_start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ray_init_s = time.perf_counter() - ray_start
        try:
            on_ray = run("ray", model, pairs, tmp / "ray.jsonl", args.shard_size, workers=cpus)
        finally:
            ray.shutdown()
        on_ray["ray_init_s"] = round(ray_init_s, 2)
        on_ray["workers"] = cpus
        read = lambda p: np.asarray([json.loads(line)["score"] for line in p.read_text().splitlines()])
        max_diff = float(np.max(np.abs(read(tmp / "single.jsonl") - read(tmp / "ray.jsonl"))))

    per_worker = on_ray["steady_pairs_per_s"] / cpus
    startup = on_ray["ray_init_s"] + on_ray["startup_s"]
    projection = [
        {
            "workers": w,
            "pairs_per_s": round(w * per_worker, 1),
            "hours_for_10M_pairs": round((startup + 10_000_000 / (w * per_worker)) / 3600, 2),
        }
        for w in PROJECTED_WORKERS
    ]
    name, flags = cpu_flags()
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _commit(),
        "machine": {
            "cpu": name,
            "cpu_flags": flags,
            "cores": cpus,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads_single_process": torch.get_num_threads(),
            "ray": ray.__version__,
        },
        "protocol": vars(args)
        | {"data": "squad-v1.1-dev", "pairs": n, "model": f"{BACKBONE} + fresh head (seed 0), fp32, CPU"},
        "single_process": single,
        "ray_local": on_ray,
        "max_abs_score_difference": max_diff,
        "projection": {
            "per_worker_pairs_per_s": round(per_worker, 1),
            "startup_s": round(startup, 2),
            "rows": projection,
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    m, s, y = r["machine"], r["single_process"], r["ray_local"]
    lines = [
        f"# Bulk scoring: one process against Ray ({r['protocol']['pairs']} SQuAD pairs)",
        "",
        f"{r['date']}, commit {r['commit']}. {m['cpu']} ({m['cores']} cores; flags: "
        f"{', '.join(m['cpu_flags']) or 'none of interest'}), Python {m['python']}, torch {m['torch']}, "
        f"Ray {m['ray']}. "
        + (f"{m['note']}. " if m.get("note") else "")
        + "Model: "
        + r["protocol"]["model"]
        + f"; shards of {r['protocol']['shard_size']} pairs.",
        "",
        "| engine | wall s | pairs/s (wall) | start-up s | steady pairs/s |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| one process ({m['torch_threads_single_process']} torch threads) | {s['wall_s']} | "
        f"{s['pairs_per_s_wall']} | {s['startup_s']} | {s['steady_pairs_per_s']} |",
        f"| Ray, local, {y['workers']} actors of 1 CPU (+ ray.init {y['ray_init_s']} s) | {y['wall_s']} | "
        f"{y['pairs_per_s_wall']} | {y['startup_s']} | {y['steady_pairs_per_s']} |",
        "",
        f"Largest score difference between the engines: {r['max_abs_score_difference']:.2e} (fp32).",
        "",
        "Start-up: from the call to the first saved shard (reading and planning the input, loading "
        "the model, for Ray starting the actors). Steady: pairs of the shards after the first, over "
        "the time from the first shard's end to the last's. The engines ran one after the other, "
        "under whatever else the machine ran then; a single process's multi-threaded torch suffers "
        "most when the cores are oversubscribed (each actor runs one thread), so the ratio between "
        "the rows says more about this machine's load than about Ray.",
        "",
        "## Projection for N workers",
        "",
        f"Method: shards are independent and the driver only saves score arrays, so the rate is "
        f"N × the steady rate per actor measured here ({r['projection']['per_worker_pairs_per_s']} "
        f"pairs/s, one CPU each), and a run takes start-up ({r['projection']['startup_s']} s here) + "
        "pairs / rate. It assumes workers like this machine's cores, an input every node reads as "
        "fast as here (a shared filesystem) and a driver that keeps up; it is a model, not a "
        "measurement of a cluster.",
        "",
        "| workers | pairs/s | hours for 10 M pairs |",
        "| ---: | ---: | ---: |",
        *(
            f"| {p['workers']} | {p['pairs_per_s']} | {p['hours_for_10M_pairs']} |"
            for p in r["projection"]["rows"]
        ),
        "",
        "Rerun: `python benchmarks/bulk.py` (`--data` when `../shared/data/squad-v1.1-dev` is elsewhere).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
