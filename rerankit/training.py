"""Training: a thin ``transformers.Trainer`` subclass and ``fit()``, which drives a whole run.

The Trainer brings gradient accumulation, the LR schedule, mixed precision, checkpoints,
``--resume``, logging (TensorBoard, JSON log history, progress bars) and torchrun/accelerate
multi-process training. rerankit adds three things:

- ``compute_loss`` scores the flat pairs of a batch and lays them out as
  (queries × group size) for a ranking loss;
- ``evaluate`` ranks the fixed, full validation set and reports NDCG@10, MRR@10, MAP,
  Recall@k and pairwise accuracy (the Trainer keeps the best checkpoint by it);
- an epoch callback that re-seeds the negative sampler at each epoch start.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from rerankit import run_folder
from rerankit.adaptation import AdaptationReport, pseudo_query_records
from rerankit.collator import EpochGroupDataset, GroupCollator
from rerankit.config import TrainConfig, config_hash, load_config
from rerankit.data import require_scores
from rerankit.deployed import DeployedCorpus, deployed_validation
from rerankit.ensemble import ENCODER_GRAPH, ENSEMBLE_DIR
from rerankit.errors import ConfigError, DataError, RerankitError, require
from rerankit.files import read_json, write_json
from rerankit.fusion import LearnedFusion
from rerankit.losses import build_distillation, build_loss
from rerankit.model_builder import build_model, training_device, training_precision
from rerankit.report import write_curve, write_report
from rerankit.run_graphs import graph_backend, write_run_graphs
from rerankit.sampling import NegativeSampler
from rerankit.score_injection import ScoreInjection
from rerankit.shipped import fit_shipped, save_signals
from rerankit.split import load_split
from rerankit.validation import ValidationSet, Validator
from rerankit.windows import aggregate_tensor

log = logging.getLogger(__name__)


class EpochCallback(TrainerCallback):
    """Tells the dataset which epoch starts, so its negatives are re-drawn."""

    def __init__(self, dataset: EpochGroupDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        # state.epoch is fractional (and restored on resume); its floor is the epoch starting now.
        self.dataset.set_epoch(int(math.floor((state.epoch or 0.0) + 1e-6)))


class DivergenceCallback(TrainerCallback):
    """Stops training when a logged train loss is NaN or infinite.

    The Trainer logs the loss averaged over steps and processes, so every process of a
    torchrun job sees the same value and stops together; ``fit`` then raises. (Checking each
    step's loss instead would desynchronise processes and force a device sync per step.)
    """

    def __init__(self) -> None:
        self.diverged_at: tuple[int, float] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.diverged_at = (state.global_step, loss)
            control.should_training_stop = True


def optimizer_class(name: str):
    """torch's AdamW, or one of bitsandbytes' AdamW with 8-bit or paged states."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW
    bnb_optim = require("bitsandbytes.optim", "train")

    return {
        "adamw_8bit": bnb_optim.AdamW8bit,
        "paged_adamw_8bit": bnb_optim.PagedAdamW8bit,
        "paged_adamw_32bit": bnb_optim.PagedAdamW32bit,
    }[name]


def scored_windows(model, inputs: dict, owner, num_docs: int, how: str):
    """The rows of a batch of windows (``owner``: each window's document) that aggregate
    ``how`` reads, and their owners: each document's best window, picked by a pass without
    gradients (max), and its first (first), so that forward and backward run on one or two
    windows per document instead of all of them. ``mean`` reads every window."""
    import torch

    if how == "mean" or len(owner) == num_docs:  # every window read, or one per document
        return inputs, owner
    keep = torch.zeros(len(owner), dtype=torch.bool, device=owner.device)
    positions = torch.arange(len(owner), device=owner.device)
    if how in ("first", "max+first"):
        first = torch.full((num_docs,), len(owner), device=owner.device, dtype=torch.long)
        keep[first.scatter_reduce(0, owner, positions, reduce="amin", include_self=False)] = True
    if how in ("max", "max+first"):
        with torch.no_grad():
            scores = model(**inputs).logits.float().view(-1)
        best = scores.new_full((num_docs,), float("-inf"))
        best = best.scatter_reduce(0, owner, scores, reduce="amax", include_self=False)
        # the first window reaching its document's best (ties: the earliest)
        at_best = torch.where(scores == best[owner], positions, len(owner))
        chosen = torch.full((num_docs,), len(owner), device=owner.device, dtype=torch.long)
        keep[chosen.scatter_reduce(0, owner, at_best, reduce="amin", include_self=False)] = True
    rows = keep.nonzero().view(-1)
    needed = inputs["attention_mask"][rows].bool().any(dim=0)  # drop padding no kept row needs
    picked = {
        key: value[rows][:, needed] if value.dim() > 1 else value[rows] for key, value in inputs.items()
    }
    return picked, owner[rows]


class RerankTrainer(Trainer):
    """Trainer with a group ranking loss and full-validation-set ranking evaluation."""

    def __init__(
        self,
        *args,
        long_documents,
        loss_fn,
        validator: Validator,
        modules_to_save: list[str],
        head_learning_rate: float | None = None,
        head_warmup_ratio: float = 0.0,
        optimizer_name: str = "adamw",
        distillation=None,
        distillation_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Our loss is a mean over the batch's pairs: the Trainer must divide it by the
        # accumulation steps itself (it skips that for models that take loss kwargs).
        self.model_accepts_loss_kwargs = False
        self.loss_fn, self.validator = loss_fn, validator
        self.long_documents = long_documents
        self.modules_to_save, self.head_learning_rate = modules_to_save, head_learning_rate
        self.head_warmup_ratio = head_warmup_ratio
        self.optimizer_name = optimizer_name
        self.distillation, self.distillation_weight = distillation, distillation_weight
        # Validation scores per evaluated step: the kept model's are reused after training.
        self.scores_at: dict[int, Any] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("group_labels")  # [Q, G] 1 = positive, 0 = negative
        mask = inputs.pop("group_mask")  # [Q, G] True where a document sits
        slots = inputs.pop("pair_slots")  # [P] flat index of each pair in Q×G
        owner = inputs.pop("window_owner", None)  # [W] pair of each window (long documents)
        teacher = inputs.pop("group_teacher", None)  # [Q, G] teacher scores, where the data has them
        known = inputs.pop("group_teacher_mask", None)
        prior = inputs.pop("group_prior", None)  # [Q, G] the untrained signals (loss.complement)
        if owner is not None and self.long_documents.train_windows == "best":
            inputs, owner = scored_windows(model, inputs, owner, len(slots), self.long_documents.aggregate)
        outputs = model(**inputs)
        logits = outputs.logits.float().view(-1)  # [P] one score per pair, or [W] per window
        if owner is not None:  # a document's score is the aggregate of its windows' (MaxP)
            logits = aggregate_tensor(logits, owner, len(slots), self.long_documents.aggregate)
        scores = logits.new_zeros(mask.numel()).index_put((slots,), logits).view(mask.shape)
        ranked = scores
        if prior is not None:  # the ensemble's fused score, the signals at the logits' own spread
            spread = logits.detach().std(unbiased=False) if logits.numel() > 1 else logits.new_ones(())
            ranked = scores + spread.clamp_min(1e-6) * prior.to(scores)
        loss = self.loss_fn(ranked, labels, mask)  # distillation below reads the logits alone
        if self.distillation is not None and teacher is not None:
            loss = loss + self.distillation_weight * self.distillation(scores, teacher, known & mask, labels)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        start = time.perf_counter()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.validator.evaluate(self.model).items()}
        self.scores_at[self.state.global_step] = self.validator.last_scores
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 3)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def create_optimizer(self, model=None):
        """AdamW (torch's, or bitsandbytes' 8-bit/paged one); the fully trained modules (score
        head, pooler) may get their own LR."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        decay = set(self.get_decay_parameter_names(model))
        head_lr = self.head_learning_rate or self.args.learning_rate
        groups: dict[tuple[bool, bool], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                is_head = any(part in self.modules_to_save for part in name.split("."))
                groups.setdefault((is_head, name in decay), []).append(param)
        self.optimizer = optimizer_class(self.optimizer_name)(
            [
                {
                    "params": params,
                    "lr": head_lr if is_head else self.args.learning_rate,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "head": is_head,
                }
                for (is_head, decays), params in groups.items()
            ],
            lr=self.args.learning_rate,
        )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule; with ``head_warmup_ratio``, the groups other than the head's
        keep a learning rate of 0 for that share of the steps."""
        from torch.optim.lr_scheduler import LambdaLR

        scheduler = super().create_scheduler(num_training_steps, optimizer)
        held = int(self.head_warmup_ratio * num_training_steps)
        if held:
            if not isinstance(scheduler, LambdaLR):
                raise ConfigError(
                    f"training.head_warmup_ratio needs a LambdaLR schedule, got {type(scheduler).__name__}"
                )
            for i, group in enumerate(scheduler.optimizer.param_groups):
                if not group.get("head"):
                    rate = scheduler.lr_lambdas[i]
                    scheduler.lr_lambdas[i] = lambda step, rate=rate: rate(step) if step >= held else 0.0
                    group["lr"] = scheduler.base_lrs[i] * scheduler.lr_lambdas[i](scheduler.last_epoch)
        return scheduler


