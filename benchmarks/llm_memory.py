"""What it takes to fine-tune a decoder LLM reranker: peak memory and seconds per training step.

    python benchmarks/llm_memory.py [--sizes qwen2.5-0.5b qwen3-0.6b] [--modes full lora qlora]
                                    [--groups 8 --docs 8 --length 512] [--steps 3]

Models are built with random weights from the published configs of Qwen2.5 / Qwen3 decoders
(written below: nothing is downloaded), saved once to a cache folder, and then trained the way
``rerankit.fit`` trains them: ``model_builder.build_model`` (sequence-classification head, LoRA
on every projection, 4-bit NF4 for QLoRA, gradient checkpointing on for decoders), a listwise
loss over each query's documents, AdamW (or bitsandbytes' 8-bit / paged AdamW). Each row runs in
its own process, so its peak is its own:

- CUDA: ``torch.cuda.max_memory_allocated`` during the training steps (what the model, the
  optimizer and the activations hold);
- CPU: the process's peak resident memory during the training steps (Linux ``VmHWM``, reset
  once the model is built), less its size before the model was built (Python, torch and the
  libraries). Loading can peak higher (weights are converted, then quantized): that peak is
  the ``load`` column; ``held`` is what the built model holds before the first step. With
  glibc's default allocator (what a training process gets) memory freed in one layer can stay
  resident, so the peak is above what the tensors need; ``--return-freed-memory`` runs the rows
  with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed tensors go back to the OS at once, a little
  slower) and writes ``llm_memory_<device>_freed`` instead.

One step is ``groups`` queries × ``docs`` documents × ``length`` tokens (random token ids; the
cost does not depend on the text). The first step is a warm-up; the table gives the median of
the others. Precision is the one ``fit`` would pick (``training.precision: auto``): bf16 where
the hardware runs it natively, else fp32 — the row says which. Runs unchanged on a GPU machine
(QLoRA's 4-bit model is placed on the GPU as ``fit`` places it; ``--attn`` picks the attention
kernel, ``model.attn_implementation``: auto is flash-attention 2 where the flash-attn package is
installed, else sdpa; the row records the one used); a row that does not fit says so. Writes
benchmarks/results/llm_memory_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Shapes of the published configs (config.json of each model on the Hugging Face hub).
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(
        model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen3-0.6b": dict(
        model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "qwen3-4b": dict(
        model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
    "qwen3-8b": dict(
        model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
        tie_word_embeddings=False,
    ),
}  # fmt: skip
MODES = {
    "full": "full fine-tune",
    "lora": "LoRA",
    "qlora": "QLoRA 4-bit",
}
# long_documents.train_windows, as the table names it.
WINDOW_TRAINING = {
    "best": "MaxP, best window picked without gradients",
    "all": "MaxP, every window with gradients",
}
# Token ids the random inputs use (a small tokenizer is saved with each model).
TOKENS = ["<pad>", "<eos>", "yes", "no"] + [f"w{i}" for i in range(252)]


def build_checkpoint(size: str, folder: Path) -> None:
    """A random-weight causal LM of ``size`` saved in bf16 with a small word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    shape = dict(SHAPES[size])
    model_type = shape.pop("model_type")
    config = AutoConfig.for_model(model_type, **shape, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    words = Tokenizer(models.WordLevel({t: i for i, t in enumerate(TOKENS)}, unk_token="<eos>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>").save_pretrained(
        folder
    )


def measure_row(folder: Path, mode: str, args) -> dict:
    """One training configuration's peak memory and step time (run in a fresh process)."""
    import torch

    from rerankit.config import validate_config
    from rerankit.losses import build_loss
    from rerankit.model_builder import build_model, training_device, training_precision
    from rerankit.training import optimizer_class, scored_windows
    from rerankit.windows import aggregate_tensor

    cuda = torch.cuda.is_available()
    # The libraries' own memory is not the model's: import them before the baseline.
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from transformers import AutoModelForSequenceClassification  # noqa: F401

    before = _resident_mib("VmRSS")
    config = validate_config(
        {
            # Random token ids stand in for text: the template does not change the step's cost.
            "model": {
                "name_or_path": str(folder),
                "max_length": args.length,
                "head": "seq_cls",
                "prompt": {"template": "none"},
                "attn_implementation": args.attn,
            },
            "quantization": {"mode": "4bit" if mode == "qlora" else "none"},
            "lora": {"enabled": mode != "full", "r": 16, "alpha": 32},
            "data": {"train": "unused.jsonl"},
            "training": {"optimizer": args.optimizer},
        }
    )
    built = build_model(config)
    model, device = built.model, training_device(config)
    if mode != "qlora":
        model.to(device)
    if built.gradient_checkpointing and mode != "qlora":  # QLoRA gets it from peft's preparation
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    precision = training_precision(config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_class(args.optimizer)(trainable, lr=1e-5)
    loss_fn = build_loss("listwise")
    pairs = args.groups * args.docs
    generator = torch.Generator().manual_seed(0)
    rows = pairs * args.windows  # each document as --windows windows of --length tokens
    input_ids = torch.randint(4, len(TOKENS), (rows, args.length), generator=generator).to(device)
    attention_mask = torch.ones_like(input_ids)
    owner = torch.arange(pairs, device=device).repeat_interleave(args.windows)
    labels = torch.zeros(args.groups, args.docs, dtype=torch.long, device=device)
    labels[:, 0] = 1
    mask = torch.ones(args.groups, args.docs, dtype=torch.bool, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16")
    load_peak = torch.cuda.max_memory_allocated() if cuda else _resident_mib("VmHWM") - before
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        _release_freed_memory()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    held = torch.cuda.memory_allocated() / 2**20 if cuda else _resident_mib("VmRSS") - before
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with autocast:
            inputs, owners = {"input_ids": input_ids, "attention_mask": attention_mask}, owner
            if args.windows > 1 and args.window_training == "best":
                inputs, owners = scored_windows(model, inputs, owner, pairs, "max")
            logits = model(**inputs).logits
        scores = aggregate_tensor(logits.float().view(-1), owners, pairs, "max")
        loss = loss_fn(scores.view(args.groups, args.docs), labels, mask)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        print(f"  step {len(times)}: {times[-1]:.1f} s, loss {loss.item():.4f}", file=sys.stderr, flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _resident_mib("VmHWM") - before
    return {
        "peak_mib": round(peak),
        "load_peak_mib": round(load_peak / 2**20 if cuda else load_peak),
        "held_mib": round(held),
        "step_s": round(statistics.median(times[1:] or times), 2),
        "trainable_params": sum(p.numel() for p in trainable),
        "params": sum(p.numel() * (2 if _is_4bit(p) else 1) for p in model.parameters()),
        "precision": precision,
        "base_dtype": _frozen_dtype(model),
        "gradient_checkpointing": built.gradient_checkpointing,
        "attention": getattr(model.config, "_attn_implementation", None) or "default",
        "windows": args.windows,
        "window_training": args.window_training if args.windows > 1 else None,
    }


def _frozen_dtype(model) -> str:
    """How the frozen base is stored: nf4 (4-bit), bfloat16, float32; none when all train."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if not frozen:
        return "all trained"
    if any(_is_4bit(p) for p in frozen):
        return "nf4"
    return str(max(frozen, key=lambda p: p.numel()).dtype).removeprefix("torch.")


def _is_4bit(param) -> bool:
    return type(param).__name__ == "Params4bit"  # two 4-bit weights per stored byte


def _release_freed_memory() -> None:
    """Hand memory freed while loading back to the OS: glibc keeps freed heap resident, which
    would count in the training peak."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _resident_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since start or the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def full_fine_tune_bytes(size: str) -> int:
    """fp32 weights, gradients and two AdamW states: 16 bytes a parameter (counted on the meta
    device, nothing allocated)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(SHAPES[size])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return 16 * sum(p.numel() for p in model.parameters())


def memory_total() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[1]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def run_row(size: str, mode: str, folder: Path, args) -> dict:
    if mode == "full" and (need := full_fine_tune_bytes(size)) > memory_total():
        return {
            "size": size,
            "mode": mode,
            "error": f"not run: fp32 weights, gradients and AdamW states alone need {need / 2**30:.0f} GiB, "
            f"more than the {memory_total() / 2**30:.0f} GiB here",
        }
    command = [sys.executable, __file__, "--row", mode, "--folder", str(folder), *_shared(args)]
    started = time.perf_counter()
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": "65536"} if args.return_freed_memory else {})}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"size": size, "mode": mode, "error": f"over {args.row_timeout} s"}
    row = {"size": size, "mode": mode, "wall_s": round(time.perf_counter() - started)}
    result = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not result:
        reason = "out of memory" if "out of memory" in done.stderr.lower() or done.returncode == -9 else ""
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return {**row, "error": reason or tail[0][:200]}
    return {**row, **json.loads(result[-1])}


def _shared(args) -> list[str]:
    return [
        *("--groups", str(args.groups), "--docs", str(args.docs), "--length", str(args.length)),
        *("--steps", str(args.steps), "--optimizer", args.optimizer, "--attn", args.attn),
        *("--windows", str(args.windows), "--window-training", args.window_training),
    ]


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def write_results(rows: list[dict], args, out: Path) -> Path:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    meta = {
        "date": date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "device": device_name(),
        "torch": torch.__version__,
        "step": f"{args.groups} queries x {args.docs} documents x {args.length} tokens"
        + (f", each document {args.windows} windows (MaxP)" if args.windows > 1 else ""),
        "optimizer": args.optimizer,
        "allocator": "MALLOC_MMAP_THRESHOLD_=65536" if args.return_freed_memory else "glibc default",
    }
    out.mkdir(parents=True, exist_ok=True)
    maxp = "_maxp" if args.windows > 1 else ""
    name = out / f"llm_memory_{device}{maxp}{'_freed' if args.return_freed_memory else ''}"
    name.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        f"# Fine-tuning memory of decoder rerankers ({meta['date']}, commit {meta['commit']})",
        "",
        f"Device: {meta['device']} (torch {meta['torch']}). One step: {meta['step']}; "
        f"optimizer {args.optimizer}. Random weights in the published shapes "
        "(`benchmarks/llm_memory.py`). Peak: "
        + (
            "`torch.cuda.max_memory_allocated` during the steps; load: while the model was built."
            if device == "cuda"
            else "the process's peak resident memory during the steps (load: while the model was "
            f"built), less its size before the model was built; allocator: {meta['allocator']}."
        ),
        "",
        "| model | params | method | precision (base) | attention | trainable | held | peak memory | load "
        "| s / step |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        method = MODES[row["mode"]] + (f", {WINDOW_TRAINING[w]}" if (w := row.get("window_training")) else "")
        if "error" in row:
            lines.append(f"| {row['size']} | | {method} | | | | | {row['error']} | | |")
            continue
        lines.append(
            f"| {row['size']} | {row['params'] / 1e9:.2f} B | {method} | "
            f"{row['precision']} ({row['base_dtype']}) | {row.get('attention', '')} | "
            f"{row['trainable_params'] / 1e6:.1f} M | "
            f"{row['held_mib'] / 1024:.2f} GiB | {row['peak_mib'] / 1024:.2f} GiB | "
            f"{row['load_peak_mib'] / 1024:.2f} GiB | {row['step_s']} |"
        )
    name.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["qwen2.5-0.5b", "qwen3-0.6b"], choices=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--groups", type=int, default=8, help="Queries per step.")
    parser.add_argument("--docs", type=int, default=8, help="Documents per query.")
    parser.add_argument("--length", type=int, default=512, help="Tokens per (query, document) pair.")
    parser.add_argument("--steps", type=int, default=3, help="Steps per row (the first is a warm-up).")
    parser.add_argument(
        "--optimizer",
        default="adamw",
        choices=["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"],
    )
    parser.add_argument(
        "--return-freed-memory",
        action="store_true",
        help="glibc returns freed memory at once (MALLOC_MMAP_THRESHOLD_=65536): the peak then "
        "counts what the tensors need, not what the allocator kept",
    )
    parser.add_argument(
        "--attn",
        default="auto",
        choices=["auto", "sdpa", "eager", "flash_attention_2"],
        help="Attention kernel (model.attn_implementation).",
    )
    parser.add_argument(
        "--windows", type=int, default=1, help="Windows per document (MaxP training when above 1)."
    )
    parser.add_argument(
        "--window-training",
        nargs="+",
        default=["best", "all"],
        choices=list(WINDOW_TRAINING),
        help="With --windows: long_documents.train_windows, one row each.",
    )
    parser.add_argument("--row-timeout", type=int, default=3600, help="Seconds a row may take.")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/rerankit-bench/llm_memory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--build", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.build:
        build_checkpoint(args.build, args.folder)
        return
    if args.row:
        args.window_training = args.window_training[0]  # a row runs one
        print(json.dumps(measure_row(args.folder, args.row, args)))
        return
    rows = []
    for size in args.sizes:
        folder = args.cache / size
        if not (folder / "config.json").exists():
            print(f"building random {size} ...", flush=True)
            subprocess.run([sys.executable, __file__, "--build", size, "--folder", str(folder)], check=True)
        for mode in args.modes:
            for training in args.window_training if args.windows > 1 else ["all"]:
                print(f"{size} {MODES[mode]} {training if args.windows > 1 else ''} ...", flush=True)
                rows.append(
                    run_row(
                        size, mode, folder, argparse.Namespace(**{**vars(args), "window_training": training})
                    )
                )
                print("  ", rows[-1], flush=True)
                write_results(rows, args, args.out)


if __name__ == "__main__":
    main()
