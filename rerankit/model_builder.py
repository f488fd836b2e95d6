"""Backbone, quantization and LoRA: everything that builds the model that trains.

transformers' ``AutoModelForSequenceClassification(num_labels=1)`` gives the cross-encoder
(a score head over an encoder or a decoder LLM), bitsandbytes quantizes the frozen base
(QLoRA: 4-bit NF4 with double quantization), and peft adds the LoRA adapters. The score
head (and, by default, BERT's pooler) is trained in full through ``modules_to_save`` and is
therefore saved with the adapter.

A decoder scored by yes/no (``model.head: yes_no``) gets the head ``W[yes] − W[no]`` of its LM
head (``prompts.answer_head_weight``), saved with the adapter too but frozen: the model stays
the causal LM it was, so its export scores the same as a causal LM and as a classifier. A
decoder checkpoint saved as a sequence classifier (``…ForSequenceClassification``, the
converted rerankers users fine-tune) keeps its own trained score head under ``head: auto``.

The attention kernel is ``model.attn_implementation`` (``attention_implementation``):
flash-attention 2 where it can run, else sdpa.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerankit.encoding import check_template
from rerankit.errors import ModelLoadError, require
from rerankit.loading import bf16_is_native, load_tokenizer, resolve_model_path, torch_dtype
from rerankit.prompts import (
    PromptTemplate,
    answer_head_weight,
    is_decoder,
    resolve_head,
    resolve_prompt,
    set_answer_head,
)

log = logging.getLogger(__name__)

# LoRA targets per architecture (leaf module names); anything else: every linear layer.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("query", "key", "value", "dense"),
    "roberta": ("query", "key", "value", "dense"),
    "xlm-roberta": ("query", "key", "value", "dense"),
    "electra": ("query", "key", "value", "dense"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "dense"),
    "modernbert": ("Wqkv", "Wo", "Wi"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "mistral": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen3": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gemma": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
}
# The new score head of a sequence-classification model, by attribute name.
HEAD_NAMES = ("classifier", "score")
# Poolers between the backbone and the head (BERT-like models).
POOLER_NAMES = ("pooler",)


def head_module_names(model) -> list[str]:
    """Names of the score-head modules of a sequence-classification model."""
    children = dict(model.named_children())
    return [n for n in HEAD_NAMES if n in children]


def pooler_module_names(model) -> list[str]:
    return sorted(
        {
            name.split(".")[-1]
            for name, module in model.named_modules()
            if name.split(".")[-1] in POOLER_NAMES and module is not None
        }
    )


def lora_target_modules(model, model_type: str, exclude: Sequence[str]) -> list[str]:
    """Full names of the linear layers that get LoRA, outside the head and pooler."""
    import torch

    wanted = DEFAULT_TARGETS.get(model_type)
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = name.split(".")
        if any(p in exclude for p in parts):
            continue
        if wanted is None or parts[-1] in wanted:
            targets.append(name)
    if not targets:
        raise ModelLoadError(
            f"no linear layer to put LoRA on in a {model_type!r} model; set lora.target_modules in the config"
        )
    return targets


def quantization_config(
    mode: str,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: str = "bfloat16",
    skip_modules: Sequence[str] = (),
):
    """bitsandbytes settings for transformers, or None for a full-precision base."""
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    require("bitsandbytes", "train")

    # The head and pooler stay in full precision: bitsandbytes' Linear4bit cannot run them
    # (the forward pass fails), and they train in full anyway.
    skip = list(skip_modules)
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype),
        llm_int8_skip_modules=skip,
    )


def keep_training_layout(model) -> None:
    """Keep bitsandbytes' 4-bit CPU layers in the layout (and kernel) they train with.

    bitsandbytes repacks 4-bit weights for a faster, lower-precision CPU inference kernel the
    first time a layer runs in eval mode without grad (our validation); a later training step
    on the repacked weights fails ("a view of a leaf Variable ... in-place"), and scores from
    the two kernels differ by ~1e-3. A model that trains keeps one layout throughout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@dataclass
class BuiltModel:
    model: Any  # a peft PeftModel (LoRA) or the plain transformers model
    tokenizer: Any
    base_path: str  # resolved path or hub id of the backbone
    modules_to_save: list[str]
    target_modules: list[str]
    prompt: PromptTemplate | None = None  # the decoder's template; None: the pair encoding
    head: str = "seq_cls"  # seq_cls or yes_no
    gradient_checkpointing: bool = False


def training_device(config) -> str:
    """ "cuda" when a GPU is there and not refused (training.use_cpu), else "cpu"."""
    import torch

    return "cpu" if config.training.use_cpu or not torch.cuda.is_available() else "cuda"


def training_precision(config) -> str:
    """fp32, bf16 or fp16; ``auto``: bf16 where the hardware runs it natively (CUDA,
    AVX512-BF16/AMX CPUs), fp32 elsewhere (emulated bf16 is many times slower than fp32)."""
    wanted = config.training.precision
    if wanted == "auto":
        return "bf16" if bf16_is_native(training_device(config)) else "fp32"
    return wanted


def attention_implementation(config, hf_config) -> str | None:
    """The ``attn_implementation`` to load the model with (None: transformers' default, sdpa
    where the architecture has it).

    ``auto``: flash-attention 2 for a decoder trained in bf16/fp16 on a GPU when the flash-attn
    package is installed. An explicit ``flash_attention_2`` that cannot run here falls back to
    sdpa, with the reason logged.
    """
    from transformers.utils import is_flash_attn_2_available

    wanted = config.model.attn_implementation
    if wanted in ("sdpa", "eager"):
        return wanted
    precision = training_precision(config)
    reasons = []
    if training_device(config) != "cuda":
        reasons.append("training runs on the CPU")
    if precision not in ("bf16", "fp16"):
        reasons.append(f"training precision is {precision}; flash-attention runs bf16 or fp16")
    if not is_flash_attn_2_available():
        reasons.append("the flash-attn package is not installed (or not for this GPU)")
    if wanted == "auto":
        return "flash_attention_2" if is_decoder(hf_config) and not reasons else None
    if reasons:
        log.warning("model.attn_implementation flash_attention_2 falls back to sdpa: %s", "; ".join(reasons))
        return "sdpa"
    return "flash_attention_2"


