"""Inference: ``Reranker.load(path)`` and ``rerank``/``score``.

A run folder's LoRA adapter is merged into its base (``peft``'s ``merge_and_unload``) in
full or half precision — never the 4-bit training weights — with the trained score head
restored from the adapter. An exported (merged) folder, or any Hugging Face
sequence-classification cross-encoder path or hub id, loads the same way.

Scores: a run trained here ranks by its self-ensemble's score (``rerankit.ensemble``: the
cross-encoder's logit fused with BM25 and the backbone's cosine) unless loaded with
``ensemble="none"``; other models by their logit. ``raw=False`` (the default) gives a relevance
probability in [0, 1]: for a run trained here ``sigmoid(scale · score + bias)`` with the
calibration fitted on its validation set (``rerankit.calibration``), for other models
``sigmoid(logit)``, as sentence-transformers' ``CrossEncoder`` gives for one-label models;
``raw=True`` the score before calibration. ``logits`` is always the cross-encoder's own.
Under bf16/fp16 the model runs in that precision and its logits are widened to fp32 before
the sigmoid (computed in float64). Batches are cut by length, not by call, so in fp32 a
document's score does not depend on the other documents of the call; under bf16 it can move by
bf16 rounding with the padded width of its batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from rerankit import run_folder
from rerankit.calibration import Calibration
from rerankit.config import LongDocumentsConfig
from rerankit.context import ContextError, RankContext
from rerankit.encoding import check_template, encode_pairs, render_pair
from rerankit.ensemble import (
    ENCODER_DIR,
    ENCODER_GRAPH,
    ENSEMBLE_DIR,
    Ensemble,
    load_signals,
    with_sentence_signals,
)
from rerankit.errors import ConfigError, ModelLoadError, RerankitError, short_reason
from rerankit.fusion import LearnedFusion, rrf
from rerankit.loading import (
    bf16_is_native,
    check_local_model,
    load_tokenizer,
    resolve_model_path,
    torch_dtype,
)
from rerankit.ordering import best_first
from rerankit.prompts import (
    EXPORT_INFO,
    PromptTemplate,
    answer_head_weight,
    prompt_for_checkpoint,
    set_answer_head,
)
from rerankit.recorded import (
    ExportRecord,
    RunManifest,
    check_max_length,
    merged_prompt,
    merged_settings,
    parse_record,
    position_limit,
)
from rerankit.runtimes import (
    BACKENDS,
    GRAPH_BACKENDS,
    NO_INT8_GRAPH,
    GraphModel,
    RuntimeChoice,
    align_padding,
    load_graph,
    openvino_bf16_here,
    pick_runtime,
)
from rerankit.score_injection import ScoreInjection
from rerankit.scoring import score_pairs, sigmoid
from rerankit.windows import DocumentPairs, document_pairs, score_documents

log = logging.getLogger(__name__)

# The file peft reads an adapter from (it falls back to a pickle, adapter_model.bin, without it).
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class RerankResult:
    """One ranked document: its position in the input, its score, its text and its rank (0 = best).

    ``fused_score`` is set when the ranking fused the reranker with first-stage scores; ``score``
    stays the reranker's own.
    """

    index: int
    score: float
    text: str
    rank: int
    fused_score: float | None = None


class RerankResults(tuple):
    """Results best first; iterable, indexable, with ``top_k``."""

    def top_k(self, k: int) -> RerankResults:
        return RerankResults(self[:k])

    @property
    def indices(self) -> list[int]:
        return [r.index for r in self]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str):
    """bf16 where the hardware runs it natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp32.

    bf16 keeps NDCG@10 but moves scores slightly, so near-ties can swap; the measured speed and
    drift are in ``benchmarks/results/inference_avx2.md``.
    """
    import torch

    return torch.bfloat16 if bf16_is_native(device) else torch.float32


class Reranker:
    """A cross-encoder ready to rank; build it with :meth:`load`."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_length: int = 512,
        max_tokens: int | None = None,
        max_batch: int = 128,
        source: str = "",
        long_documents: LongDocumentsConfig | Mapping | None = None,
        prompt: PromptTemplate | None = None,
        calibration: Calibration | None = None,
        fusion: LearnedFusion | None = None,
        score_injection: ScoreInjection | None = None,
        ensemble: Ensemble | None = None,
        signals: Mapping | None = None,
    ) -> None:
        if isinstance(model, GraphModel):  # bf16 graphs pad to a width that keeps scores their own
            model = align_padding(model, tokenizer, max_length, prompt)
        # a torch module, or a compiled graph (rerankit.runtimes) that has no train/eval modes
        self.model = model.eval() if hasattr(model, "eval") else model
        self.tokenizer, self.prompt = tokenizer, prompt
        self.calibration, self.fusion = calibration, fusion
        self.score_injection = score_injection
        # the self-ensemble (rerankit.ensemble) and the signals it weighs beside the cross-encoder
        self.ensemble = ensemble
        self.signals = with_sentence_signals(signals or {}, ensemble.needs if ensemble else ())
        missing = [name for name in (ensemble.needs if ensemble else ()) if name not in self.signals]
        if missing:
            raise ModelLoadError(f"the ensemble weighs {', '.join(missing)}, which this model does not carry")
        self.long_documents = merged_settings(None, long_documents)
        if max_tokens is None:
            # Padded tokens per forward pass: on CPU small batches stay in cache and run
            # faster (benchmarks/results/inference_avx2.md); a GPU wants large ones.
            max_tokens = 2048 if device_type(model) == "cpu" else 32768
        self.max_length, self.max_tokens, self.max_batch = max_length, max_tokens, max_batch
        self.source = source
        # what runs and why (backend, precision, the load's measurements); load() fills it in
        self.backend_info = _backend_info(self, None)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype=None,
        max_length: int | None = None,
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
        long_documents: LongDocumentsConfig | Mapping | None = None,
        prompt: str | Mapping | PromptTemplate | None = None,
        backend: str = "auto",
        allow_failed_gate: bool = False,
        ensemble: str = "auto",
    ) -> Reranker:
        """Load a run folder, an exported folder, or any HF cross-encoder path or hub id.

        ``device`` defaults to CUDA when present (the CPU for graph backends). ``dtype``
        ("float32", "bfloat16", "float16", a torch dtype, "int8" for an export's int8 graph,
        or "auto"/None) defaults to bf16 where the hardware runs it natively (CUDA with bf16,
        CPUs with AVX512-BF16/AMX) and fp32 elsewhere, or to the runtime ``backend`` picks;
        pass ``dtype="float32"`` for fp32 scores, identical to sentence-transformers' fp32
        (an export's fp32 graph, when ``auto`` picks it, within 1e-4).

        Nothing in the folder runs unless the caller asks: Python code shipped with a model
        needs ``trust_remote_code=True`` (a run folder's manifest cannot turn it on; with it,
        the code of the base model the manifest names runs too, so trust the folder as much as
        that base), and
        pickle weights (``.bin``) need ``allow_pickle=True``; safetensors are read otherwise.

        ``long_documents`` (a ``LongDocumentsConfig`` or its fields as a mapping, e.g.
        ``{"mode": "windows", "aggregate": "max"}``) scores documents longer than the window by
        windows (``rerankit.windows``); a run folder's own setting is the default.

        ``prompt``: the template a decoder LLM reads pairs through (``rerankit.prompts``): a
        preset name ("qwen3", "plain", "none", "auto"), ``PromptConfig`` fields or a
        ``PromptTemplate``. The default is the one the run trained with or the export recorded;
        for other checkpoints ``auto`` (decoders: qwen3 with ChatML tokens, else plain). A causal
        LM checkpoint (a Qwen3-Reranker, or ``rerankit export --causal-lm``) is scored by
        ``logit(yes) − logit(no)`` at its last position.

        ``backend``: ``torch``, or a CPU graph runtime, ``openvino`` or ``onnx``
        (``rerankit.runtimes``; extras ``rerankit[openvino]``/``rerankit[onnx]``). An export
        written with ``--format`` carries its graphs and their measured accuracy gate
        (``rerankit.graph_export``): a graph backend runs its fastest graph that passed
        (``dtype="int8"`` or ``"float32"`` names one; a graph that failed loads only with
        ``allow_failed_gate=True``); without graphs the model is converted at load, in fp32.
        ``auto`` (the default) on a CPU runs the fastest graph here of those that passed the
        accuracy gate (an export's, or a run's written at the end of ``fit``): each is timed on a
        short probe at load; torch where none passed; on a GPU, torch. ``backend_info`` says
        what runs and why.

        ``ensemble``: ``auto`` scores with the self-ensemble the run fitted (``rerankit.ensemble``:
        the cross-encoder fused with BM25 over the run's corpus statistics and the backbone's own
        embedding cosine), when it has one; ``none`` scores with the cross-encoder alone (its
        calibration and fusion, fitted on the ensemble's score, are then left out too).
        """
        if ensemble not in ("auto", "none"):
            raise ConfigError(f"ensemble must be auto or none, got {ensemble!r}")
        if device is None:  # graphs run on the CPU, whatever else the machine has
            device = "cpu" if backend in GRAPH_BACKENDS or dtype == "int8" else default_device()
        backend = _backend(backend, device, dtype)
        precision = _graph_precision(dtype, backend)
        # int8 graphs come only with an export or a run folder's own graphs
        if precision == "int8" and not (
            (Path(path) / EXPORT_INFO).is_file() or run_folder.is_run_folder(Path(path))
        ):
            raise ModelLoadError(f"{path}: {NO_INT8_GRAPH}")  # before reading any weights
        if precision is not None:  # a graph's precision; any torch model read for it is fp32
            dtype = torch_dtype("float32")
        elif dtype is None or dtype == "auto":
            dtype = default_dtype(device) if backend in ("torch", "auto") else torch_dtype("float32")
        elif isinstance(dtype, str):
            dtype = torch_dtype(dtype)
        trust, pickle = trust_remote_code, allow_pickle
        runtime = None  # a graph picked from an accuracy gate (rerankit.runtimes)
        given = str(path)  # as typed: Path() would drop the "./" that marks a local path
        path = Path(path)
        if run_folder.is_run_folder(path):
            manifest = parse_record(RunManifest, path / run_folder.MANIFEST, run_folder.read_manifest(path))
            if manifest.trust_remote_code and not trust:
                raise ModelLoadError(
                    f"{path} was trained with model code from its backbone "
                    f"{manifest.base_model!r} (trust_remote_code); load it only if you trust "
                    "that code: trust_remote_code=True "
                    "(--trust-remote-code)"
                )
            model_dir = run_folder.inside(path, manifest.model_dir)
            # a run without a template (an encoder) reads the pair encoding
            prompt = merged_prompt(manifest.prompt, prompt) or "none"
            max_length = max_length or manifest.max_length
            graphs = run_folder.inside(path, run_folder.GRAPHS_DIR)
            tokenizer = None
            if device == "cpu":  # the graphs the run wrote at the end of fit, when it did
                tokenizer = load_tokenizer(str(model_dir), trust)
                gate, manifest_file = manifest.accuracy_gate, path / run_folder.MANIFEST
                runtime = pick_runtime(
                    gate, graphs, backend, precision, allow_failed_gate, manifest_file, tokenizer, max_length
                )
            if runtime is None:
                model, tokenizer, prompt = trained_weights(
                    model_dir,
                    manifest.base_model,
                    manifest.adapter,
                    manifest.base_revision,
                    dtype,
                    prompt,
                    trust,
                    pickle,
                    tokenizer,
                )
            else:  # the run's own graph: no torch weights are read
                model = runtime.graph
                given = str(graphs)  # the merged model's config is written beside its graphs
                prompt = _prompt(_hf_config(model, given, trust), tokenizer, prompt)
            long_documents = merged_settings(manifest.long_documents, long_documents)
            calibration, fusion, injection = manifest.calibration, manifest.fusion, manifest.score_injection
            fitted = manifest.ensemble
            signal_files = (
                path,
                run_folder.inside(path, ENSEMBLE_DIR),
                resolve_model_path(manifest.base_model),
            )
        elif (path / "adapter_config.json").exists():
            from peft import PeftConfig

            check_local_model(str(path), allow_pickle=pickle, weights=ADAPTER_WEIGHTS)
            base = resolve_model_path(PeftConfig.from_pretrained(str(path)).base_model_name_or_path)
            check_local_model(base, allow_pickle=pickle)
            tokenizer = load_tokenizer(str(path), trust)
            model = _merged(base, path, tokenizer, dtype, trust, pickle)
            prompt = _prompt(model.config, tokenizer, _given_or_recorded(prompt, _export_info(str(path))))
            long_documents = merged_settings(None, long_documents)
            calibration = fusion = injection = fitted = signal_files = None
        else:
            check_local_model(given, allow_pickle=pickle)
            name = resolve_model_path(given)
            tokenizer = load_tokenizer(name, trust)
            info = _export_info(name)  # read once: prompt, calibration, fusion, graphs, settings
            prompt = _given_or_recorded(prompt, info)
            gate = info.accuracy_gate if info is not None else None
            info_file = Path(name) / EXPORT_INFO
            limit = max_length or (info.max_length if info else None)
            runtime = pick_runtime(
                gate, Path(name), backend, precision, allow_failed_gate, info_file, tokenizer, limit
            )
            if runtime is None:
                model, prompt = _plain(name, tokenizer, dtype, trust, pickle, prompt)
            else:  # the export's own graph: no torch weights are read
                model = runtime.graph
                prompt = _prompt_of(name, tokenizer, trust, prompt)
            info = info or ExportRecord()
            # a calibration folded into the exported head is already in its logits
            calibration = None if info.calibration_folded else info.calibration
            fusion, injection, fitted = info.fusion, info.score_injection, info.ensemble
            signal_files = (Path(name), Path(name) / ENSEMBLE_DIR, Path(name) / ENSEMBLE_DIR / ENCODER_DIR)
            max_length = max_length or info.max_length
            long_documents = merged_settings(info.long_documents, long_documents)
        hf_config = _hf_config(model, given, trust)
        if max_length is None:  # neither given nor recorded: what tokenizer and model allow
            max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
            max_length = min(max_length, position_limit(hf_config) or max_length)
        check_max_length(max_length, hf_config, given)
        if backend in GRAPH_BACKENDS and not isinstance(model, GraphModel):
            model = _converted(model, tokenizer, max_length, prompt, backend)
        check_template(tokenizer, prompt)
        if ensemble == "none" and fitted is not None:
            # the calibration and the fusion were fitted on the ensemble's score: without it,
            # plain sigmoid and reciprocal-rank fusion
            fitted = calibration = fusion = None
        signals = _signals(fitted, *signal_files, dtype=dtype, device=device) if fitted else {}
        if "cosine" in signals:
            encoder_beside(signals["cosine"], model, signal_files[1] / ENCODER_GRAPH)
        reranker = cls(
            model if isinstance(model, GraphModel) else model.to(device),
            tokenizer,
            max_length=max_length,
            source=str(path),
            long_documents=long_documents,
            prompt=prompt,
            calibration=calibration,
            fusion=fusion,
            score_injection=injection,
            ensemble=fitted,
            signals=signals,
        )
        reranker.backend_info = _backend_info(reranker, runtime)
        return reranker

    def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw: bool = False,
        first_stage=None,
        instruction: str | None = None,
    ) -> list[float]:
        """Scores of (query, document) pairs, in input order.

        ``first_stage``: one retriever score per pair, which a model trained with score injection
        reads (required there; pairs that share a query are one candidate list for its levels).
        ``instruction``: as in ``rerank``, for every pair.
        """
        scores, _ = self.scores_and_logits(pairs, raw=raw, first_stage=first_stage, instruction=instruction)
        return scores.tolist()

    def scores_and_logits(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        raw: bool = False,
        first_stage=None,
        instruction: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``score``'s scores and, beside them from the same forward passes, the cross-encoder's
        logits before the self-ensemble (``rerankit eval`` reports both), as fp64 arrays."""
        if not pairs:
            return np.zeros(0), np.zeros(0)
        queries, docs = zip(*pairs)
        logits = self.logits(queries, docs, first_stage=first_stage, instruction=instruction)
        final = self.final_scores(logits, self.signal_scores(queries, docs))
        return (final if raw else self.probabilities(final)), np.asarray(logits, dtype=np.float64)

    def signal_scores(self, queries: Sequence[str], docs: Sequence[str]) -> dict[str, np.ndarray]:
        """The scores of the pairs by each signal the ensemble weighs beside the cross-encoder
        (none without an ensemble)."""
        if self.ensemble is None:
            return {}
        return {name: self.signals[name].scores(queries, docs) for name in self.ensemble.needs}

    def final_scores(self, logits: np.ndarray, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """The score a document ranks by before calibration: the ensemble's fusion of the
        cross-encoder's logits with ``signals`` (``signal_scores``), or the logits alone."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.ensemble is None:
            return logits
        return self.ensemble.combine({"reranker": logits, **signals})

    def fuse(self, logits: np.ndarray, first_stage: Sequence[np.ndarray]) -> np.ndarray:
        """Fused scores of one query's documents from the reranker's logits and first-stage
        scores: the fusion learned on the run's validation set (``rerankit.fusion``) when there
        is one and one first stage; else the reciprocal-rank fusion of every ranking."""
        if self.fusion is not None and len(first_stage) == 1:
            return self.fusion.combine(np.asarray(logits), np.asarray(first_stage[0]))
        return rrf([*first_stage, np.asarray(logits)])

    @property
    def fusion_name(self) -> str:
        """How ``fuse`` combines one first stage with the reranker, in words."""
        if self.fusion is None:
            return "RRF"
        return f"learned {self.fusion.method}, reranker weight {self.fusion.weight:.2f}"

    @property
    def neighbour_independent(self) -> bool:
        """Whether a pair's score is the same whatever else shares its batch: in fp32 torch and
        in compiled graphs with fixed scales (fp32; OpenVINO's static int8), and in OpenVINO
        bf16 where batches pad to a width multiple that keeps each row's rounding its own
        (``runtimes.align_padding``); not under torch bf16/fp16, where rounding moves with a
        batch's padded width, nor ONNX's dynamic int8, whose activation ranges are taken per
        batch. With the self-ensemble's cosine, its sentence encoder must hold it too
        (``CosineSignal.neighbour_independent``)."""
        import torch

        cosine = self.signals.get("cosine")
        if cosine is not None and not cosine.neighbour_independent:
            return False
        if isinstance(self.model, GraphModel):
            return not self.model.batch_dependent
        return next(self.model.parameters()).dtype == torch.float32

    def probabilities(self, logits) -> np.ndarray:
        """Relevance probabilities of raw logits: calibrated when the model carries a calibration."""
        return sigmoid(logits) if self.calibration is None else self.calibration.probabilities(logits)

    def rerank(
        self,
        query: str,
        docs: Sequence[str],
        top_k: int | None = None,
        *,
        raw: bool = False,
        first_stage=None,
        instruction: str | None = None,
    ) -> RerankResults:
        """Rank ``docs`` for ``query``, best first (ties keep input order).

        ``instruction``: the task in words, written into a decoder's prompt template (Qwen3-
        Reranker's ``<Instruct>``, bge-reranker-v2-gemma's closing prompt) in place of its default;
        a ContextError when the template has no place for one. An encoder has no template and
        ignores it.

        ``first_stage``: the retriever's scores of ``docs`` (higher is better), or a list of
        several retrievers' scores (say BM25's and a bi-encoder's, the parts of a hybrid
        retriever). The order is then their fusion with the reranker's (``fuse``) and each
        result carries ``fused_score``; ``score`` stays the reranker's. A model trained with
        score injection (``score_injection``) reads the first (or only) of them in its input and
        needs them.
        """
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be at least 0 (or None for all), got {top_k}")
        if not docs:
            return RerankResults()
        context = RankContext.build(len(docs), first_stage, instruction=instruction)
        return self.rerank_with(query, docs, context, top_k, raw=raw)

    def rerank_with(
        self,
        query: str,
        docs: Sequence[str],
        context: RankContext,
        top_k: int | None = None,
        *,
        raw: bool = False,
    ) -> RerankResults:
        """``rerank`` with what the call knows beside the pairs already checked (a CLI or a
        server builds ``context`` from its own input, naming its own fields in errors)."""
        if top_k is not None and top_k < 0:
            raise ValueError(f"top_k must be at least 0 (or None for all), got {top_k}")
        if not docs:
            return RerankResults()
        logits = self.input_logits(
            self.model_queries(query, context), docs, self.model_instructions(context)
        )[0]
        return self.results(query, docs, logits, context, top_k, raw=raw)

    def with_signals(self, query: str, docs: Sequence[str], context: RankContext) -> RankContext:
        """``context`` with the ensemble's signals of ``docs`` for ``query`` (computed once; a
        server computes them beside the cross-encoder's batches)."""
        if context.signals is not None or self.ensemble is None:
            return context
        return dataclasses.replace(context, signals=self.signal_scores([query] * len(docs), docs))

    def results(
        self,
        query: str,
        docs: Sequence[str],
        logits: np.ndarray,
        context: RankContext,
        top_k: int | None = None,
        *,
        raw: bool = False,
    ) -> RerankResults:
        """One query's documents ranked from their logits and ``context`` (``with_signals``): by
        the reranker's score (the ensemble's, when it has one), or by its fusion with the first
        stage when the context holds one."""
        final = self.final_scores(logits, self.with_signals(query, docs, context).signals or {})
        scores = final if raw else self.probabilities(final)
        fused = self.fuse(final, list(context.first_stage)) if context.first_stage else None
        order = best_first(scores if fused is None else fused, top_k)
        return RerankResults(
            RerankResult(int(i), float(scores[i]), docs[i], rank, None if fused is None else float(fused[i]))
            for rank, i in enumerate(order)
        )

    def model_queries(self, query: str, context: RankContext) -> list[str]:
        """``query`` as the model reads it beside each of the context's documents: itself, or,
        for a model trained with score injection, with each document's level of the first
        stage's scores written in (``rerankit.score_injection``); ContextError naming the
        context's field when that model gets none."""
        return self._pair_queries([query] * context.num_docs, context)

    def model_instructions(self, context: RankContext) -> list[str] | None:
        """The context's instruction once per document, as the model's template reads it; None
        when there is none or the model has no template (an encoder ignores it); ContextError
        naming the context's field when the template has no place for one."""
        if context.instruction is None or self.prompt is None:
            return None
        if not self.prompt.takes_instruction:
            raise ContextError(
                context.instruction_field,
                f"this model's {self.prompt.name} prompt template has no place for an instruction",
            )
        return [context.instruction] * context.num_docs

    def _pair_queries(self, queries: Sequence[str], context: RankContext) -> list[str]:
        if self.score_injection is None:
            return list(queries)
        scores = context.require_first_stage(
            "this model reads each document's first-stage score in its input (it was trained "
            "with model.score_injection); pass the retriever's scores"
        )
        out = list(queries)
        groups: dict[str, list[int]] = {}
        for i, query in enumerate(queries):
            groups.setdefault(query, []).append(i)
        for query, where in groups.items():  # one query's candidates share their levels' scale
            for i, injected in zip(where, self.score_injection.queries(query, scores[where])):
                out[i] = injected
        return out

    def logits(
        self, queries: Sequence[str], docs: Sequence[str], *, first_stage=None, instruction: str | None = None
    ) -> np.ndarray:
        """Raw scores of the pairs (queries[i], docs[i]) as one fp32 array, in input order.

        ``first_stage`` and ``instruction`` as in ``score``. An empty or whitespace-only document
        has nothing to rank by and is refused (ValueError naming its position); so is a query that fills the
        whole window. Safe to call from several threads: calls take turns on the model and its
        tokenizer (a fast tokenizer's truncation settings are shared state).
        """
        return self.window_logits(queries, docs, first_stage=first_stage, instruction=instruction)[0]

    def window_logits(
        self, queries: Sequence[str], docs: Sequence[str], *, first_stage=None, instruction: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``logits`` and, per pair, how many windows of its document were scored (1 unless
        ``long_documents.mode`` is ``windows`` and the document is longer than one window)."""
        context = RankContext.build(len(docs), first_stage, instruction=instruction)
        return self.input_logits(self._pair_queries(queries, context), docs, self.model_instructions(context))

    def input_logits(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        instructions: Sequence[str | None] | None = None,
        *,
        groups: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``window_logits`` of pairs whose queries are already as the model reads them
        (``model_queries``), each with its instruction (``model_instructions``; None: the
        template's default): what the server's batching worker and the validation run.
        ``groups``: consecutive runs of documents (several requests) each batched as it would
        be alone, so no run's scores depend on another's (``score_pairs``)."""
        _check_pairs(queries, docs)
        with self._lock:
            return score_documents(
                self._score,
                self.tokenizer,
                queries,
                docs,
                self.max_length,
                self.long_documents,
                self.prompt,
                instructions,
                groups,
            )

    def model_pairs(
        self, queries: Sequence[str], docs: Sequence[str], instructions: Sequence[str | None] | None = None
    ) -> tuple[DocumentPairs, dict]:
        """What ``input_logits`` hands its model for these pairs, before batching: the plain
        pairs (each document, or its windows) and their token ids, unpadded. Scored elsewhere
        (``rerankit.mixed_batches``: batches shared with other rerankers of one base), their
        logits go back through ``DocumentPairs.document_scores``."""
        _check_pairs(queries, docs)
        with self._lock:
            pairs = document_pairs(
                self.tokenizer, queries, docs, self.max_length, self.long_documents, self.prompt, instructions
            )
            encoded = encode_pairs(
                self.tokenizer,
                pairs.queries,
                pairs.docs,
                self.max_length,
                padding=False,
                return_tensors=None,
                prompt=self.prompt,
                instructions=pairs.instructions,
            )
        return pairs, dict(encoded)

    def _score(
        self, queries: Sequence[str], docs: Sequence[str], instructions=None, groups=None
    ) -> np.ndarray:
        return score_pairs(
            self.model,
            self.tokenizer,
            queries,
            docs,
            max_length=self.max_length,
            max_tokens=self.max_tokens,
            max_batch=self.max_batch,
            prompt=self.prompt,
            instructions=instructions,
            groups=groups,
        )

    def render(self, query: str, document: str, instruction: str | None = None) -> str:
        """The pair's whole prompt as text, for a decoder served by a tool that takes text (a TEI
        or vLLM endpoint): the template this model reads, with ``instruction`` (or its default),
        its special-token strings in the user's text neutralised, and the document cut so the
        prompt fits ``max_length`` tokens with the suffix, where the score is read, kept."""
        if self.prompt is None:
            raise ValueError("this model reads the tokenizer's pair encoding, not a prompt template")
        return render_pair(self.tokenizer, self.prompt, query, document, self.max_length, instruction)

    def __repr__(self) -> str:
        return f"Reranker({self.source!r}, max_length={self.max_length})"


def _check_pairs(queries: Sequence[str], docs: Sequence[str]) -> None:
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries for {len(docs)} documents: one query per document")
    for i, doc in enumerate(docs):
        if not doc.strip():
            raise ValueError(f"document {i} is empty or whitespace-only: nothing to score")


def device_type(model) -> str:
    """``cpu``/``cuda`` of a torch model's weights; a compiled graph runs on the CPU."""
    if isinstance(model, GraphModel):
        return model.device_type
    return next(model.parameters()).device.type


def _backend(backend: str, device: str, dtype) -> str:
    """The backend as given, checked: graph runtimes are CPU-only; ``auto`` is torch off the
    CPU and for half precision (graphs run in fp32 or int8)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in GRAPH_BACKENDS and device != "cpu":
        raise ConfigError(f"backend {backend!r} runs on the CPU; got device {device!r}")
    name = str(dtype).removeprefix("torch.")
    half = name in ("bfloat16", "bf16", "float16", "fp16")
    if backend == "auto" and (device != "cpu" or half):
        return "torch"
    if backend in GRAPH_BACKENDS and half and not (backend == "openvino" and name in ("bfloat16", "bf16")):
        raise ConfigError(f"backend {backend!r} runs fp32 or int8 graphs; got dtype {dtype!r}")
    return backend


def _graph_precision(dtype, backend: str) -> str | None:
    """The precision ``dtype`` asks of a graph (or, under ``auto``, of any runtime): ``int8``,
    ``fp32`` or OpenVINO's ``bf16``; None when it leaves the choice open (or names torch's)."""
    if dtype == "int8":
        if backend == "torch":
            raise ConfigError(f"dtype 'int8' needs a graph backend ({', '.join(GRAPH_BACKENDS)} or auto)")
        return "int8"
    name = str(dtype).removeprefix("torch.")
    if backend != "torch" and name in ("float32", "fp32"):
        return "fp32"
    if backend == "openvino" and name in ("bfloat16", "bf16"):
        return "bf16"  # the fp32 graph compiled for bf16
    return None


def _prompt_of(name: str, tokenizer, trust_remote_code: bool, given) -> PromptTemplate | None:
    """The prompt of a checkpoint read from its config alone (no weights)."""
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"prompt: {short_reason(exc)}") from None
    return _prompt(hf_config, tokenizer, given)


def _converted(model, tokenizer, max_length: int, prompt, backend: str) -> GraphModel:
    """``model`` converted to an fp32 ``backend`` graph, compiled; the files go once compiled."""
    import tempfile

    from rerankit.runtimes import GRAPH_FILES, convert, example_batch

    with tempfile.TemporaryDirectory(prefix="rerankit-graph-") as folder:
        try:
            example = example_batch(tokenizer, max_length, prompt)
            path = convert(model, example, backend, Path(folder) / GRAPH_FILES[(backend, "fp32")])
        except RerankitError:
            raise
        except Exception as exc:  # the converters raise many error types
            raise ModelLoadError(
                f"cannot convert the model to a {backend} graph: {short_reason(exc)}"
            ) from exc
        return load_graph(path, backend, "fp32")


def serves_openvino(model) -> bool:
    """Whether ``model`` (what a Reranker scores with) is an OpenVINO graph."""
    return isinstance(model, GraphModel) and model.backend == "openvino"


def encoder_beside(cosine, model, graph_file: Path | None = None) -> None:
    """Beside a cross-encoder served by an OpenVINO graph, run the ensemble's sentence encoder
    (``cosine``) as an OpenVINO graph too, in the cross-encoder graph's precision (bf16 where the
    CPU has it, beside an int8 one): ``graph_file`` where there is one (a run keeps it), else
    the encoder converted in memory. Where neither works it stays in torch, and the log says why."""
    if not serves_openvino(model):
        return
    precision = model.precision if model.precision in ("fp32", "bf16") else None
    precision = precision or ("bf16" if openvino_bf16_here() else "fp32")
    if graph_file is not None and Path(graph_file).is_file():
        try:
            cosine.use_openvino(precision, Path(graph_file))
            return
        except Exception as exc:  # damaged, stale or from another OpenVINO: convert instead
            log.warning("%s cannot serve, converting the sentence encoder: %s", graph_file, short_reason(exc))
    log.info("converting the ensemble's sentence encoder to an OpenVINO %s graph", precision)
    try:
        cosine.use_openvino(precision)
    except Exception as exc:  # the converter raises many error types; torch still works
        log.warning("the ensemble's sentence encoder stays in torch: %s", short_reason(exc))


def _backend_info(reranker: Reranker, runtime: RuntimeChoice | None) -> dict:
    """What ``reranker`` runs and why, as ``Reranker.backend_info`` reports it."""
    model = reranker.model
    if runtime is not None:
        info = runtime.info()
    elif isinstance(model, GraphModel):
        info = {"backend": model.backend, "precision": model.precision, "reason": "converted at load"}
    else:
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        info = {"backend": "torch", "precision": dtype, "reason": "no graph that passed an accuracy gate"}
    cosine = reranker.signals.get("cosine")
    if cosine is not None:  # the self-ensemble's encoder: its own runtime
        info["ensemble_encoder"] = {
            "runtime": cosine.runtime,
            "neighbour_independent": cosine.neighbour_independent,
        }
    return {**info, **batching_facts(reranker)}


def batching_facts(reranker: Reranker) -> dict:
    """What ``backend_info`` says of batching: whether a pair's score is its own whatever shares
    its batch, and the width multiple batches pad to when a graph needs one for that."""
    multiple = getattr(reranker.model, "pad_multiple", None)
    return {"neighbour_independent": reranker.neighbour_independent} | (
        {"pad_multiple": multiple} if multiple else {}
    )


def _export_info(folder: str) -> ExportRecord | None:
    """The folder's export record (``rerankit_export.json``), validated; None when absent."""
    info_file = Path(folder) / EXPORT_INFO
    if not info_file.is_file():
        return None
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{info_file}: not valid JSON ({short_reason(exc)})") from None
    if not isinstance(info, dict):
        raise ModelLoadError(f"{info_file}: expected a JSON object, got {type(info).__name__}")
    return ExportRecord.parse(info_file, info)


