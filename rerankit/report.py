"""The human-readable side of a run: a Markdown report and a training-curve PNG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerankit.data import changed_counts
from rerankit.files import atomic_write_text

COLUMNS = ("ndcg@10", "mrr@10", "map", "pairwise_accuracy")


def adaptation_lines(adaptation: dict | None) -> list[str]:
    if not adaptation:
        return []
    return [
        f"- corpus adaptation: {adaptation['pseudo_queries']} inverse-cloze pseudo-queries from "
        f"{adaptation['passages']} passages of `{adaptation['corpus']}`, negatives mined by "
        f"{adaptation['mining']} ({adaptation['seconds']:.0f} s), trained beside the labelled queries"
    ]


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
    fusion = metrics.get("fusion")
    if fusion:
        fused = fusion["value"]
        parts.append(
            f"Fused with BM25 ({fusion['method']}, reranker weight {fusion['weight']:.2f}): "
            f"{key} {fused:.4f} ({fused - first:+.4f} over BM25)."
        )
        if fused < first:
            parts.append("WARNING: even fused with it, the reranker ranks WORSE than BM25 here.")
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
        *adaptation_lines(metrics.get("adaptation")),
        *(
            [
                '- score injection: each document\'s first-stage level (its data `"score"`) is part of '
                "the input; the model ranks only with the retriever's scores given (`first_stage`)"
            ]
            if config.model.score_injection
            else []
        ),
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
        *fusion_lines(metrics),
        *calibration_lines(metrics.get("calibration")),
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


def fusion_lines(metrics: dict[str, Any]) -> list[str]:
    """The fusion section: BM25, the reranker, untuned RRF and the learned fusion."""
    fusion = metrics.get("fusion")
    if not fusion:
        return []
    key = fusion["metric"]
    rows = [
        ("BM25", metrics["first_stage"][key]),
        ("reranker alone (best)", metrics["best"].get(key, float("nan"))),
        ("RRF(BM25, reranker), untuned", fusion["untuned_rrf"]),
        (f"learned: {fusion['method']}, reranker weight {fusion['weight']:.2f}", fusion["value"]),
    ]
    return [
        "## Fusion with the first stage",
        "",
        "Fitted on these validation queries (their candidates ranked by BM25); `Reranker.rerank("
        "first_stage=...)`, `rerankit eval`, the server and the adapters use it.",
        "",
        f"| ranking | {key} |",
        "|---|---:|",
        *(f"| {name} | {value:.4f} |" for name, value in rows),
        "",
    ]


def calibration_lines(report: dict[str, Any] | None) -> list[str]:
    """The calibration section: the fitted scale and bias and the ECE before and after."""
    if not report:
        return []
    fitted = report["calibration"]
    how = (
        f"`sigmoid({fitted['scale']:.4g} · logit {'+' if fitted['bias'] >= 0 else '−'} "
        f"{abs(fitted['bias']):.4g})`"
        if fitted
        else "none (the validation pairs hold one class only)"
    )
    return [
        "## Calibration",
        "",
        f"Relevance scores are {how}, fitted on the {report['pairs']} validation pairs "
        "(Platt scaling; raw logits on request).",
        "",
        "| scores | expected calibration error (10 bins) |",
        "|---|---:|",
        f"| sigmoid(logit) | {report['ece_before']:.4f} |",
        f"| calibrated | {report['ece_after']:.4f} |",
        "",
    ]


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