@dataclass
class FitResult:
    """What ``fit`` returns: where the run is and what it measured."""

    output_dir: Path
    metrics: dict[str, Any]
    config: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)
    # The trained (best) model as it is in memory, e.g. 4-bit base + adapter, and its tokenizer.
    model: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    # The template a decoder reads pairs through (rerankit.prompts); None: the pair encoding.
    prompt: Any = field(default=None, repr=False)

    @property
    def model_dir(self) -> Path:
        return self.output_dir / run_folder.MODEL_DIR


def _overrides_from_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``training={'epochs': 1}`` or ``training__epochs=1`` -> ``{'training.epochs': 1}``."""
    flat: dict[str, Any] = {}
    for key, value in kwargs.items():
        dotted = key.replace("__", ".")
        if isinstance(value, Mapping) and "." not in dotted:
            flat.update({f"{dotted}.{k}": v for k, v in value.items()})
        else:
            flat[dotted] = value
    return flat


def _precision(config: TrainConfig) -> dict[str, bool]:
    wanted = training_precision(config)
    return {"bf16": wanted == "bf16", "fp16": wanted == "fp16"}


def training_arguments(
    config: TrainConfig, output_dir: Path, gradient_checkpointing: bool = False
) -> TrainingArguments:
    """The Trainer's arguments; ``gradient_checkpointing`` as resolved for the model
    (``model_builder.wants_gradient_checkpointing``; a quantized model has it from peft)."""
    tcfg, ecfg = config.training, config.evaluation
    strategy = "steps" if ecfg.eval_steps else "epoch"
    return TrainingArguments(
        # progress bars stay on when the CLI quiets transformers' logging (the Trainer would
        # otherwise take a quiet logger as a request for no bars)
        disable_tqdm=False,
        output_dir=str(output_dir / run_folder.CHECKPOINTS_DIR),
        num_train_epochs=tcfg.epochs,
        per_device_train_batch_size=tcfg.batch_size,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        learning_rate=tcfg.learning_rate,
        weight_decay=tcfg.weight_decay,
        warmup_steps=tcfg.warmup_ratio if tcfg.warmup_ratio < 1 else 0.999,
        lr_scheduler_type=tcfg.scheduler,
        max_grad_norm=tcfg.max_grad_norm,
        logging_steps=tcfg.logging_steps,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=ecfg.eval_steps,
        save_steps=ecfg.eval_steps,
        save_total_limit=tcfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{_metric_key(config)}",
        greater_is_better=True,
        report_to=tcfg.report_to,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=training_device(config) == "cpu",
        **_checkpointing(gradient_checkpointing and config.quantization.mode == "none"),
        remove_unused_columns=False,
        dataloader_num_workers=tcfg.dataloader_num_workers,
        dataloader_pin_memory=False,
        **_precision(config),
        **sharding_arguments(config),
    )


def sharding_arguments(config: TrainConfig) -> dict[str, Any]:
    """The Trainer's FSDP or DeepSpeed options the config sets (none when it sets neither)."""
    tcfg = config.training
    names = ("fsdp", "fsdp_config", "deepspeed")
    return {name: getattr(tcfg, name) for name in names if getattr(tcfg, name) is not None}