def _given_or_recorded(given, info: ExportRecord | None):
    """The prompt the caller gave (merged into the recorded one); else the one an export
    recorded (null: the pair encoding); else None (``auto``)."""
    if info is None:
        return given
    return merged_prompt(info.prompt, given) or "none"


def _signals(fitted: Ensemble, source: Path, folder: Path, encoder, *, dtype, device: str) -> dict:
    """The signals ``fitted`` weighs, read from ``folder`` (BM25's statistics) and ``encoder``
    (the backbone whose embedding cosine it weighs); ModelLoadError naming what is missing."""
    try:
        return load_signals(fitted.needs, folder, encoder, dtype=dtype, device=device)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{source}: the ensemble's signals cannot be read ({short_reason(exc)}); "
            "load with ensemble='none' (--ensemble none) for the cross-encoder alone"
        ) from None


def trained_weights(
    model_dir: Path,
    base_model: str,
    adapter: bool,
    base_revision: str | None,
    dtype,
    prompt,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    tokenizer=None,
):
    """A run's model as it ships: (model, tokenizer, prompt), the adapter merged into its base
    in ``dtype`` (or the full weights), read from ``model_dir`` (``tokenizer``: its tokenizer,
    when the caller has read it already)."""
    adapter_weights = ADAPTER_WEIGHTS if adapter else None
    check_local_model(str(model_dir), allow_pickle=allow_pickle, weights=adapter_weights)
    tokenizer = tokenizer or load_tokenizer(str(model_dir), trust_remote_code)
    if not adapter:
        model, prompt = _plain(str(model_dir), tokenizer, dtype, trust_remote_code, allow_pickle, prompt)
        return model, tokenizer, prompt
    base = resolve_model_path(base_model)
    check_local_model(base, allow_pickle=allow_pickle)
    model = _merged(base, model_dir, tokenizer, dtype, trust_remote_code, allow_pickle, base_revision)
    return model, tokenizer, _prompt(model.config, tokenizer, prompt)


