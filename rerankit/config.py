"""The training config: one YAML file, typed and validated by pydantic.

Every section is a pydantic model that forbids unknown keys, so a misspelled key is an
error naming its key path and the closest valid name. ``load_config`` reads a YAML file,
applies ``--set a.b=c`` style overrides and returns a :class:`TrainConfig`;
``config_hash`` gives a stable short hash of the resolved values.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rerankit import safe_yaml
from rerankit.errors import ConfigError


class _Section(BaseModel):
    # Unknown keys are errors; so are inf and NaN, which would train a model that scores NaN.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class LongDocumentsConfig(_Section):
    """How documents longer than the pair's window are scored (see rerankit.windows)."""

    # truncate: the first window only; windows: every window, aggregated.
    mode: Literal["truncate", "windows"] = "truncate"
    # Document tokens per window; null: what the query and special tokens leave of max_length.
    window: int | None = Field(None, ge=8)
    # Where windows are cut: boundaries (whole paragraphs, then whole sentences, that fit the
    # window) or tokens (every window - stride tokens, wherever they fall).
    cut: Literal["boundaries", "tokens"] = "boundaries"
    # Tokens shared by consecutive windows (within a paragraph longer than a window, with cut:
    # boundaries).
    stride: int = Field(32, ge=0)
    # max (MaxP), first (FirstP), mean, or max+first (their mean).
    aggregate: Literal["max", "first", "mean", "max+first"] = "max"
    # Windows per document at most; what lies beyond them is not read.
    max_windows: int = Field(8, ge=1, le=1024)
    # Training by windows (mode: windows): best picks each document's best window without
    # gradients and back-propagates through that one only (and the first, for max+first);
    # all runs every window with gradients (what mean needs). Inference is unaffected.
    train_windows: Literal["best", "all"] = "best"
    # Windows one training step reads at most: documents keep their first windows, taken in
    # turn (each keeps its first, even past the cap). null: no cap.
    max_windows_per_step: int | None = Field(None, ge=1)


class PromptConfig(_Section):
    """How a pair is written for a decoder LLM (see rerankit.prompts)."""

    # auto: none for encoders; for decoders qwen3 when the tokenizer has ChatML tokens, else plain.
    # bge_gemma: bge-reranker-v2-gemma's layout, scored by the logit of "Yes" alone.
    template: Literal["auto", "none", "qwen3", "bge_gemma", "plain", "custom"] = "auto"
    # The default task in words (qwen3's <Instruct>); a record's or a call's own instruction wins.
    # null keeps the preset's.
    instruction: str | None = None
    # custom only: text before the body.
    prefix: str = ""
    # custom only: the pair's text ({query} once, {instruction} optional, {document} last).
    body: str = "Query: {query}\nDocument: {document}"
    # custom only: text after the document, where the answer is read ({instruction} optional).
    suffix: str = ""
    # Answer word of yes/no scoring for a relevant document (one token); null keeps the preset's.
    yes: str | None = None
    # Answer word for an irrelevant document (one token); null keeps the preset's; "" scores by
    # the logit of yes alone.
    no: str | None = None

    @model_validator(mode="after")
    def _body_has_its_fields(self) -> PromptConfig:
        if not self.body.endswith("{document}") or self.body.count("{document}") != 1:
            raise ValueError("body must end with {document} (and hold it once)")
        if self.body.count("{query}") != 1:
            raise ValueError("body must hold {query} once")
        return self


