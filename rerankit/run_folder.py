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

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from rerankit.errors import ModelLoadError, RerankitError, short_reason
from rerankit.files import atomic_write_text, read_json, write_json

MANIFEST = "run.json"
CONFIG_FILE = "config.yaml"
BASELINE_FILE = "baseline.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
CURVE_FILE = "training_curve.png"
MODEL_DIR = "model"
GRAPHS_DIR = "graphs"  # the merged model's CPU graphs and its config (rerankit.graph_export)
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
RUN_FORMAT = "rerankit-run"
RUN_FORMAT_VERSION = 1
# First line of the config.yaml a run writes (followed by the config's hash).
CONFIG_HEADER = "# resolved rerankit config; hash "
# What loading a run reads from its manifest.
MANIFEST_KEYS = ("model_dir", "adapter", "base_model", "max_length")


def last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = out / CHECKPOINTS_DIR
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


# What a Trainer checkpoint needs to resume exactly where it stopped.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
# Files of a checkpoint written by torch.save (optimizer, scheduler, RNG states, grad scaler).
TORCH_ARCHIVES = ("*.pt", "*.pth")


def check_checkpoint(checkpoint: str | Path) -> None:
    """Refuse to resume from a checkpoint that is incomplete or unreadable: resuming without
    its optimizer state would silently start a fresh optimizer, and a damaged file would fail
    only once training has started, with a torch traceback."""
    folder = Path(checkpoint)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("the model or adapter weights (*.safetensors)")
    if missing:
        raise RerankitError(
            f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); it cannot resume "
            "the run as it was: delete this checkpoint folder to resume from an earlier one, "
            "or start again with --overwrite"
        )
    from safetensors import safe_open

    try:
        empty = [name for name in CHECKPOINT_FILES if (folder / name).stat().st_size == 0]
        if empty:
            raise ValueError(f"empty {', '.join(empty)}")
        read_json(folder / "trainer_state.json")
        for pattern in TORCH_ARCHIVES:
            for archive in sorted(folder.glob(pattern)):
                _check_torch_archive(archive)
        for weights in folder.glob("*.safetensors"):
            with safe_open(str(weights), framework="pt") as handle:
                handle.keys()
    except Exception as exc:  # JSON, archive or safetensors errors: the files are damaged
        raise RerankitError(f"{folder}: damaged checkpoint ({short_reason(exc)})") from None


