"""The run folder: what a training run writes, and how a finished run is told from an unfinished one.

::

    outputs/<run>/
      config.yaml          resolved config, written at the start (its hash guards --resume)
      baseline.json        untrained model's validation metrics (reused on --resume)
      checkpoints/         Trainer checkpoints, for --resume
      logs/                TensorBoard event files
      model/               LoRA adapter + trained head (or full weights) and the tokenizer
      metrics.json         first stage, baseline, every evaluation, best, train loss
      report.md            the same as a short Markdown report
      training_curve.png   train loss and validation metric by step
      run.json             manifest, written last: its presence means "finished"

Every file is written to a temporary name and renamed into place, and ``run.json`` comes
last, so an interrupted run never loads as if it were complete.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rerankit.errors import ModelLoadError, RerankitError
from rerankit.files import atomic_write_text, read_json, write_json

MANIFEST = "run.json"
CONFIG_FILE = "config.yaml"
BASELINE_FILE = "baseline.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CURVE_FILE = "training_curve.png"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
RUN_FORMAT = "rerankit-run"
RUN_FORMAT_VERSION = 1


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / CHECKPOINTS_DIR
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def prepare(out: Path, *, resume: bool, overwrite: bool, config_text: str | None = None) -> None:
    """Make ``out`` ready for a run, refusing to clobber a finished or resumable one."""
    finished = (out / MANIFEST).exists()
    resumable = last_checkpoint(out) is not None
    if overwrite and out.exists():
        shutil.rmtree(out)
    elif finished:
        raise RerankitError(
            f"{out} already holds a finished run; pass --overwrite to replace "
            "it or choose another --output-dir"
        )
    elif resume and not resumable:
        raise RerankitError(f"{out} has no checkpoint to resume from")
    elif not resume and resumable:
        raise RerankitError(
            f"{out} holds an unfinished run; pass --resume to continue it or --overwrite to start again"
        )
    elif not resume and out.exists():
        (out / BASELINE_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        saved = out / CONFIG_FILE
        if resume and saved.exists() and saved.read_text(encoding="utf-8") != config_text:
            raise RerankitError(
                f"{saved} differs from the config given now; a run resumes "
                "only with the config it started with"
            )
        atomic_write_text(saved, config_text)


def config_text(config, digest: str) -> str:
    header = f"# resolved rerankit config; hash {digest}\n"
    return header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_model(out: Path, model, tokenizer) -> None:
    """The final model (adapter + head, or full weights) and tokenizer, swapped in at once."""
    staging = out / f".{MODEL_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    final = out / MODEL_DIR
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)


def mark_finished(out: Path, config, digest: str, built) -> None:
    """Write the manifest: the last file of a run, whose presence means "finished"."""
    from rerankit import __version__

    write_json(
        out / MANIFEST,
        {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "rerankit_version": __version__,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config_hash": digest,
            "base_model": config.model.name_or_path,
            "base_revision": config.model.revision,
            "trust_remote_code": config.model.trust_remote_code,
            "max_length": config.model.max_length,
            "adapter": bool(config.lora.enabled),
            "trained_quantization": config.quantization.mode,
            "modules_to_save": built.modules_to_save,
            "model_dir": MODEL_DIR,
        },
    )


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a finished run folder, or ModelLoadError saying what is wrong."""
    manifest = read_json(path / MANIFEST)
    if manifest is None:
        hint = (
            " it looks like an interrupted run: continue it with `rerankit train --resume`"
            if (path / CONFIG_FILE).exists()
            else ""
        )
        raise ModelLoadError(f"{path} is not a finished rerankit run (no {MANIFEST});{hint}")
    if manifest.get("format") != RUN_FORMAT or manifest.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise ModelLoadError(
            f"{path / MANIFEST}: unsupported run format "
            f"{manifest.get('format')!r} v{manifest.get('format_version')}"
        )
    return manifest
