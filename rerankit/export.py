"""``rerankit export``: a run folder -> a plain, merged Hugging Face cross-encoder.

The result is an ordinary ``AutoModelForSequenceClassification`` checkpoint (safetensors,
one label) with its tokenizer, which other tools load unchanged:
``sentence_transformers.CrossEncoder(path)`` gives the same sigmoid scores as
``Reranker.load(run).score``. The tokenizer's ``model_max_length`` is set to the run's
``max_length``, so every loader truncates the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from rerankit import run_folder
from rerankit.errors import RerankitError

# Written into every export: where it came from (and the mark --overwrite looks for).
EXPORT_INFO = "rerankit_export.json"


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Path:
    """Merge the run's adapter into its base and write it to ``out``; returns ``out``."""
    from rerankit import __version__
    from rerankit.inference import Reranker

    run_dir, out = Path(run_dir), Path(out)
    manifest = run_folder.read_manifest(run_dir)
    if out.exists():
        if not overwrite:
            raise RerankitError(f"{out} exists; pass --overwrite to replace it")
        if not out.is_dir() or (not (out / EXPORT_INFO).exists() and any(out.iterdir())):
            raise RerankitError(
                f"{out} is not a rerankit export; --overwrite replaces only one (or an empty "
                "folder): choose another --out"
            )
    reranker = Reranker.load(
        run_dir, device="cpu", dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    staging = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    reranker.model.save_pretrained(str(staging), safe_serialization=True)
    reranker.tokenizer.model_max_length = reranker.max_length
    reranker.tokenizer.save_pretrained(str(staging))
    (staging / EXPORT_INFO).write_text(
        json.dumps(
            {
                "exported_from": str(run_dir.resolve()),
                "config_hash": manifest["config_hash"],
                "base_model": manifest["base_model"],
                "max_length": reranker.max_length,
                "dtype": dtype,
                "rerankit_version": __version__,
            },
            indent=2,
        )
        + "\n"
    )
    # The old export goes only once the new one is complete on disk.
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)
    return out
