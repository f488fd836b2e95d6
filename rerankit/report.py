"""The human-readable side of a run: a Markdown report and a training-curve PNG (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerankit.data import changed_counts
from rerankit.files import atomic_write_text

COLUMNS = ("ndcg@10", "mrr@10", "map", "pairwise_accuracy")

# How the ensemble's fit put its signals on one scale (Ensemble.normalization), in words.
NORMALIZATION_WORDS = {
    "zscore": "its z-score over the validation pairs",
    "rank_gauss": "the normal scores of its validation quantiles (rank-Gauss)",
}


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
        f" and the first stage {first:.4f} ({best - first:+.4f})."
    ]
    shipped = (metrics.get("shipped") or {}).get("final")
    if shipped:
        parts.append(
            f"As shipped: {key} {shipped[key]:.4f} ({shipped[key] - first:+.4f} over the first stage)."
        )
    if (shipped or {}).get(key, best) < first:
        parts.append(
            "WARNING: the reranker as shipped ranks WORSE than the first stage on validation; "
            "do not deploy it as is."
        )
    if best <= base:
        parts.append("WARNING: training did not improve on the untrained model.")
    fusion = metrics.get("fusion")
    if fusion:
        fused = fusion["value"]
        how = (
            "no fusion clearly gains on the reranker alone, which is kept"
            if fusion.get("kept") == "reranker alone"
            else f"{fusion['method']}, reranker weight {fusion['weight']:.2f}"
        )
        parts.append(
            f"Fused with the first stage ({how}): {key} {fused:.4f} "
            f"({fused - first:+.4f} over the first stage)."
        )
        if fused < first:
            parts.append("WARNING: even fused with it, the reranker ranks WORSE than the first stage here.")
    return " ".join(parts)


def write_report(path: Path, metrics: dict[str, Any], config, digest: str, curve: Path | None) -> None:
    recall_key = next((k for k in metrics["baseline"] if k.startswith("recall@")), None)
    rows = [("first stage", metrics["first_stage"]), ("untrained model", metrics["baseline"])]
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
        f"({metrics['valid_pairs']} pairs)",
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
        *candidate_lines(metrics.get("deployed")),
        "",
        *shipped_lines(metrics),
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


def candidate_lines(deployed: dict[str, Any] | None) -> list[str]:
    """What the validation queries were ranked over."""
    if not deployed:
        return [
            "Validation ranks each query's given positives and negatives; BM25 is computed over the "
            "same candidates (an index over all of them)."
        ]
    return [
        f"Validation as deployed: each query is ranked over the {deployed['first_stage']} top "
        f"{deployed['depth']} of {deployed['corpus_documents']} documents ({deployed['corpus']}). "
        f"The first stage finds {deployed['recall_at_depth']:.1%} of the positives in its top "
        f"{deployed['depth']} ({deployed['queries_without_a_positive_in_depth']} of "
        f"{deployed['queries']} queries have none there); a positive it misses counts against every row.",
    ]


SIGNAL_NAMES = {
    "reranker": "cross-encoder alone (merged, as shipped)",
    "bm25": "BM25 with the corpus's statistics",
    "cosine": "backbone embedding cosine (untrained)",
    "bm25_sentence": "BM25 of the best sentence",
    "cosine_sentence": "backbone cosine of the best sentence",
}


def shipped_lines(metrics: dict[str, Any]) -> list[str]:
    """The model as it ships: each signal's own metric, the ensemble's weights, the final score,
    and a plain sentence for anything that ranks below the first stage."""
    shipped = metrics.get("shipped")
    if not shipped:
        return []
    key = metrics["metric_for_best"]
    first = shipped["first_stage"][key]
    ensemble = shipped.get("ensemble")
    weights = {}
    if ensemble:
        weights = dict(zip(ensemble["signals"], ensemble["strategies"][ensemble["chosen"]]["weights"]))
    rows = [("first stage", first, "")]
    rows += [
        (SIGNAL_NAMES.get(n, n), m[key], f"{weights[n]:.2f}" if n in weights else "")
        for n, m in shipped["signals"].items()
    ]
    final_name = "**ensemble (what ships)**" if ensemble else "**what ships**"
    rows.append((final_name, shipped["final"][key], ""))
    lines = [
        "## The model as it ships",
        "",
        f"| score | {key} | ensemble weight |",
        "|---|---:|---:|",
        *(f"| {name} | {value:.4f} | {weight} |" for name, value, weight in rows),
        "",
    ]
    runtime = shipped.get("runtime")
    if runtime:
        model = f"{runtime['backend']} {runtime['precision']} model ({runtime['reason']})"
        encoder = f", its sentence encoder in {shipped['encoder']}" if shipped.get("encoder") else ""
        lines += [
            f"Scored by the {model}{encoder}; a CPU that serves the run picks its runtime again at load.",
            "",
        ]
    if ensemble:
        strategies = ensemble["strategies"]
        scale = NORMALIZATION_WORDS[ensemble.get("normalization", "zscore")]
        lines += [
            f"Ensemble weights chosen by {ensemble['folds']}-fold cross-validation over the validation "
            f"queries (fitted weights replace equal ones only for a held-out gain above its standard "
            f"error), each signal on one scale by {scale}: "
            f"**{ensemble['chosen']}** ("
            + "; ".join(
                f"{name}: {s['cross_validated']:.4f} held out"
                + (
                    f" ({s['gain_over_equal']:+.4f} ± {s['standard_error']:.4f} over equal)"
                    if name != "equal" and "gain_over_equal" in s
                    else ""
                )
                + f", weights {s['weights']}"
                for name, s in strategies.items()
            )
            + ").",
            "",
        ]
    depths = shipped.get("depths") or {}
    if len(depths) > 1:
        lines += [
            f"{key} when the reranker reorders the first stage's top d:",
            "",
            "| d | " + " | ".join(depths) + " |",
            "|---|" + "---:|" * len(depths),
        ]
        for name, label in (
            ("first_stage", "first stage"),
            ("reranker", "cross-encoder alone"),
            ("final", "what ships"),
        ):
            lines.append(f"| {label} | " + " | ".join(f"{depths[d][name][key]:.4f}" for d in depths) + " |")
        lines.append("")
    below = [name for name, value, _ in rows[1:] if value < first]
    for name in below:
        lines.append(f"- {name.strip('*')} ranks below the first stage ({key} lower than {first:.4f}).")
    if below:
        lines.append("")
    return lines


def fusion_verdict(fusion: dict[str, Any]) -> str:
    """Why the fusion kept is the grid's best or the reranker alone, in one sentence."""
    if fusion.get("queries", 2) < 2:
        return (
            "With fewer than two validation queries no gain can be told from noise: "
            "the reranker alone is kept."
        )
    measured = (
        f"Refitted on each of {fusion['folds']} folds without the fold's queries, the grid's best gains "
        f"{fusion['gain_over_reranker']:+.4f} ± {fusion['standard_error']:.4f} (standard error) over the "
        "reranker alone on them"
    )
    if fusion.get("kept") == "fitted":
        return f"{measured}: beyond noise, so the grid's best is kept."
    return f"{measured}: within noise, so the reranker alone is kept and first-stage scores leave its order."