def _checkpointing(on: bool) -> dict[str, Any]:
    """TrainingArguments' activation (gradient) checkpointing, under the name this transformers
    has (it renamed gradient_* to activation_*). Non-reentrant: it needs no input that requires
    grad, and LoRA freezes the embeddings."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {f"{prefix}_checkpointing": on, f"{prefix}_checkpointing_kwargs": {"use_reentrant": False}}


def _metric_key(config: TrainConfig) -> str:
    name = config.evaluation.metric_for_best
    return f"recall@{config.evaluation.recall_at}" if name == "recall" else name


def _make_trainer(cfg: TrainConfig, out: Path, built, dataset, vset, validator, callbacks):
    return RerankTrainer(
        model=built.model,
        args=training_arguments(cfg, out, built.gradient_checkpointing),
        train_dataset=dataset,
        eval_dataset=vset,  # scored by the validator; given so the Trainer schedules evaluations
        data_collator=GroupCollator(
            built.tokenizer,
            cfg.model.max_length,
            cfg.model.long_documents,
            built.prompt,
            validator.score_injection,
        ),
        callbacks=callbacks,
        long_documents=cfg.model.long_documents,
        loss_fn=build_loss(
            cfg.loss.name,
            margin=cfg.loss.margin,
            temperature=cfg.loss.temperature,
            pos_weight=cfg.loss.pos_weight,
        ),
        validator=validator,
        modules_to_save=built.modules_to_save,
        head_learning_rate=cfg.training.head_learning_rate,
        head_warmup_ratio=cfg.training.head_warmup_ratio,
        optimizer_name=cfg.training.optimizer,
        distillation=build_distillation(cfg.loss.distillation, cfg.loss.teacher_temperature),
        distillation_weight=cfg.loss.distillation_weight,
    )


# What every run imports ([train] extra): metrics, the calibration's fit, the training curve.
TRAINING_MODULES = ("ir_measures", "sklearn", "matplotlib")


def require_training_extras(cfg: TrainConfig) -> None:
    """MissingExtraError naming ``rerankit[train]`` before any work, when a module this run
    will need is not installed (rather than after training, at the first that needs it)."""
    needed = list(TRAINING_MODULES)
    if cfg.quantization.mode != "none" or cfg.training.optimizer != "adamw":
        needed.append("bitsandbytes")
    if "tensorboard" in cfg.training.report_to:
        needed.append("tensorboard")
    first_stages = [cfg.evaluation.first_stage] if cfg.evaluation.candidates == "deployed" else []
    first_stages += [cfg.adaptation.mining] if cfg.adaptation.corpus else []
    if any(stage != "bm25" for stage in first_stages):  # dense and hybrid embed with it
        needed.append("sentence_transformers")
    for module in needed:
        require(module, "train")


def fit(
    config: str | Path | Mapping[str, Any] | TrainConfig,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> FitResult:
    """Train a reranker from a config and write a run folder.

    ``config`` is a YAML path, a mapping or a TrainConfig. Overrides come as dotted keys
    (``overrides={"training.epochs": 1}``) or keywords (``training={"epochs": 1}``,
    ``training__epochs=1``). ``resume`` continues from the newest checkpoint of the run
    folder; ``overwrite`` replaces a finished run there.
    """
    all_overrides = {**(overrides or {}), **_overrides_from_kwargs(kwargs)}
    if output_dir is not None:
        all_overrides["output.dir"] = str(output_dir)
    cfg = load_config(config, all_overrides)
    require_training_extras(cfg)
    out = Path(cfg.output.dir)
    digest = config_hash(cfg)
    started = time.perf_counter()
    # Config and data are checked before the run folder is touched, so a bad run never
    # deletes or clobbers a good one.
    train, valid, reports = load_split(cfg)
    for report in reports.values():
        log.info(report.summary())
    adaptation = None
    if cfg.adaptation.corpus:
        # Pseudo-queries train beside the labelled ones; never a validation question's text.
        pseudo, adaptation = pseudo_query_records(
            cfg.adaptation,
            cfg.seed,
            len(train),
            {r.query for r in valid},
            teacher_scores=cfg.model.score_injection,  # the model then reads each document's score
        )
        train = train + pseudo
    if cfg.loss.distillation != "none" and not any(
        d.score is not None for r in train for d in r.positives + r.negatives
    ):
        raise RerankitError(
            f"loss.distillation is {cfg.loss.distillation} but no document of {cfg.data.train} has a "
            'teacher "score" (rerankit mine --teacher-scores writes the first stage\'s)'
        )
    if cfg.model.score_injection:
        require_scores(train, cfg.data.train, "model.score_injection (train split)")
        if cfg.evaluation.candidates == "given":  # deployed validation reads the first stage's own
            require_scores(
                valid, cfg.data.valid or cfg.data.train, "model.score_injection (validation split)"
            )
    # Under torchrun/accelerate only the main process touches the run folder.
    main_process = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as stack:
        if main_process:
            stack.enter_context(run_folder.locked(out))
            run_folder.prepare(
                out, resume=resume, overwrite=overwrite, config_text=run_folder.config_text(cfg, digest)
            )
        resume_from = run_folder.last_checkpoint(out) if resume else None
        if resume_from is not None:
            run_folder.check_checkpoint(resume_from)
        return _train(cfg, out, digest, train, valid, reports, adaptation, resume_from, main_process, started)


def check_instructions(prompt, records, source) -> None:
    """DataError when records carry an ``instruction`` the model's template has no place for (an
    encoder, which has no template, ignores them)."""
    given = next((r for r in records if r.instruction is not None), None)
    if given is None or prompt is None:
        if given is not None:
            log.info("the encoder reads the pair encoding: the records' instructions are ignored")
        return
    if not prompt.takes_instruction:
        raise DataError(
            f"query {given.query!r} has an instruction, but the {prompt.name} prompt template has no "
            "{instruction} field to hold it (model.prompt.template: qwen3, bge_gemma or custom)",
            path=str(source),
            field="instruction",
        )


def _validation_set(cfg: TrainConfig, train: list, valid: list):
    """The validation set (as deployed, or each query's given candidates), the corpus the
    deployed one was ranked over, and its summary (None for given candidates)."""
    if cfg.data.corpus:
        corpus = DeployedCorpus.read(cfg.data.corpus)
    else:
        corpus = DeployedCorpus.from_records(train, valid)
    if cfg.evaluation.candidates == "given":
        return ValidationSet.from_records(valid), corpus, None
    log.info(
        "validation as deployed: %s top-%d of %d documents for %d queries",
        cfg.evaluation.first_stage,
        cfg.evaluation.depth,
        len(corpus.ids),
        len(valid),
    )
    vset, summary = deployed_validation(valid, corpus, cfg.evaluation.first_stage, cfg.evaluation.depth)
    return vset, corpus, summary


def _complement_prior(cfg: TrainConfig, train: list, corpus):
    """``loss.complement``'s prior of the untrained signals, or None."""
    if cfg.loss.complement == "none":
        return None
    from rerankit.complement import build_prior

    return build_prior(train, list(corpus.texts), cfg.model.name_or_path, cfg.model.revision)


def _as_shipped(cfg: TrainConfig, out: Path, built, gate: dict | None):
    """The saved model as ``Reranker.load`` will return it on this machine (the run's fastest
    graph that passed its gate, else the merged torch model), without the parts fitted after."""
    from rerankit.inference import Reranker, batching_facts, default_device, default_dtype, trained_weights

    device = default_device()
    graph = _shipped_graph(cfg, out, gate) if device == "cpu" else None
    if graph is not None:  # graphs are of encoders, which read the pair encoding
        model, tokenizer, info = graph
        prompt = None
        log.info("the shipped parts are fitted on the %s %s graph", info["backend"], info["precision"])
    else:
        model, tokenizer, prompt = trained_weights(
            out / run_folder.MODEL_DIR,
            cfg.model.name_or_path,
            cfg.lora.enabled,
            cfg.model.revision,
            default_dtype(device),
            built.prompt or "none",
            cfg.model.trust_remote_code,
        )
        model, info = model.to(device), None
    injection = ScoreInjection.for_tokenizer(tokenizer, prompt) if cfg.model.score_injection else None
    reranker = Reranker(
        model,
        tokenizer,
        max_length=cfg.model.max_length,
        long_documents=cfg.model.long_documents,
        prompt=prompt,
        score_injection=injection,
    )
    if info is not None:
        reranker.backend_info = {**info, **batching_facts(reranker)}
    return reranker


def _shipped_graph(cfg: TrainConfig, out: Path, gate: dict | None):
    """(graph, tokenizer, backend_info) of the graph ``Reranker.load`` picks here, or None."""
    from rerankit.loading import load_tokenizer
    from rerankit.runtimes import pick_runtime

    if gate is None:
        return None
    graphs = out / run_folder.GRAPHS_DIR
    tokenizer = load_tokenizer(str(out / run_folder.MODEL_DIR), cfg.model.trust_remote_code)
    manifest = out / run_folder.MANIFEST
    runtime = pick_runtime(gate, graphs, "auto", None, False, manifest, tokenizer, cfg.model.max_length)
    return None if runtime is None else (runtime.graph, tokenizer, runtime.info())


def _train(
    cfg: TrainConfig,
    out: Path,
    digest: str,
    train: list,
    valid: list,
    reports: dict,
    adaptation: AdaptationReport | None,
    resume_from: str | None,
    main_process: bool,
    started: float,
) -> FitResult:
    """Build the model and the Trainer, train, and write the run folder (main process)."""
    from transformers import set_seed

    set_seed(cfg.seed)
    built = build_model(cfg)
    check_instructions(built.prompt, train, cfg.data.train)
    check_instructions(built.prompt, valid, cfg.data.valid or cfg.data.train)
    vset, corpus, deployed = _validation_set(cfg, train, valid)
    injection = (
        ScoreInjection.for_tokenizer(built.tokenizer, built.prompt) if cfg.model.score_injection else None
    )
    validator = Validator(
        vset,
        built.tokenizer,
        cfg.model.max_length,
        cfg.evaluation.recall_at,
        cfg.evaluation.batch_size,
        cfg.model.long_documents,
        built.prompt,
        injection,
        progress=main_process,  # under torchrun, one bar, as the Trainer's own
    )
    sampler = NegativeSampler(
        train, cfg.sampling.num_negatives, cfg.sampling.hard_ratio, cfg.sampling.max_positives, cfg.seed
    )
    dataset = EpochGroupDataset(sampler, _complement_prior(cfg, train, corpus))
    divergence = DivergenceCallback()
    callbacks: list[TrainerCallback] = [EpochCallback(dataset), divergence]
    if cfg.training.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(cfg.training.early_stopping_patience))
    # The Trainer's TensorBoard callback reads its log folder from the environment when built.
    with patch.dict(os.environ, TENSORBOARD_LOGGING_DIR=str(out / run_folder.LOGS_DIR)):
        trainer = _make_trainer(cfg, out, built, dataset, vset, validator, callbacks)

    first_stage = validator.first_stage_metrics()
    baseline = read_json(out / run_folder.BASELINE_FILE)
    if baseline is None:  # computed once; a resumed run reuses it
        log.info(
            "evaluating the untrained model on %d validation queries (%d pairs)", len(vset), vset.num_pairs
        )
        baseline = validator.evaluate(built.model)
        if main_process:
            write_json(out / run_folder.BASELINE_FILE, baseline)
    trainer.train(resume_from_checkpoint=resume_from)
    if divergence.diverged_at is not None:
        step, loss = divergence.diverged_at
        raise RerankitError(
            f"training diverged: the train loss is {loss} at step {step}; lower "
            "training.learning_rate (or head_learning_rate); the run is not finished"
        )

    key = _metric_key(cfg)
    evals = [
        {k.removeprefix("eval_"): v for k, v in entry.items() if k.startswith("eval_")}
        | {"step": entry["step"], "epoch": entry.get("epoch")}
        for entry in trainer.state.log_history
        if f"eval_{key}" in entry
    ]
    losses = [{"step": e["step"], "loss": e["loss"]} for e in trainer.state.log_history if "loss" in e]
    best = max(evals, key=lambda e: e[key]) if evals else None
    if best is None or best[key] < baseline[key]:
        # The best checkpoint is still saved; the report and the CLI say it lost.
        log.warning("no evaluation beat the untrained model on %s", key)
    metrics = {
        "baseline": baseline,
        "best": dict(best or {}),
        "evaluations": evals,
        "train_loss": losses,
        "metric_for_best": key,
    }
    if not trainer.is_world_process_zero():  # the main process writes the run folder alone
        return FitResult(out, metrics, cfg, {}, trainer.model, built.tokenizer, built.prompt)
    run_folder.save_model(out, trainer.model, built.tokenizer)
    gate = write_run_graphs(out, cfg, vset, decoder=built.prompt is not None, injection=injection)
    # What ships beside the model is fitted on validation as deployed (never on test queries),
    # scored by the kept model as Reranker.load returns it (merged, in the precision this
    # machine serves by default): the ensemble, then the calibration and the fusion with the
    # first stage on its score.
    as_shipped = _as_shipped(cfg, out, built, gate)
    shipped = fit_shipped(
        as_shipped,
        vset,
        validator,
        list(corpus.texts),
        ensemble=cfg.ensemble,
        base_model=cfg.model.name_or_path,
        normalization=cfg.ensemble_normalization,
        key=key,
        seed=cfg.seed,
        base_revision=cfg.model.revision,
        # the encoder's graph beside the run's OpenVINO graphs, the ones it runs beside
        encoder_graph=(
            out / ENSEMBLE_DIR / ENCODER_GRAPH if gate is not None and graph_backend() == "openvino" else None
        ),
    )
    first_stage_name = (
        f"{cfg.evaluation.first_stage} top-{cfg.evaluation.depth} of the corpus"
        if deployed
        else "bm25 (over the validation candidates)"
    )
    scored_by = "the self-ensemble" if shipped.ensemble else "the cross-encoder"
    calibration = shipped.calibration
    fusion = {**shipped.fusion, "fitted_on": f"{first_stage_name}, validation queries, {scored_by}'s score"}
    metrics = {
        "first_stage": {"name": first_stage_name, **first_stage},
        "deployed": deployed,
        "shipped": {**shipped.report, "runtime": as_shipped.backend_info},
        **metrics,
        "train_queries": len(train) - (adaptation.pseudo_queries if adaptation else 0),
        "adaptation": adaptation.__dict__ if adaptation else None,
        "valid_queries": len(vset),
        "valid_pairs": vset.num_pairs,
        "calibration": calibration,
        "fusion": fusion,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "data": {name: r.__dict__ for name, r in reports.items()},
    }
    save_signals(out, shipped)
    if gate is not None:
        metrics["graphs"] = gate
    write_json(out / run_folder.METRICS_FILE, metrics)
    curve = write_curve(out / run_folder.CURVE_FILE, metrics)
    write_report(out / run_folder.REPORT_FILE, metrics, cfg, digest, curve)
    run_folder.mark_finished(
        out,
        cfg,
        digest,
        built,
        calibration["calibration"],
        LearnedFusion.from_dict(fusion),
        injection,
        shipped.ensemble,
        gate,
    )
    return FitResult(out, metrics, cfg, metrics["data"], trainer.model, built.tokenizer, built.prompt)
