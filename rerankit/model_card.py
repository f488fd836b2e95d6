"""The model card (``README.md`` with YAML front matter) of a run's model folder and of an export.

Written with huggingface_hub's ``ModelCard``, so the folder uploads to a model hub as it is: the
front matter carries ``library_name``, ``pipeline_tag: text-ranking``, ``base_model`` (when the
base is a hub id), the base's ``license`` (when its own card gives one), the tags and the
validation NDCG@10 as ``model-index``; the text gives the training data, the validation metrics
beside the first stage and the untrained model, the calibration, the self-ensemble, the max
length, how to load the model, and its limitations. Everything comes from what the run recorded
(its manifest or the export's record, its metrics and config); nothing is measured here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD_FILE = "README.md"
# A hub model id: ``name`` or ``owner/name`` (no path separators beyond the one, no spaces).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# A folder of the hub's cache: .../models--owner--name/snapshots/<revision>
CACHED_SNAPSHOT = re.compile(r"models--(?P<id>[^/]+)/snapshots/[^/]+/?$")


def write_run_card(model_dir: Path, manifest: Mapping[str, Any], metrics: Mapping, config: Mapping) -> Path:
    """The card of a run folder's model directory (the adapter or weights ``rerankit train``
    wrote), from the manifest about to be written and the run's metrics and config."""
    name = Path(model_dir).resolve().parent.name
    return _save(model_card(manifest, metrics, config, name=name, export=False), model_dir)


def write_export_card(
    folder: Path, record: Mapping[str, Any], metrics: Mapping, config: Mapping, *, name: str
) -> Path:
    """The card of an export named ``name`` (its folder's name), written into ``folder``, from
    its record (``rerankit_export.json``) and the metrics and config of the run it came from."""
    return _save(model_card(record, metrics, config, name=name, export=True), folder)


def _save(card, folder: Path) -> Path:
    path = Path(folder) / CARD_FILE
    card.save(path)
    return path


def hub_id(base_model: str) -> str | None:
    """The hub id of a base model: the id itself, the repository of a folder in the hub's cache,
    or None for any other local folder (a path is no ``base_model`` a hub accepts)."""
    cached = CACHED_SNAPSHOT.search(str(base_model).replace("\\", "/"))
    if cached:
        return cached.group("id").replace("--", "/")
    if Path(base_model).expanduser().exists() or not HUB_ID.match(str(base_model)):
        return None
    return str(base_model)