def fusion_lines(metrics: dict[str, Any]) -> list[str]:
    """The fusion section: BM25, the reranker, untuned RRF and the learned fusion."""
    fusion = metrics.get("fusion")
    if not fusion:
        return []
    key = fusion["metric"]
    rows = [
        ("first stage", metrics["first_stage"][key]),
        (
            "reranker as shipped",
            ((metrics.get("shipped") or {}).get("final") or metrics["best"]).get(key, float("nan")),
        ),
        ("RRF(first stage, reranker), untuned", fusion["untuned_rrf"]),
    ]
    fitted = fusion.get("fitted")
    if fitted and fusion.get("kept") != "fitted":
        grid_best = f"grid's best: {fitted['method']}, reranker weight {fitted['weight']:.2f}"
        rows.append((grid_best, fitted["value"]))
    rows.append((f"kept: {fusion['method']}, reranker weight {fusion['weight']:.2f}", fusion["value"]))
    lines = [
        "## Fusion with the first stage",
        "",
        "Fitted on these validation queries, against the first stage's scores of their "
        "candidates; `Reranker.rerank(first_stage=...)`, `rerankit eval`, the server and the "
        "adapters use it.",
        "",
        f"| ranking | {key} |",
        "|---|---:|",
        *(f"| {name} | {value:.4f} |" for name, value in rows),
        "",
    ]
    if "gain_over_reranker" in fusion:
        lines += [fusion_verdict(fusion), ""]
    return lines


def calibration_lines(report: dict[str, Any] | None) -> list[str]:
    """The calibration section: the fitted scale and bias and the ECE before and after."""
    if not report:
        return []
    fitted = report["calibration"]
    how = (
        f"`sigmoid({fitted['scale']:.4g} · score {'+' if fitted['bias'] >= 0 else '−'} "
        f"{abs(fitted['bias']):.4g})`"
        if fitted
        else "none (the validation pairs hold one class only)"
    )
    return [
        "## Calibration",
        "",
        f"Relevance scores are {how}, fitted on the {report['pairs']} validation pairs "
        "(Platt scaling of the score a document ranks by; raw scores on request).",
        "",
        "| scores | expected calibration error (10 bins) |",
        "|---|---:|",
        f"| sigmoid(score) | {report['ece_before']:.4f} |",
        f"| calibrated | {report['ece_after']:.4f} |",
        "",
    ]


def write_curve(path: Path, metrics: dict[str, Any]) -> Path | None:
    """Train loss and the validation metric against the step; None if there is nothing to plot."""
    if not metrics["train_loss"] and not metrics["evaluations"]:
        return None
    from rerankit.errors import require

    require("matplotlib", "train").use("Agg")
    plt = require("matplotlib.pyplot", "train")

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
    right.axhline(metrics["first_stage"][key], color="tab:gray", ls="--", label=f"first stage {key}")
    right.set_ylabel(f"validation {key}", color="tab:orange")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