def _check_torch_archive(path: Path) -> None:
    """ValueError naming ``path`` unless it is a whole torch.save archive. Those are zip files
    whose directory is written last, so a truncated file has none; the small pickle that
    describes the tensors is read too (its checksum is verified), the tensor data is not."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.rsplit("/", 1)[-1] == "data.pkl"]
            if not pickles:
                raise ValueError(f"{path.name}: not a torch archive (no data.pkl)")
            archive.read(pickles[0])
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path.name}: truncated or not a torch archive ({exc})") from None


def is_run_folder(out: Path) -> bool:
    """A folder rerankit wrote (finished or not): its manifest says so, or its config.yaml is
    one rerankit resolved (a config.yaml of another tool does not count)."""
    try:
        manifest = read_json(out / MANIFEST)
    except (ValueError, OSError, RecursionError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get("format") == RUN_FORMAT:
        return True
    try:
        with (out / CONFIG_FILE).open(encoding="utf-8") as handle:
            return handle.readline().startswith(CONFIG_HEADER)
    except (OSError, UnicodeDecodeError):
        return False


@contextlib.contextmanager
def locked(out: Path, option: str = "--output-dir") -> Iterator[None]:
    """Hold a folder's lock (a file beside it, with the holder's PID) for a block, so two
    processes (runs, exports) never write one folder; the lock goes with the process if it
    dies. The lock belongs to the resolved path: a symbolic link to the folder shares it.
    ``option`` names what to change in the refusal."""
    from filelock import FileLock, Timeout

    real = out.resolve()
    path = real.parent / f".{real.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RerankitError(f"{out}: cannot create its parent folder: {exc.strerror or exc}") from None
    holder = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        who = f" (pid {holder})" if holder else ""
        raise RerankitError(
            f"{out} is in use by another rerankit process{who}; wait for it to end or choose another {option}"
        ) from None
    try:
        path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield
    finally:
        lock.release()


def prepare(out: Path, *, resume: bool, overwrite: bool, config_text: str | None = None) -> None:
    """Make ``out`` ready for a run, refusing to clobber a finished or resumable one, or to
    delete anything that is not a rerankit run folder."""
    if out.exists() and not out.is_dir():
        raise RerankitError(f"{out} is a file; the output must be a folder")
    finished = (out / MANIFEST).exists()
    resumable = last_checkpoint(out) is not None
    if overwrite and out.is_symlink():
        raise RerankitError(
            f"{out} is a symbolic link (to {out.resolve()}); --overwrite deletes only a folder "
            "given by its own path: give that path"
        )
    if overwrite and out.exists():
        if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
            raise RerankitError(
                f"{out} is the current folder or one above it; --overwrite never deletes those"
            )
        if not is_run_folder(out) and any(out.iterdir()):
            raise RerankitError(
                f"{out} holds files that are not a rerankit run; --overwrite deletes only a run "
                "folder (or an empty one): choose another --output-dir"
            )
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise RerankitError(f"{out}: cannot write there: {exc.strerror or exc}") from None
    if config_text is not None:
        saved = out / CONFIG_FILE
        if resume and saved.exists() and saved.read_text(encoding="utf-8") != config_text:
            raise RerankitError(
                f"{saved} differs from the config given now; a run resumes "
                "only with the config it started with"
            )
        atomic_write_text(saved, config_text)


def config_text(config, digest: str) -> str:
    header = f"{CONFIG_HEADER}{digest}\n"
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


def mark_finished(
    out: Path,
    config,
    digest: str,
    built,
    calibration: dict | None = None,
    fusion=None,
    score_injection=None,
    ensemble=None,
    accuracy_gate: dict | None = None,
) -> None:
    """Write the model's card and the manifest: the last file of a run, whose presence means
    "finished"."""
    from rerankit import __version__
    from rerankit.model_card import write_run_card

    manifest = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "rerankit_version": __version__,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": digest,
        "base_model": config.model.name_or_path,
        "base_revision": config.model.revision,
        "trust_remote_code": config.model.trust_remote_code,
        "max_length": config.model.max_length,
        "long_documents": config.model.long_documents.model_dump(),
        # The template pairs were read through (null: the pair encoding) and the head.
        "prompt": built.prompt.to_dict() if built.prompt is not None else None,
        "head": built.head,
        # Platt scaling of the logits (rerankit.calibration); null: plain sigmoid.
        "calibration": calibration,
        # The fusion with the first stage fitted on validation (rerankit.fusion); null: RRF.
        "fusion": fusion.to_dict() if fusion is not None else None,
        # How the first stage's score is written into the input (rerankit.score_injection);
        # null: the model reads no score.
        "score_injection": score_injection.to_dict() if score_injection is not None else None,
        # The self-ensemble's weights (rerankit.ensemble; BM25's statistics in ensemble/);
        # null: the cross-encoder alone.
        "ensemble": ensemble.to_dict() if ensemble is not None else None,
        # The CPU graphs in graphs/ and their accuracy gate (rerankit.run_graphs); null: torch.
        "accuracy_gate": accuracy_gate,
        "adapter": bool(config.lora.enabled),
        "trained_quantization": config.quantization.mode,
        "modules_to_save": built.modules_to_save,
        "model_dir": MODEL_DIR,
    }
    write_run_card(out / MODEL_DIR, manifest, *records(out))
    write_json(out / MANIFEST, manifest)


def records(out: Path) -> tuple[dict, dict]:
    """The run's metrics and resolved config, each ``{}`` where it is missing or unreadable
    (what a model card says about the run, never what loading needs)."""
    found = []
    for name, parse in ((METRICS_FILE, json.loads), (CONFIG_FILE, yaml.safe_load)):
        try:
            value = parse((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError, yaml.YAMLError):
            value = None
        found.append(value if isinstance(value, dict) else {})
    return found[0], found[1]


def inside(folder: Path, relative: str) -> Path:
    """``folder / relative``, refused (ModelLoadError) when it would lead outside ``folder``."""
    target = (folder / str(relative)).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ModelLoadError(f"{folder / MANIFEST}: path {relative!r} leads outside the run folder")
    return target


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a finished run folder, or ModelLoadError saying what is wrong."""
    try:
        manifest = read_json(path / MANIFEST)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelLoadError(f"{path / MANIFEST}: not valid JSON ({short_reason(exc)})") from None
    except OSError as exc:
        raise ModelLoadError(f"{path / MANIFEST}: cannot read: {exc.strerror or exc}") from None
    if manifest is None:
        hint = (
            " it looks like an interrupted run: continue it with `rerankit train --resume`"
            if (path / CONFIG_FILE).exists()
            else ""
        )
        raise ModelLoadError(f"{path} is not a finished rerankit run (no {MANIFEST});{hint}")
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{path / MANIFEST}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != RUN_FORMAT or manifest.get("format_version", 0) > RUN_FORMAT_VERSION:
        raise ModelLoadError(
            f"{path / MANIFEST}: unsupported run format "
            f"{manifest.get('format')!r} v{manifest.get('format_version')}"
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ModelLoadError(f"{path / MANIFEST}: missing {', '.join(missing)}")
    return manifest