def wants_gradient_checkpointing(config, hf_config) -> bool:
    """The config's choice; ``auto``: on for decoder LLMs, whose activations dominate memory."""
    wanted = config.training.gradient_checkpointing
    return is_decoder(hf_config) if wanted == "auto" else bool(wanted)


def build_model(config) -> BuiltModel:
    """Build the trainable cross-encoder described by a TrainConfig."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    mcfg, qcfg, lcfg = config.model, config.quantization, config.lora
    path = resolve_model_path(mcfg.name_or_path)
    kwargs = dict(trust_remote_code=mcfg.trust_remote_code, revision=mcfg.revision)
    try:
        hf_config = AutoConfig.from_pretrained(path, num_labels=1, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model config of {mcfg.name_or_path!r}: {exc}") from exc
    tokenizer = load_tokenizer(path, mcfg.trust_remote_code, mcfg.revision)
    try:
        prompt = resolve_prompt(mcfg.prompt, hf_config, tokenizer)
    except ValueError as exc:
        raise ModelLoadError(f"model.prompt: {exc}") from None
    check_template(tokenizer, prompt)
    head = resolve_head(mcfg.head, hf_config, prompt)
    checkpointing = wants_gradient_checkpointing(config, hf_config)
    if hf_config.pad_token_id is None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    vocab_size = getattr(hf_config, "vocab_size", None)
    if vocab_size is not None and hf_config.pad_token_id is not None and hf_config.pad_token_id >= vocab_size:
        raise ModelLoadError(
            f"{mcfg.name_or_path!r}: the pad token id {hf_config.pad_token_id} is outside the "
            f"model's {vocab_size} embeddings; the tokenizer does not match the model"
        )
    if mcfg.dropout is not None:
        for name, value in hf_config.to_dict().items():
            if "dropout" in name and isinstance(value, float):
                setattr(hf_config, name, mcfg.dropout)

    # transformers matches these as a prefix, a suffix or a regex from the start of the name.
    skip = [*HEAD_NAMES, *(f".*{name}" for name in POOLER_NAMES), *lcfg.modules_to_save]
    compute_dtype = qcfg.compute_dtype
    if compute_dtype == "auto":
        compute_dtype = "bfloat16" if bf16_is_native(training_device(config)) else "float32"
    quant = quantization_config(qcfg.mode, qcfg.quant_type, qcfg.double_quant, compute_dtype, skip)
    # LoRA under bf16 keeps its frozen base in bf16 (half the memory; peft keeps the adapter
    # weights in fp32). The Trainer does not move a bitsandbytes model, so a quantized one is
    # loaded onto its GPU.
    half_base = quant is None and lcfg.enabled and training_precision(config) == "bf16"
    device = training_device(config)
    placement = {"device_map": {"": _local_gpu()}} if quant is not None and device == "cuda" else {}
    attention = attention_implementation(config, hf_config)
    if attention is not None:
        placement["attn_implementation"] = attention
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            config=hf_config,
            quantization_config=quant,
            dtype=torch.bfloat16 if half_base else torch.float32,
            **placement,
            **kwargs,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {mcfg.name_or_path!r}: {exc}") from exc
    if head == "yes_no":
        if prompt is None:
            raise ModelLoadError("model.head yes_no needs a prompt template (model.prompt.template)")
        set_answer_head(model, answer_head_weight(model, path, hf_config, tokenizer, prompt))

    modules_to_save = head_module_names(model)
    if lcfg.train_pooler:
        modules_to_save += pooler_module_names(model)
    modules_to_save += [m for m in lcfg.modules_to_save if m not in modules_to_save]
    extras = dict(prompt=prompt, head=head, gradient_checkpointing=checkpointing)
    if not lcfg.enabled:
        if head == "yes_no":
            freeze_answer_head(model)
            if getattr(hf_config, "tie_word_embeddings", False):
                # The LM head is the input embeddings: they stay as they were, so the causal
                # LM's logit(yes) - logit(no) keeps equal to the frozen head.
                model.get_input_embeddings().weight.requires_grad_(False)
        return BuiltModel(model, tokenizer, path, modules_to_save, [], **extras)

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quant is not None:
        keep_training_layout(model)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    targets = (
        lora_target_modules(model, hf_config.model_type, exclude=modules_to_save)
        if lcfg.target_modules == "auto"
        else list(lcfg.target_modules)
    )
    peft_config = LoraConfig(
        r=lcfg.r,
        lora_alpha=lcfg.alpha,
        lora_dropout=lcfg.dropout,
        target_modules=targets,
        modules_to_save=list(modules_to_save),
        task_type="SEQ_CLS",
    )
    model = get_peft_model(model, peft_config)
    if head == "yes_no":
        freeze_answer_head(model)
    return BuiltModel(model, tokenizer, path, modules_to_save, targets, **extras)


def _local_gpu() -> int:
    """This process's GPU (one per process under torchrun/accelerate)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def freeze_answer_head(model) -> None:
    """The yes/no head stays ``W[yes] − W[no]``: LoRA adapts the body, the answer is fixed."""
    for name, param in model.named_parameters():
        if any(part in HEAD_NAMES for part in name.split(".")):
            param.requires_grad_(False)
