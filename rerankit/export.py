"""``rerankit export``: a run folder -> a plain, merged Hugging Face cross-encoder.

The result is an ordinary ``AutoModelForSequenceClassification`` checkpoint (safetensors,
one label) with its tokenizer, which other tools load unchanged:
``sentence_transformers.CrossEncoder(path)`` gives the cross-encoder's own scores, those of
``Reranker.load(run, ensemble="none").score``. The tokenizer's ``model_max_length`` is set to the
run's ``max_length``, so every loader truncates the same way. A run without a self-ensemble has
its calibration (``rerankit.calibration``) folded into a head that has a bias (encoders:
``sigmoid`` of the exported logit is the calibrated probability, in any tool); a head without
one (decoders), or a run with an ensemble (whose calibration is of the ensemble's score), keeps
its logits, and the calibration is recorded for ``Reranker.load`` to apply. The ensemble's
signals (``rerankit.ensemble``) are written beside the model in ``ensemble/``.

A decoder LLM run exports the same way, with its prompt template twice: in
``rerankit_export.json`` (read by ``Reranker.load``) and as the tokenizer's chat template over
a ``query``/``document`` message pair (a ``system`` message is the instruction), which
sentence-transformers' ``CrossEncoder`` applies by itself (``>=6.0``: over-long documents keep
the template's suffix there too). It is the classifier's only chat template: sentence-transformers
reads a tokenizer with several named ones as taking structured message content, which the
template does not. A yes/no run's classifier is the converted one: its one-label head is
``W[yes] − W[no]``. ``causal_lm`` also writes the merged causal LM (Qwen3-Reranker layout:
the score is ``logit(yes) − logit(no)`` at the last position), for tools that serve those; its
tokenizer keeps the model's own chat template as the default (a chat model stays one), with
the reranker's beside it under the name ``rerankit``.

``dtype="auto"`` writes a decoder's merged weights in bf16 when a GPU is there (the merge then
runs on it), fp32 otherwise.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rerankit import run_folder
from rerankit.encoding import special_tokens_around
from rerankit.errors import RerankitError
from rerankit.files import swap_in
from rerankit.graph_export import DEFAULT_TOLERANCE, failures, gate_record, run_validation_set, write_graphs
from rerankit.prompts import EXPORT_INFO, reserved_strings
from rerankit.runtimes import describe

# The name the reranker's chat template is stored under beside the tokenizer's own.
CHAT_TEMPLATE_NAME = "rerankit"


def export_dtype(dtype: str, decoder: bool, device: str) -> str:
    """The precision an export writes: ``dtype``, or for ``auto`` bf16 for a decoder merged on a
    GPU (half the size, the precision it serves in) and fp32 for the rest."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if decoder and device == "cuda" else "float32"


def chat_templates(own, reranker_template: str) -> dict[str, str]:
    """A causal LM export's named chat templates: its ``own`` (None, one, or several by name),
    the default where it has one, and the reranker's under ``CHAT_TEMPLATE_NAME`` (the default
    too when the model has none)."""
    templates = dict(own) if isinstance(own, dict) else ({"default": own} if own else {})
    templates[CHAT_TEMPLATE_NAME] = reranker_template
    templates.setdefault("default", reranker_template)
    return templates


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    causal_lm: str | Path | None = None,
    formats: Sequence[str] = (),
    quantize: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    validation: str | Path | None = None,
    force: bool = False,
    calibration_pairs: Sequence[tuple[str, str]] | None = None,
) -> Path:
    """Merge the run's adapter into its base and write it to ``out``; returns ``out``.

    ``dtype``: float32, bfloat16, float16, or auto (``export_dtype``). A half-precision export
    is merged on the GPU when there is one.
    ``causal_lm``: also write the merged causal LM there (yes/no runs only).

    ``formats`` (``openvino``, ``onnx``): also write CPU graphs of the model, fp32 and, with
    ``quantize="int8"``, int8 (OpenVINO's static, calibrated on validation pairs or
    ``calibration_pairs``; ONNX's dynamic). Every graph is measured against the torch fp32
    model on the run's validation set (``validation``: a seed-format JSONL instead); one whose
    NDCG@10 loss may exceed ``tolerance`` (its 95 % bootstrap upper bound) fails the accuracy
    gate, and the export is refused unless ``force`` (then ``Reranker.load`` runs that graph
    only when asked). See ``rerankit.graph_export``.

    Each destination is locked for the whole export (another export or run there is refused)
    and written through a staging folder of its own beside it, swapped in once complete.
    """
    run_dir, out = Path(run_dir), Path(out)
    targets = {out: "--out"} if causal_lm is None else {out: "--out", Path(causal_lm): "--causal-lm"}
    if causal_lm is not None and Path(causal_lm).resolve() == out.resolve():
        raise RerankitError(f"--causal-lm {causal_lm} is the --out folder: give each its own")
    with contextlib.ExitStack() as stack:
        for target, option in targets.items():
            stack.enter_context(run_folder.locked(target, option))
            _check_target(target, overwrite)
        return _export(
            run_dir,
            out,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
            causal_lm=causal_lm,
            formats=formats,
            quantize=quantize,
            tolerance=tolerance,
            validation=validation,
            force=force,
            calibration_pairs=calibration_pairs,
        )


