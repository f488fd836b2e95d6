"""The human-readable side of a run: a Markdown report and a training-curve PNG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerankit.data import changed_counts
from rerankit.files import atomic_write_text

COLUMNS = ("ndcg@10", "mrr@10", "map", "pairwise_accuracy")


def metrics_table(rows: list[tuple[str, dict[str, float]]], recall_key: str | None = None) -> str:
    """A Markdown table, one row per (label, metrics)."""
    columns = list(COLUMNS[:3]) + ([recall_key] if recall_key else []) + [COLUMNS[3]]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, values in rows:
        cells = [f"{values[c]:.4f}" if c in values else "–" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(metrics: dict[str, Any]) -> str:
    """One plain sentence on whether training helped and whether it beats the first stage."""
    key = metrics["metric_for_best"]
    best, base, first = (metrics["best"].get(key), metrics["baseline"][key], metrics["first_stage"][key])
    if best is None:
        return "No evaluation ran during training."
    parts = [
        f"Best {key} {best:.4f} vs untrained {base:.4f} ({best - base:+.4f})"
        f" and BM25 {first:.4f} ({best - first:+.4f})."
    ]
    if best < first:
        parts.append(
            "WARNING: the trained reranker ranks WORSE than BM25 on the validation "
            "candidates; do not deploy it as is."
        )
    if best <= base:
        parts.append("WARNING: training did not improve on the untrained model.")
    return " ".join(parts)


def write_report(path: Path, metrics: dict[str, Any], config, digest: str, curve: Path | None) -> None:
    recall_key = next((k for k in metrics["baseline"] if k.startswith("recall@")), None)
    rows = [("BM25 (first stage)", metrics["first_stage"]), ("untrained model", metrics["baseline"])]
    rows += [(f"step {e['step']} (epoch {e['epoch']:.2f})", e) for e in metrics["evaluations"]]
    if metrics["best"]:
        rows.append((f"**best** (step {metrics['best']['step']})", metrics["best"]))
    data = metrics["data"]
    text = [
        "# rerankit run report",
        "",
        f"- backbone: `{config.model.name_or_path}`, quantization: {config.quantization.mode}, "
        f"LoRA: {f'r={config.lora.r}' if config.lora.enabled else 'off'}, "
        f"loss: {config.loss.name}",
        f"- queries: {metrics['train_queries']} train, {metrics['valid_queries']} validation "
        f"({metrics['valid_pairs']} pairs, every positive and given negative)",
        f"- wall time: {metrics['wall_time_s']:.0f} s; config hash `{digest}`",
        "",
        verdict(metrics),
        "",
        "## Validation metrics",
        "",
        metrics_table(rows, recall_key),
        "",
        "BM25 is computed over the same validation candidates (index over all of them).",
        "",
        "## Data",
        "",
    ]
    for name, report in data.items():
        changed = changed_counts(report)
        text.append(
            f"- {name}: `{report['path']}`: {report['records']} queries from "
            f"{report['lines']} lines" + (f"; {changed}" if changed else "")
        )
    if curve is not None:
        text += ["", f"![training curve]({curve.name})"]
    atomic_write_text(path, "\n".join(text) + "\n")


def write_curve(path: Path, metrics: dict[str, Any]) -> Path | None:
    """Train loss and the validation metric against the step; None if there is nothing to plot."""
    if not metrics["train_loss"] and not metrics["evaluations"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = metrics["metric_for_best"]
    fig, left = plt.subplots(figsize=(7, 4), dpi=100)
    if metrics["train_loss"]:
        left.plot(
            [e["step"] for e in metrics["train_loss"]],
            [e["loss"] for e in metrics["train_loss"]],
            color="tab:blue",
            label="train loss",
        )
    left.set_xlabel("optimizer step")
    left.set_ylabel("train loss", color="tab:blue")
    right = left.twinx()
    steps = [0] + [e["step"] for e in metrics["evaluations"]]
    values = [metrics["baseline"][key]] + [e[key] for e in metrics["evaluations"]]
    right.plot(steps, values, "o-", color="tab:orange", label=f"validation {key}")
    right.axhline(metrics["first_stage"][key], color="tab:gray", ls="--", label=f"BM25 {key}")
    right.set_ylabel(f"validation {key}", color="tab:orange")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