class ModelConfig(_Section):
    # Hub id or local path; the hub id of all-MiniLM-L6-v2 resolves to the packaged copy.
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Hub revision (branch, tag or commit) of name_or_path; null: the default branch.
    revision: str | None = None
    # Longest (query, document) pair in tokens; the document is truncated, never the query.
    max_length: int = Field(256, ge=8)
    # Never run model code from the hub unless the user says so.
    trust_remote_code: bool = False
    # Override every dropout probability of the backbone (hidden, attention); null keeps the
    # checkpoint's. 0 trains faster on CPU: attention without dropout runs the fused SDPA kernel.
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    # Documents longer than the window: truncated (default) or scored by windows at inference
    # (Reranker, rerankit eval, the server and the adapters read it from the run folder).
    long_documents: LongDocumentsConfig = Field(default_factory=LongDocumentsConfig)
    # The prompt template of decoder LLMs (encoders keep their pair encoding).
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    # seq_cls: a new score head on the last token; yes_no: logit("yes") - logit("no") of the LM
    # head (kept frozen, so the model stays a causal LM); auto: yes_no for decoders with a template.
    # A …ForSequenceClassification checkpoint keeps its own trained score head under auto.
    head: Literal["auto", "seq_cls", "yes_no"] = "auto"
    # Attention kernel: auto is flash_attention_2 for a decoder trained in bf16/fp16 on a GPU
    # when the flash-attn package is installed, else sdpa (transformers' default). An explicit
    # flash_attention_2 that cannot run falls back to sdpa with the reason logged.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Write each document's first-stage score into the input (rerankit.score_injection): every
    # document of the training and validation files needs its "score" (rerankit mine
    # --teacher-scores), and the trained model ranks only with the first stage's scores given.
    score_injection: bool = False


class QuantizationConfig(_Section):
    # none: full-precision base; 4bit: QLoRA (bitsandbytes NF4/FP4); 8bit: LLM.int8.
    mode: Literal["none", "4bit", "8bit"] = "4bit"
    # 4-bit data type: NF4 (QLoRA's normal float) or FP4.
    quant_type: Literal["nf4", "fp4"] = "nf4"
    # Quantize the quantization constants too (QLoRA's double quantization): less memory.
    double_quant: bool = True
    # dtype the 4-bit weights are dequantized to for the matmul; auto: bfloat16 where the
    # hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs), else float32.
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoraConfig(_Section):
    # false trains every weight of the backbone (no adapter); quantization needs LoRA.
    enabled: bool = True
    # Rank of each adapter (the inner size of its two low-rank matrices).
    r: int = Field(16, ge=1)
    # Scaling: the adapter's update is multiplied by alpha / r.
    alpha: int = Field(32, ge=1)
    # Dropout on the adapters' input.
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # "auto" picks the linear layers per architecture (see model_builder.DEFAULT_TARGETS).
    target_modules: Literal["auto"] | list[str] = "auto"
    # Train BERT's pooler too: bi-encoder checkpoints never tuned it for classification.
    train_pooler: bool = True
    # Extra modules trained in full and saved with the adapter (the score head always is).
    modules_to_save: list[str] = Field(default_factory=list)


class DataConfig(_Section):
    # Training data: JSONL, one query per line with its positives and negatives.
    train: str
    # A given validation file wins over valid_ratio.
    valid: str | None = None
    # Share of the queries held out for validation when no valid file is given.
    valid_ratio: float = Field(0.1, gt=0.0, lt=1.0)
    # Keep every line of a query (or also of a source chunk) on one side of the split.
    group_by: Literal["query", "source_chunk"] = "query"
    # raise: stop at the first bad line; skip: leave bad lines out and report the count.
    on_error: Literal["raise", "skip"] = "raise"
    # Characters kept of a document's text (longer ones are cut and counted in the report).
    max_document_chars: int = Field(100_000, ge=100)
    # Cap on validation queries (first N after a seeded shuffle); null keeps them all.
    max_valid_queries: int | None = Field(None, ge=1)
    # The corpus the reranker will search (JSONL {_id, text, title?} or {doc_id, text}):
    # validation ranks the first stage's top-k of it. null: the training and validation
    # documents stand in for it.
    corpus: str | None = None


class SamplingConfig(_Section):
    # Negatives per query and epoch, re-drawn every epoch.
    num_negatives: int = Field(7, ge=1)
    # Share of them taken from the line's mined hard negatives; the rest are random
    # documents of other queries.
    hard_ratio: float = Field(0.75, ge=0.0, le=1.0)
    # Positives per query and epoch (all of them when the query has fewer).
    max_positives: int = Field(4, ge=1)