def base_license(base_model: str, revision: str | None = None) -> str | None:
    """The ``license`` of the base model's own card, where a copy of it is on this machine
    (a local folder, the embedded MiniLM's package, the hub's cache); None when none says."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    from rerankit.loading import resolve_model_path

    folder = Path(resolve_model_path(base_model)).expanduser()
    candidates = [folder / CARD_FILE] if folder.is_dir() else []
    if not candidates and hub_id(base_model):
        cached = try_to_load_from_cache(str(base_model), CARD_FILE, revision=revision)
        candidates = [Path(cached)] if isinstance(cached, str) else []
    for path in candidates:
        try:
            license_ = ModelCard.load(path).data.license
        except Exception:  # no card, or one whose front matter does not parse: no license known
            continue
        if isinstance(license_, str) and license_:
            return license_
    return None


def model_card(
    record: Mapping[str, Any],
    metrics: Mapping[str, Any],
    config: Mapping[str, Any],
    *,
    name: str,
    export: bool,
):
    """The ``huggingface_hub.ModelCard`` of a run's model (``export=False``) or an export."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    base = str(record.get("base_model") or "")
    base_id = hub_id(base) if base else None
    license_ = base_license(base, record.get("base_revision")) if base else None
    key = metrics.get("metric_for_best", "ndcg@10")
    shipped = _shipped(metrics)
    # an export's record does not say; the run's config does
    lora = bool(record.get("adapter", (config.get("lora") or {}).get("enabled")))
    adapter = lora and not export  # a run's model folder holds the adapter; an export is merged
    eval_results = None
    if shipped and "ndcg@10" in shipped:
        eval_results = [
            EvalResult(
                task_type="text-ranking",
                dataset_type="validation",
                dataset_name=f"validation split ({metrics.get('valid_queries', '?')} queries)",
                dataset_split="validation",
                metric_type="ndcg_at_10",
                metric_name="NDCG@10",
                metric_value=shipped["ndcg@10"],
            )
        ]
    data = ModelCardData(
        library_name="sentence-transformers" if export else ("peft" if adapter else "transformers"),
        pipeline_tag="text-ranking",
        base_model=base_id,
        license=license_,
        tags=[
            "rerankit",
            "reranker",
            "cross-encoder",
            "text-ranking",
            *(["sentence-transformers"] if export else []),
            *(["lora"] if lora else []),
        ],
        model_name=name,
        eval_results=eval_results,
    )
    sections = [
        _summary(name, base, base_id, license_, lora, config, export),
        _data_section(metrics, config),
        _metrics_section(metrics, key),
        _scores_section(record, export),
        _usage_section(name, record, export),
        _limitations_section(metrics, record, export),
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _shipped(metrics: Mapping[str, Any]) -> dict:
    """The metrics of what ships (the ensemble's, or the merged cross-encoder's); a run from
    before those were recorded reports its best checkpoint."""
    final = (metrics.get("shipped") or {}).get("final")
    return dict(final or metrics.get("best") or {})


def _summary(name, base, base_id, license_, lora, config, export) -> str:
    trained = [
        f"LoRA r={(config.get('lora') or {}).get('r')}" if lora else "full fine-tuning",
        f"loss `{(config.get('loss') or {}).get('name')}`" if config.get("loss") else "",
        f"{(config.get('training') or {}).get('epochs')} epochs" if config.get("training") else "",
    ]
    base_text = (
        f"[`{base_id}`](https://huggingface.co/{base_id})"
        if base_id
        else f"a local model (`{Path(base).name}`)"
    )
    what = "a merged Hugging Face cross-encoder export" if export else "the model folder of a rerankit run"
    lines = [
        f"# {name}",
        "",
        f"A cross-encoder reranker fine-tuned from {base_text} with "
        f"rerankit ({', '.join(t for t in trained if t)}); "
        f"this is {what}. It scores a (query, passage) pair: a higher score means more relevant.",
    ]
    if not base_id:
        lines += [
            "",
            "`base_model` is not in the metadata: the run's base is a local folder, not a hub id. "
            "Add the hub id of that model before uploading.",
        ]
    if not license_:
        lines += [
            "",
            "`license` is not in the metadata: no card of the base model on this machine gives one. "
            "The base model's license applies; add it before uploading.",
        ]
    return "\n".join(lines)


def _data_section(metrics: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    if not metrics:
        return ""
    lines = ["## Training data", ""]
    data = metrics.get("data") or {}
    for split, report in data.items():
        if isinstance(report, Mapping):
            file = Path(str(report.get("path", "?"))).name
            lines.append(f"- {split}: `{file}`, {report.get('records', '?')} queries")
    lines.append(
        f"- {metrics.get('train_queries', '?')} training queries; validation: "
        f"{metrics.get('valid_queries', '?')} queries, "
        f"{metrics.get('valid_pairs', '?')} (query, passage) pairs"
    )
    adaptation = metrics.get("adaptation")
    if adaptation:
        lines.append(
            f"- corpus adaptation: {adaptation.get('pseudo_queries')} pseudo-queries from "
            f"{adaptation.get('passages')} passages of `{Path(str(adaptation.get('corpus'))).name}`"
        )
    return "\n".join(lines)


def _metrics_section(metrics: Mapping[str, Any], key: str) -> str:
    from rerankit.report import SIGNAL_NAMES, candidate_lines, metrics_table, verdict

    if not metrics.get("baseline"):
        return ""
    first = metrics.get("first_stage") or {}
    rows = [(f"first stage: {first.get('name', 'bm25')}", first), ("untrained model", metrics["baseline"])]
    if metrics.get("best"):
        rows.append(("trained (best checkpoint, as trained)", metrics["best"]))
    shipped = metrics.get("shipped") or {}
    if shipped.get("ensemble"):
        rows += [(SIGNAL_NAMES.get(n, n), v) for n, v in (shipped.get("signals") or {}).items()]
    if shipped.get("final"):
        rows.append(("**this model, as shipped**", shipped["final"]))
    recall = next((k for k in metrics["baseline"] if k.startswith("recall@")), None)
    lines = [
        "## Validation metrics",
        "",
        metrics_table(rows, recall),
        "",
        *candidate_lines(metrics.get("deployed")),
    ]
    with contextlib.suppress(KeyError, TypeError):  # a run recorded before some fields existed
        lines += ["", verdict(dict(metrics))]
    return "\n".join(lines)


def _scores_section(record: Mapping[str, Any], export: bool) -> str:
    lines = ["## Scores", ""]
    calibration = record.get("calibration")
    if calibration:
        where = (
            "folded into the exported head: `sigmoid(logit)` is the calibrated probability in any tool"
            if export and calibration.get("folded", True)
            else "applied by `Reranker.load` (recorded beside the weights)"
        )
        lines.append(
            f"- calibration: Platt scaling fitted on the validation pairs, "
            f"`sigmoid({calibration['scale']:.4g} · score {'+' if calibration['bias'] >= 0 else '−'} "
            f"{abs(calibration['bias']):.4g})`; {where}"
        )
    else:
        lines.append("- calibration: none; scores are `sigmoid(logit)`")
    ensemble = record.get("ensemble")
    if ensemble:
        weights = ", ".join(
            f"{s} {w:.2f}" for s, w in zip(ensemble.get("signals", []), ensemble.get("weights", []))
        )
        lines.append(
            f"- self-ensemble ({ensemble.get('strategy') or 'fitted'} weights: {weights}; signals "
            f"scaled by {'rank-Gauss' if ensemble.get('normalization') == 'rank_gauss' else 'z-score'}): the "
            "cross-encoder's logit fused with BM25 over the validation corpus's statistics and the "
            "backbone's embedding cosine (`ensemble/`); rerankit ranks by it, other tools see the "
            "cross-encoder alone"
        )
    else:
        lines.append("- self-ensemble: none; the cross-encoder ranks alone")
    lines.append(f"- max length: {record.get('max_length')} tokens per (query, passage) pair")
    windows = record.get("long_documents") or {}
    if windows.get("mode") and windows.get("mode") != "truncate":
        lines.append(
            f"- long documents: scored in windows ({windows.get('mode')}, "
            f"{windows.get('aggregate')} of the windows)"
        )
    else:
        lines.append("- long documents: truncated to the max length")
    if record.get("prompt"):
        lines.append(
            "- a decoder LLM read through a prompt template (recorded, and as the tokenizer's chat template)"
        )
    return "\n".join(lines)


def _usage_section(name: str, record: Mapping[str, Any], export: bool) -> str:
    rerankit_usage = [
        "```python",
        "from rerankit import Reranker",
        "",
        f'reranker = Reranker.load("{name if export else "path/to/run"}")',
        'docs = ["Carnegie Mellon was founded by Andrew Carnegie.", "The river is old."]',
        'results = reranker.rerank("who founded CMU?", docs, top_k=5)',
        "```",
    ]
    if not export:
        return "\n".join(
            [
                "## Usage",
                "",
                "This folder holds what training wrote (the LoRA adapter and the trained head, or the "
                "weights); rerankit loads it with its run folder, the folder above this one:",
                "",
                *rerankit_usage,
                "",
                "`rerankit export path/to/run out/` writes a merged cross-encoder that "
                "sentence-transformers' `CrossEncoder` and other tools load as it is.",
            ]
        )
    alone = " (the cross-encoder alone, without the self-ensemble)" if record.get("ensemble") else ""
    return "\n".join(
        [
            "## Usage",
            "",
            "With rerankit (calibration and self-ensemble as recorded):",
            "",
            *rerankit_usage,
            "",
            f"With sentence-transformers{alone}:",
            "",
            "```python",
            "from sentence_transformers import CrossEncoder",
            "",
            f'model = CrossEncoder("{name}")',
            'scores = model.predict([("who founded CMU?", "Carnegie Mellon was founded by ...")])',
            "```",
        ]
    )


def _limitations_section(metrics: Mapping[str, Any], record: Mapping[str, Any], export: bool) -> str:
    lines = [
        "## Limitations",
        "",
        "- The metrics above are on the run's own validation split: expect less on queries and "
        "documents unlike its training data (other domains, other languages).",
        f"- Text beyond {record.get('max_length')} tokens of a (query, passage) pair is not read "
        "unless long documents are scored in windows.",
        "- Calibrated probabilities hold for candidates like the validation ones (a first stage's "
        "top results); on other candidates they are scores, not probabilities.",
    ]
    if record.get("ensemble"):
        lines.append(
            "- The self-ensemble's BM25 uses the term statistics of the validation corpus; on a very "
            "different corpus its weight may not fit."
        )
    if export and record.get("accuracy_gate"):
        lines.append(
            "- CPU graphs (`openvino/`, `onnx/`) carry the accuracy gate's record in `rerankit_export.json`."
        )
    return "\n".join(lines)
