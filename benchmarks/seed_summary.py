"""Mean and spread over training seeds of the quality benchmark's main rows, per domain.

    python benchmarks/seed_summary.py [--domains squad arguana]

Reads ``benchmarks/results/quality_<domain>.json`` (the default recipe, seed 42) and
``quality_<domain>_seeds.json`` (the same protocol with ``--no-default --ablation "seed 43:
seed=43" --ablation "seed 44: seed=44"``) and writes ``quality_seeds.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Row kinds, each found by a part of its name (the seed's run name comes first).
KINDS = {
    "cross-encoder alone": lambda n: n.endswith("cross-encoder alone (ensemble none)"),
    "default rerank (self-ensemble)": lambda n: "default rerank" in n and "⊕" not in n,
    "with BM25 scores (learned fusion)": lambda n: "default rerank" in n and "learned" in n,
}


def seed_rows(result: dict, seed_of) -> dict[str, dict[str, float]]:
    """{kind: {seed: NDCG@10}} of one results file."""
    out: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    for row in result["rows"]:
        for kind, match in KINDS.items():
            if match(row["name"]):
                out[kind][seed_of(row)] = row["ndcg@10"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", nargs="+", default=["squad", "arguana"])
    args = parser.parse_args()
    summary = {}
    for domain in args.domains:
        main_run = json.loads((RESULTS / f"quality_{domain}.json").read_text())
        seeds = json.loads((RESULTS / f"quality_{domain}_seeds.json").read_text())
        main_seed = str(main_run["protocol"]["seed"])
        table = seed_rows(main_run, lambda row, seed=main_seed: seed)
        for kind, values in seed_rows(
            seeds, lambda row: row["name"].split(":")[0].removeprefix("seed ")
        ).items():
            table[kind].update(values)
        baselines = {row["name"]: row["ndcg@10"] for row in main_run["rows"][:3]}
        summary[domain] = {
            "baselines": baselines,
            "rows": {
                kind: {
                    "per_seed": values,
                    "mean": statistics.mean(values.values()),
                    "spread": (max(values.values()) - min(values.values())) / 2,
                }
                for kind, values in table.items()
                if values
            },
            "sources": [
                f"quality_{domain}.json ({main_run.get('commit')})",
                f"quality_{domain}_seeds.json ({seeds.get('commit')})",
            ],
        }
    lines = ["# Quality over training seeds 42, 43, 44 (NDCG@10, BM25 top 30)", ""]
    for domain, data in summary.items():
        lines += [f"## {domain}", ""]
        lines += [f"- {name}: {value:.4f}" for name, value in data["baselines"].items()]
        lines += [
            "",
            "| rerankit | "
            + " | ".join(f"seed {s}" for s in ("42", "43", "44"))
            + " | mean | ± half-range |",
        ]
        lines.append("|---|---:|---:|---:|---:|---:|")
        for kind, row in data["rows"].items():
            cells = " | ".join(f"{row['per_seed'].get(s, float('nan')):.4f}" for s in ("42", "43", "44"))
            lines.append(f"| {kind} | {cells} | {row['mean']:.4f} | {row['spread']:.4f} |")
        lines += ["", "From " + " and ".join(data["sources"]) + ".", ""]
    (RESULTS / "quality_seeds.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / "quality_seeds.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