class LossConfig(_Section):
    # margin: pairwise hinge over every positive x negative; ranknet: softplus of their difference;
    # listwise: softmax cross-entropy in which positives do not compete; bce: per pair, pos_weight.
    name: Literal["margin", "ranknet", "listwise", "bce"] = "margin"
    # margin: hinge margin between a positive and a negative score.
    margin: float = Field(1.0, ge=0.0)
    # listwise/ranknet: scores are divided by it before softmax/softplus.
    temperature: float = Field(1.0, gt=0.0)
    # bce: weight of positive pairs; null uses negatives/positives of the group shape.
    pos_weight: float | None = Field(None, gt=0.0)
    # Distillation towards the documents' teacher "score" in the data, added to the ranking loss:
    # kl (per-query softmax of standardized teacher scores; any scale) or margin_mse (the
    # teacher's score differences as they are: a teacher on the model's logit scale).
    distillation: Literal["none", "kl", "margin_mse"] = "none"
    # Weight of the distillation term added to the ranking loss.
    distillation_weight: float = Field(1.0, ge=0.0)
    # kl: the standardized teacher scores are divided by it (< 1 sharpens, > 1 flattens).
    teacher_temperature: float = Field(1.0, gt=0.0)
    # ensemble: the ranking loss reads each pair's logit fused with the self-ensemble's untrained
    # signals at equal weights (rerankit.complement), for the cross-encoder to learn what they miss;
    # on the quality benchmark it lowered the shipped ensemble. none: the logit alone.
    complement: Literal["none", "ensemble"] = "none"


class TrainingConfig(_Section):
    # Passes over the training queries (a fraction stops part-way).
    epochs: float = Field(2, gt=0, le=10_000)
    # Queries per device batch; each brings its positives and negatives.
    batch_size: int = Field(8, ge=1)
    # Batches whose gradients add up before each optimizer step.
    gradient_accumulation_steps: int = Field(1, ge=1)
    # Peak learning rate of the LoRA weights (of every weight without LoRA).
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    # Learning rate of the fully trained modules (score head, pooler); null = learning_rate.
    head_learning_rate: float | None = Field(None, gt=0, le=1.0)
    # AdamW weight decay.
    weight_decay: float = Field(0.0, ge=0)
    # Share of the optimizer steps over which the learning rate rises to its peak.
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    # Share of the optimizer steps in which only the fully trained modules (score head, pooler)
    # learn, before the LoRA weights (every other weight without LoRA) start: linear probing,
    # then fine-tuning, so the first gradients through a random head do not reshape the
    # backbone's features.
    head_warmup_ratio: float = Field(0.0, ge=0, lt=1)
    # Learning-rate schedule after the warm-up (transformers' schedulers).
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    # Gradients are clipped to this norm.
    max_grad_norm: float = Field(1.0, gt=0)
    # auto: bf16 autocast on CUDA GPUs with bf16 and on CPUs with AVX512-BF16/AMX, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Recompute activations in the backward pass: less memory, ~30 % more time; auto: on for
    # decoder LLMs, off for encoders.
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    # adamw (torch); adamw_8bit, paged_adamw_8bit, paged_adamw_32bit: bitsandbytes' optimizers
    # (8-bit states; paged ones move to CPU memory under GPU memory pressure; CUDA only).
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw"
    # Log the loss every N optimizer steps.
    logging_steps: int = Field(10, ge=1)
    # Checkpoints kept for --resume (the best one is always kept).
    save_total_limit: int = Field(2, ge=1)
    # Stop after this many evaluations without improvement; null never stops early.
    early_stopping_patience: int | None = Field(None, ge=1)
    # Processes that collate batches; 0 collates in the training process.
    dataloader_num_workers: int = Field(0, ge=0)
    # Trainer integrations to log to ("tensorboard", "wandb", ...); [] for none.
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    # Force the CPU even where a GPU is present.
    use_cpu: bool = False
    # Multi-GPU sharding by the Trainer's FSDP, under torchrun or accelerate launch
    # (configs/llm_fsdp.yaml): true (or the Trainer's older strings such as "full_shard"). Not with
    # deepspeed, and on a full-precision base (quantization.mode: none).
    fsdp: bool | str | None = None
    # The Trainer's fsdp_config: a mapping (transformer_layer_cls_to_wrap, ...) or a JSON file.
    fsdp_config: dict[str, Any] | str | None = None
    # Sharding by DeepSpeed instead (the Trainer's deepspeed): a DeepSpeed JSON file or a mapping
    # (ZeRO stage 2 or 3), on a full-precision base.
    deepspeed: dict[str, Any] | str | None = None

    @model_validator(mode="after")
    def _one_sharding(self) -> TrainingConfig:
        if self.fsdp and self.deepspeed:
            raise ValueError("fsdp and deepspeed are both set: choose one way to shard")
        if self.fsdp_config is not None and not self.fsdp:
            raise ValueError("fsdp_config is set but fsdp is not: set fsdp: true too")
        return self