def _hf_config(model, name: str, trust_remote_code: bool):
    """The Hugging Face config of a loaded torch model, or of the folder a graph came from."""
    if not isinstance(model, GraphModel):
        return model.config
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def _prompt(hf_config, tokenizer, given) -> PromptTemplate | None:
    try:
        return prompt_for_checkpoint(hf_config, tokenizer, given)
    except (ValidationError, TypeError, ValueError) as exc:
        raise ConfigError(f"prompt: {short_reason(exc)}") from None


def _plain(name: str, tokenizer, dtype, trust_remote_code: bool, allow_pickle: bool, prompt):
    """A sequence-classification checkpoint, or a causal LM scored by yes/no; and its prompt."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        hf_config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        causal = any(a.endswith("ForCausalLM") for a in hf_config.architectures or [])
        # A causal LM's load report lists the score head as missing: it is set below.
        quiet = _quiet_transformers() if causal else contextlib.nullcontext()
        with quiet:
            model = AutoModelForSequenceClassification.from_pretrained(
                name,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_pickle else True,
                **({"num_labels": 1} if causal else {}),
            )
    except Exception as exc:  # corrupt or missing files surface as many error types
        raise ModelLoadError(f"cannot load a cross-encoder from {name!r}: {short_reason(exc)}") from exc
    prompt = _prompt(model.config, tokenizer, prompt)
    if causal:
        if prompt is None:
            raise ModelLoadError(f"{name!r} is a causal LM: it is scored by yes/no through a prompt template")
        set_answer_head(model, answer_head_weight(model, name, hf_config, tokenizer, prompt))
    if model.config.num_labels != 1:
        raise ModelLoadError(
            f"{name!r} has {model.config.num_labels} output labels; a reranker needs exactly one"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, prompt


def _merged(
    base: str,
    adapter_dir: Path,
    tokenizer,
    dtype,
    trust_remote_code: bool,
    allow_pickle: bool,
    revision: str | None = None,
):
    """Base model in ``dtype`` with the adapter (and its trained head) merged in."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    # The base's load report lists the score head as missing: the adapter brings it.
    with _quiet_transformers():
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                base,
                num_labels=1,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                revision=revision,
                pad_token_id=tokenizer.pad_token_id,
                use_safetensors=None if allow_pickle else True,
            )
            return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        except Exception as exc:  # corrupt or missing files surface as many error types
            raise ModelLoadError(
                f"cannot load the adapter in {adapter_dir} onto {base!r}: {short_reason(exc)}"
            ) from exc


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at errors only (its load reports), restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
