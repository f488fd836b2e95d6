"""Does a document's score depend on the other documents scored with it?

    python benchmarks/neighbour_drift.py [--model outputs/demo] [--queries 42] [--top-k 24]

The same merged model scores the inference benchmark's pairs (SQuAD questions × their BM25
top-k paragraphs) three ways, with each runtime of ``--runtimes`` (torch fp32 and bf16; the
OpenVINO bf16 graph as it loads, its batches padded to the width multiple that keeps each row's
rounding its own, and the same graph padded to each batch's longest as before that): each pair
alone (batch of one), each query's documents in one call (one request), and every pair in one
call (requests merged by the server's cross-request batching, so each pair shares its batch —
and padded width — with other queries' documents). Reports the largest raw-score difference
from "alone" and how many queries' top-10 order changes. bf16 runtimes are skipped, with the
reason printed, where the CPU has no native bf16. Writes benchmarks/results/<--name>.{json,md}
(default neighbour_drift).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from inference import load_pairs, prepare_model, top10_agreement  # noqa: E402

# runtime: (backend, dtype, batches padded to the graph's width multiple)
RUNTIMES = {
    "torch fp32": ("torch", "float32", True),
    "torch bf16": ("torch", "bfloat16", True),
    "openvino bf16": ("openvino", "bfloat16", True),
    "openvino bf16, padded to each batch's longest": ("openvino", "bfloat16", False),
}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="outputs/demo", help="Run folder or merged model.")
    parser.add_argument("--queries", type=int, default=42)
    parser.add_argument("--top-k", type=int, default=24)
    parser.add_argument("--runtimes", nargs="+", choices=list(RUNTIMES), default=list(RUNTIMES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--name", default="neighbour_drift", help="Results file name (without suffix).")
    args = parser.parse_args()

    from rerankit import Reranker
    from rerankit.errors import ModelLoadError
    from rerankit.loading import bf16_is_native

    queries, docs, _, _ = load_pairs(args.queries, args.top_k)
    # a run folder loads as it serves (its own graphs); without one, MiniLM with a seeded head
    model = args.model if Path(args.model).exists() else prepare_model(None)
    rows = []
    for runtime in args.runtimes:
        backend, dtype, aligned = RUNTIMES[runtime]
        if dtype == "bfloat16" and not bf16_is_native("cpu"):
            print(f"{runtime}: skipped, this CPU has no native bf16", flush=True)
            continue
        try:
            reranker = Reranker.load(model, device="cpu", dtype=dtype, backend=backend)
        except ModelLoadError as exc:  # e.g. no bf16 graph in the folder
            print(f"{runtime}: skipped, {exc}", flush=True)
            continue
        if not aligned:  # the graph as it ran before padding to a multiple: each batch to its longest
            reranker.model = dataclasses.replace(reranker.model, pad_multiple=None, batch_dependent=True)
        alone = [np.array([reranker.logits([q], [d])[0] for d in ds]) for q, ds in zip(queries, docs)]
        per_query = [reranker.logits([q] * len(ds), ds) for q, ds in zip(queries, docs)]
        flat = reranker.logits(
            [q for q, ds in zip(queries, docs) for _ in ds], [d for ds in docs for d in ds]
        )
        merged = np.split(flat, np.cumsum([len(ds) for ds in docs])[:-1])
        for name, scores in (("one request", per_query), ("all requests merged", merged)):
            diff = max(float(np.abs(a - s).max()) for a, s in zip(alone, scores))
            rows.append(
                {
                    "runtime": runtime,
                    "pad_multiple": getattr(reranker.model, "pad_multiple", None),
                    "scored with": name,
                    "max_abs_raw_diff_vs_alone": diff,
                    "same_top10_vs_alone": f"{top10_agreement(alone, scores)}/{len(queries)}",
                }
            )
            print(rows[-1], flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {
        "date": date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "model": args.model,
        "queries": len(queries),
        "pairs": sum(len(d) for d in docs),
        "cpu": cpu_name(),
        "native_bf16": bf16_is_native("cpu"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Score drift with batch neighbours ({meta['pairs']} pairs, {meta['queries']} queries; "
        f"{meta['date']}, commit {meta['commit']})",
        "",
        f"CPU: {meta['cpu']} (native bf16: {meta['native_bf16']}). Each pair scored alone is the reference.",
        "",
        "| runtime | batches padded to a multiple of | scored with | max abs. raw-score difference "
        "| same top-10 order |",
        "|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['runtime']} | {r['pad_multiple'] or ''} | {r['scored with']} "
        f"| {r['max_abs_raw_diff_vs_alone']:.2e} "
        f"| {r['same_top10_vs_alone']} |"
        for r in rows
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