class EvaluationConfig(_Section):
    # Evaluate every N optimizer steps; null evaluates once per epoch.
    eval_steps: int | None = Field(None, ge=1)
    # Pairs scored per forward pass during evaluation.
    batch_size: int = Field(64, ge=1)
    # Cut-off of Recall@k (NDCG@10 and MRR@10 are always reported).
    recall_at: int = Field(10, ge=1)
    # Metric that picks the best checkpoint.
    metric_for_best: Literal["ndcg@10", "mrr@10", "map", "recall", "pairwise_accuracy"] = "ndcg@10"
    # deployed: each validation query is ranked over the first stage's real top `depth` of the
    # corpus (data.corpus), as it will be served; given: over its own positives and negatives.
    candidates: Literal["deployed", "given"] = "deployed"
    # The first stage of deployed validation: BM25, the backbone's embeddings, or their fusion.
    first_stage: Literal["bm25", "dense", "hybrid"] = "bm25"
    # How deep the reranker reads it: each validation query's candidates are its top `depth`.
    depth: int = Field(30, ge=2, le=1000)


class AdaptationConfig(_Section):
    """Corpus adaptation (rerankit.adaptation): inverse-cloze pseudo-queries built from the
    user's unlabelled passages train beside the labelled queries."""

    # JSONL corpus ({_id, text, title?} or {doc_id, text}); null: no adaptation.
    corpus: str | None = None
    # Inverse-cloze queries per passage (each a different sentence of it).
    per_passage: int = Field(1, ge=1)
    # Cap on pseudo-queries (a seeded draw); with ratio too, the smaller cap applies.
    max_queries: int | None = Field(None, ge=1)
    # Cap as a multiple of the labelled training queries (each pseudo-query costs a labelled
    # query's training time).
    ratio: float | None = Field(None, gt=0.0)
    # Cut the query's sentence out of its positive, so the match is by context, not by copy.
    remove_sentence: bool = True
    # First stage that mines the pseudo-queries' negatives over the corpus.
    mining: Literal["bm25", "dense", "hybrid"] = "bm25"
    # Negatives mined per pseudo-query.
    num_negatives: int = Field(15, ge=1)


class OutputConfig(_Section):
    # The run folder (rerankit train --output-dir and fit(output_dir=...) override it).
    dir: str = "outputs/run"