def _export(
    run_dir: Path,
    out: Path,
    *,
    dtype: str,
    trust_remote_code: bool,
    allow_pickle: bool,
    causal_lm: str | Path | None,
    formats: Sequence[str],
    quantize: str | None,
    tolerance: float,
    validation: str | Path | None,
    force: bool,
    calibration_pairs: Sequence[tuple[str, str]] | None,
) -> Path:
    """``export`` once its destinations are locked and checked."""
    import torch

    from rerankit import __version__
    from rerankit.inference import Reranker

    manifest = run_folder.read_manifest(run_dir)
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = export_dtype(dtype, manifest.get("prompt") is not None, gpu)
    device = gpu if dtype != "float32" else "cpu"
    if quantize and not formats:
        raise RerankitError("--quantize applies to a graph: give --format openvino or --format onnx")
    if formats and dtype != "float32":
        raise RerankitError(f"graphs (--format) are written from the fp32 model; got --dtype {dtype}")
    vset, source = run_validation_set(run_dir, validation) if formats else (None, None)
    if causal_lm is not None and manifest.get("head") != "yes_no":
        raise RerankitError(
            f"{run_dir} scores with a new classification head ({manifest.get('head') or 'seq_cls'}), "
            "which a causal LM cannot carry; --causal-lm needs a run trained with model.head: yes_no"
        )
    reranker = Reranker.load(  # the torch weights, even where the run carries its graphs
        run_dir,
        device=device,
        dtype=dtype,
        backend="torch",
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    tokenizer = reranker.tokenizer
    tokenizer.model_max_length = reranker.max_length
    own_template, reranker_template = tokenizer.chat_template, None
    if reranker.prompt is not None:
        leading, trailing = (tokenizer.decode(ids) for ids in special_tokens_around(tokenizer))
        reserved = reserved_strings(tokenizer)
        reranker_template = reranker.prompt.chat_template(leading, trailing, reserved)
        tokenizer.chat_template = reranker_template
    calibration = reranker.calibration
    # A calibration fitted on the ensemble's score cannot live in the cross-encoder's head: it
    # is recorded, and the head keeps the logits the ensemble weighs.
    foldable = calibration is not None and reranker.ensemble is None
    folded = foldable and _fold_calibration(reranker.model, calibration)
    info = {
        "exported_from": str(run_dir.resolve()),
        "config_hash": manifest["config_hash"],
        "base_model": manifest["base_model"],
        "max_length": reranker.max_length,
        # how documents longer than the window are scored, as the run trained and validated
        "long_documents": reranker.long_documents.model_dump(),
        "dtype": dtype,
        "head": manifest.get("head", "seq_cls"),
        "prompt": reranker.prompt.to_dict() if reranker.prompt is not None else None,
        "calibration": {**calibration.to_dict(), "folded": folded} if calibration else None,
        "fusion": reranker.fusion.to_dict() if reranker.fusion else None,
        "score_injection": reranker.score_injection.to_dict() if reranker.score_injection else None,
        # the self-ensemble's weights; its signals are in ensemble/ (rerankit.ensemble)
        "ensemble": reranker.ensemble.to_dict() if reranker.ensemble else None,
        "rerankit_version": __version__,
    }
    record = {**info, "layout": "sequence-classification"}

    def graphs(staging: Path) -> None:
        records = write_graphs(
            staging,
            reranker,
            vset,
            formats,
            quantize=quantize,
            tolerance=tolerance,
            calibration=calibration_pairs,
        )
        record["accuracy_gate"] = gate_record(records, vset, source, tolerance)
        failed = failures(records)
        if failed and not force:
            raise RerankitError(
                f"accuracy gate: the NDCG@10 loss on {len(vset)} validation queries may exceed {tolerance} ("
                + "; ".join(describe(r) for r in failed)
                + "); nothing was written. Raise --tolerance, or write it anyway with --force "
                "(Reranker.load then runs that graph only with allow_failed_gate)"
            )

    def extras(staging: Path) -> None:
        _write_signals(staging, reranker, encoder_graph="openvino" in formats)
        if formats:
            graphs(staging)

    _write(out, reranker.model, tokenizer, record, extras)
    if causal_lm is not None:
        model = _causal_lm(manifest, reranker, dtype, trust_remote_code, allow_pickle)
        if reranker_template is not None:  # a chat model stays one: its own template stays the default
            tokenizer.chat_template = chat_templates(own_template, reranker_template)
        _write(
            Path(causal_lm),
            model,
            tokenizer,
            {**info, "layout": "causal-lm"},
            lambda staging: _write_signals(staging, reranker),
        )
    return out


def _fold_calibration(model, calibration) -> bool:
    """``scale · logit + bias`` written into the one-label output layer, when it has a bias
    (BERT's ``classifier``, RoBERTa's ``classifier.out_proj``); False where it cannot be."""
    import torch

    head = getattr(model, "classifier", None)
    layer = getattr(head, "out_proj", head)
    if not isinstance(layer, torch.nn.Linear) or layer.out_features != 1 or layer.bias is None:
        return False
    with torch.no_grad():
        layer.weight.mul_(calibration.scale)
        layer.bias.mul_(calibration.scale).add_(calibration.bias)
    return True


def _check_target(out: Path, overwrite: bool) -> None:
    if out.is_symlink():
        raise RerankitError(
            f"{out} is a symbolic link (to {out.resolve()}); an export is written to a folder "
            "given by its own path: give that path"
        )
    if not out.exists():
        return
    if not overwrite:
        raise RerankitError(f"{out} exists; pass --overwrite to replace it")
    if not out.is_dir() or (not (out / EXPORT_INFO).exists() and any(out.iterdir())):
        raise RerankitError(
            f"{out} is not a rerankit export; --overwrite replaces only one (or an empty "
            "folder): choose another folder"
        )


# Staging folders are named after their destination with this infix and hold this marker:
# one that has both and whose destination's lock is free was left by a killed export.
STAGING_INFIX = ".rerankit-export-"
STAGING_MARKER = ".rerankit-staging"


def _write(out: Path, model, tokenizer, info: dict, extra: Callable[[Path], None] | None = None) -> None:
    """Model, tokenizer, ``extra(staging)``'s files and export info into ``out``, swapped in
    whole (nothing is left behind when ``extra`` raises). The caller holds ``out``'s lock."""
    _remove_stale_staging(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_INFIX}", dir=out.parent))
    try:
        (work / STAGING_MARKER).write_text(f"{os.getpid()}\n", encoding="utf-8")
        staging = work / "export"
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        if extra is not None:
            extra(staging)
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
        from rerankit.model_card import write_export_card

        write_export_card(staging, info, *run_folder.records(Path(info["exported_from"])), name=out.name)
        # The old export goes only once the new one is complete on disk, and by renames.
        swap_in(staging, out, work / "previous")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_signals(staging: Path, reranker, encoder_graph: bool = False) -> None:
    """The ensemble's signals beside the export: BM25's statistics and the sentence encoder
    whose cosine it weighs, so that the folder serves without the run or the base model; with
    ``encoder_graph``, that encoder's OpenVINO graph too."""
    from rerankit.ensemble import (
        BM25_FILE,
        CORPUS_EMBEDDINGS,
        ENCODER_DIR,
        ENCODER_GRAPH,
        ENSEMBLE_DIR,
        write_encoder_graph,
    )

    if reranker.ensemble is None:
        return
    folder = staging / ENSEMBLE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    if "bm25" in reranker.signals:
        reranker.signals["bm25"].save(folder / BM25_FILE)
    if "cosine" in reranker.signals:
        reranker.signals["cosine"].save(folder / ENCODER_DIR)
        if reranker.signals["cosine"].pinned:
            reranker.signals["cosine"].save_pinned(folder / CORPUS_EMBEDDINGS)
        if encoder_graph:
            write_encoder_graph(reranker.signals["cosine"], folder / ENCODER_GRAPH)


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders a killed export to ``out`` left behind: only folders named and
    marked as rerankit's, and only under ``out``'s lock, so none is in use."""
    for folder in out.parent.glob(glob.escape(f".{out.name}{STAGING_INFIX}") + "*"):
        if folder.is_dir() and not folder.is_symlink() and (folder / STAGING_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)


def _causal_lm(manifest: dict, reranker, dtype: str, trust_remote_code: bool, allow_pickle: bool):
    """The base causal LM with the run's merged body: its LM head (untouched by training, the
    yes/no head is frozen) gives ``logit(yes) − logit(no)`` equal to the classifier's score."""
    from transformers import AutoModelForCausalLM

    from rerankit.loading import resolve_model_path, torch_dtype

    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(manifest["base_model"]),
        revision=manifest.get("base_revision"),
        dtype=torch_dtype(dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=None if allow_pickle else True,
    )
    body = getattr(model, model.base_model_prefix)
    body.load_state_dict(getattr(reranker.model, reranker.model.base_model_prefix).state_dict())
    model.config.pad_token_id = reranker.model.config.pad_token_id
    return model