class TrainConfig(_Section):
    # Seeds the split, every epoch's draw of negatives and the Trainer (LoRA init, data order).
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    # auto: fit the self-ensemble (rerankit.ensemble) of the cross-encoder with BM25 and the
    # backbone's embedding cosine on deployed validation, and ship it; none: the cross-encoder alone.
    ensemble: Literal["auto", "none"] = "auto"
    # How the self-ensemble puts its signals on one scale: zscore (each signal's mean and spread over
    # the validation pairs) or rank_gauss (normal scores of its validation quantiles, which keeps a
    # skewed signal such as BM25 from outweighing the others at the top of a list;
    # benchmarks/results/quality_ablations.md, row 30).
    ensemble_normalization: Literal["zscore", "rank_gauss"] = "zscore"
    # auto: at the end of training, where OpenVINO or ONNX Runtime is installed, write the merged
    # encoder's CPU graphs (fp32, bf16 where the CPU has it, int8) into the run folder, each gated
    # on validation (rerankit.run_graphs), so Reranker.load(run) serves the fastest; none: torch.
    graphs: Literal["auto", "none"] = "auto"
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _sharding_needs_full_precision(self) -> TrainConfig:
        sharded = "fsdp" if self.training.fsdp else "deepspeed" if self.training.deepspeed else None
        if sharded and self.quantization.mode != "none":
            raise ValueError(
                f"training.{sharded} shards a full-precision base, but quantization.mode is "
                f"'{self.quantization.mode}'; set quantization.mode: none"
            )
        return self

    @model_validator(mode="after")
    def _complement_needs_the_ensemble(self) -> TrainConfig:
        if self.loss.complement != "none" and self.ensemble == "none":
            raise ValueError(
                "loss.complement trains the cross-encoder to be fused with the self-ensemble's signals, "
                "but ensemble is 'none': the model would ship without them; set ensemble: auto"
            )
        return self

    @model_validator(mode="after")
    def _quantization_needs_lora(self) -> TrainConfig:
        if self.quantization.mode != "none" and not self.lora.enabled:
            raise ValueError(
                f"quantization.mode is '{self.quantization.mode}' but lora.enabled is false: quantized "
                "weights cannot be trained directly; enable LoRA or set quantization.mode: none"
            )
        return self


def _known_keys(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Valid key names at ``path`` inside ``model`` (for 'did you mean' hints)."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(str(p) for p in error["loc"])
    key = ".".join(loc) or "<config>"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(TrainConfig, loc[:-1]), n=1)
        hint = f" (did you mean '{'.'.join(loc[:-1] + (close[0],))}'?)" if close else ""
        return f"{key}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})"


def validate_config(raw: Mapping[str, Any], source: str = "<config>") -> TrainConfig:
    """Validate a plain mapping; raise ConfigError listing every problem by key path."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(dict(raw))
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{source}: invalid config\n  {lines}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'training.epochs=2'`` -> (['training', 'epochs'], 2); the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected KEY.PATH=VALUE")
    try:
        value = safe_yaml.load(text)
    except (yaml.YAMLError, safe_yaml.YAMLTooLargeError) as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(exc)})") from None
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; a number is meant.
        with contextlib.suppress(ValueError):
            value = float(value)
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``{'training.epochs': 2}``) in a nested dict, returning a copy."""
    result = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: '{part}' is not a section")
            node = child
        node[leaf] = value
    return result


def _yaml_problem(exc: Exception) -> str:
    return str(getattr(exc, "problem", None) or exc)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        raw = safe_yaml.load(text) or {}
    except (yaml.YAMLError, safe_yaml.YAMLTooLargeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(
    source: str | Path | Mapping[str, Any] | TrainConfig, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a config (YAML path, mapping or TrainConfig) and apply dotted overrides.

    Relative data and corpus paths in a YAML file are resolved against the current directory first
    and, when they do not exist there, against the config file's folder.
    """
    if not isinstance(source, (str, Path, Mapping, TrainConfig)):
        raise ConfigError(
            f"config must be a YAML path, a mapping or a TrainConfig, got {type(source).__name__}"
        )
    if isinstance(source, TrainConfig):
        raw, name, base = source.model_dump(), "<config>", None
    elif isinstance(source, Mapping):
        raw, name, base = dict(source), "<config>", None
    else:
        raw, name, base = read_yaml(source), str(source), Path(source).resolve().parent
    config = validate_config(apply_overrides(raw, overrides or {}), name)
    if base is not None:
        for section, field in (("data", "train"), ("data", "valid"), ("adaptation", "corpus")):
            value = getattr(getattr(config, section), field)
            if (
                value
                and not Path(value).is_absolute()
                and not Path(value).exists()
                and (base / value).exists()
            ):
                setattr(getattr(config, section), field, str(base / value))
    return config


def config_hash(config: TrainConfig) -> str:
    """Short, stable hash of the resolved config (key order does not matter)."""
    payload = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
