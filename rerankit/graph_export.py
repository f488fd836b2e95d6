"""The graphs of an export (``rerankit export --format openvino|onnx [--quantize int8]``) and
the accuracy gate that decides which of them may serve.

Each graph (``rerankit.runtimes``) scores every validation pair of the run, as does the merged
torch model in fp32; the export record keeps, per runtime, how far its logits moved (largest
|Δ logit|), the share of queries whose top 10 kept its order, its NDCG@10 and the change, and
its measured pairs/s on the exporting machine. A graph whose NDCG@10 moved by more than the
tolerance fails the gate: the export is refused (or written only when forced), and
``Reranker.load`` will not pick it unless asked to (``runtimes.pick_runtime``: on a CPU,
``backend="auto"`` runs the fastest runtime that passed).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rerankit.encoding import pad_batch
from rerankit.errors import RerankitError
from rerankit.runtimes import (
    GRAPH_FILES,
    convert,
    example_batch,
    load_graph,
    openvino_bf16_here,
    passed,
    quantize_int8,
)
from rerankit.scoring import budget_batches
from rerankit.validation import ValidationSet

log = logging.getLogger(__name__)

GATE_METRIC = "ndcg@10"
# The gate is one-sided and paired: a graph passes when the upper confidence bound of its mean
# per-query NDCG@10 loss against torch fp32 (a bootstrap over the validation queries) is at most
# the tolerance. A gain never fails it; a loss that few queries cannot tell from noise does.
DEFAULT_TOLERANCE = 0.01
CONFIDENCE = 0.95
RESAMPLES = 2000
GATE_METHOD = (
    "paired bootstrap over validation queries: one-sided upper confidence bound of the mean "
    "per-query NDCG@10 loss against torch fp32"
)
# Warm-up pairs scored before a runtime is timed (first calls compile kernels).
WARMUP_PAIRS = 16


def run_validation_set(run_dir: Path, path: str | Path | None = None) -> tuple[ValidationSet, str]:
    """The run's validation queries (rebuilt from its config, split as ``fit`` split them) or
    those of the seed-format JSONL at ``path``; and where they came from."""
    from rerankit.config import load_config
    from rerankit.data import read_records
    from rerankit.split import load_split

    if path is not None:
        records, _ = read_records(path)
        source = str(path)
    else:
        config_file = run_dir / "config.yaml"
        try:
            _, records, _ = load_split(load_config(config_file))
        except (OSError, RerankitError) as exc:
            raise RerankitError(
                f"cannot rebuild the validation set of {run_dir} from {config_file} ({exc}); "
                "give the validation pairs with --validation FILE"
            ) from None
        source = f"{config_file} (validation split)"
    if not records:
        raise RerankitError(f"{source}: no validation queries to measure the graphs on")
    return ValidationSet.from_records(records), source


def write_graphs(
    folder: Path,
    reranker,
    vset: ValidationSet,
    formats: Sequence[str],
    *,
    quantize: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    calibration_pairs: int = 512,
    calibration: Sequence[tuple[str, str]] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Write ``formats``' fp32 graphs (and int8 ones with ``quantize="int8"``) of the fp32
    ``reranker`` into ``folder``; return one record per runtime, the torch reference first.

    OpenVINO's static int8 calibrates its activation ranges on ``calibration`` pairs when
    given, else on ``calibration_pairs`` validation pairs drawn with ``seed``.
    """
    from rerankit.inference import Reranker

    queries, docs = vset.flat_pairs(reranker.score_injection)  # as the model reads them
    labels = f"{len(vset)} validation queries, {len(queries)} pairs"
    log.info("scoring %s with the torch fp32 model (the reference)", labels)
    reference, speed = _timed(reranker, queries, docs)
    reference_ndcg = _ndcg(vset, reference)
    records = [{"backend": "torch", "precision": "fp32", "file": None, "pairs_per_second": speed}]
    if not formats:
        return records
    example = example_batch(reranker.tokenizer, reranker.max_length, reranker.prompt)
    for backend in formats:
        # bf16: the fp32 graph compiled for bf16, measured where the CPU computes it natively
        bf16 = ["bf16"] if backend == "openvino" and openvino_bf16_here() else []
        precisions = ["fp32", *bf16] + ([quantize] if quantize else [])
        for precision in precisions:
            relative = GRAPH_FILES[(backend, precision)]
            target = folder / relative
            log.info("writing the %s %s graph %s", backend, precision, relative)
            pairs = None
            try:
                if precision == "bf16":
                    pass  # compiled from the fp32 file
                elif precision == "fp32":
                    convert(reranker.model, example, backend, target)
                else:
                    fp32_graph = folder / GRAPH_FILES[(backend, "fp32")]
                    if backend == "openvino":  # static: calibrated; ONNX's dynamic int8 is not
                        pairs = calibration or _sample_pairs(queries, docs, calibration_pairs, seed)
                    batches = _batches(reranker, pairs) if pairs else ()
                    quantize_int8(fp32_graph, backend, target, batches)
            except RerankitError:
                raise
            except Exception as exc:  # converters raise many error types
                raise RerankitError(f"cannot write the {backend} {precision} graph: {exc}") from exc
            graph = load_graph(target, backend, precision)
            scorer = Reranker(
                graph,
                reranker.tokenizer,
                max_length=reranker.max_length,
                long_documents=reranker.long_documents,
                prompt=reranker.prompt,
            )
            log.info("scoring %s with the %s %s graph", labels, backend, precision)
            logits, speed = _timed(scorer, queries, docs)
            agreement = _agreement(vset, reference, logits, reference_ndcg)
            within = agreement["ndcg@10_loss_upper_bound"] <= tolerance
            records.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "file": relative,
                    **({"quantization": _quantization(pairs)} if precision == "int8" else {}),
                    "pairs_per_second": speed,
                    **agreement,
                    "gate": "passed" if within else "failed",
                }
            )
    return records


def gate_record(records: Sequence[dict], vset: ValidationSet, source: str, tolerance: float) -> dict:
    """The export record's ``accuracy_gate``: the rule, the data and every runtime's figures."""
    return {
        "metric": GATE_METRIC,
        "method": GATE_METHOD,
        "confidence": CONFIDENCE,
        "resamples": RESAMPLES,
        "tolerance": tolerance,
        "reference": "torch fp32",
        "validation": {"source": source, "queries": len(vset), "pairs": vset.num_pairs},
        "runtimes": list(records),
    }


def failures(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if not passed(r)]


def _timed(reranker, queries: Sequence[str], docs: Sequence[str]) -> tuple[np.ndarray, float]:
    reranker.input_logits(queries[:WARMUP_PAIRS], docs[:WARMUP_PAIRS])
    started = time.perf_counter()
    logits = reranker.input_logits(queries, docs)[0]
    return logits, len(queries) / (time.perf_counter() - started)


def _ndcg(vset: ValidationSet, logits: np.ndarray) -> float:
    return vset.metrics(vset.split_scores(logits))[GATE_METRIC]


def _agreement(vset: ValidationSet, reference: np.ndarray, logits: np.ndarray, reference_ndcg: float) -> dict:
    top = lambda scores: list(np.argsort(-scores, kind="stable")[:10])
    same = [top(a) == top(b) for a, b in zip(vset.split_scores(reference), vset.split_scores(logits))]
    ndcg = _ndcg(vset, logits)
    per_query = lambda scores: vset.per_query(vset.split_scores(scores), GATE_METRIC)
    return {
        "max_abs_logit_delta": float(np.max(np.abs(reference - logits))) if len(logits) else 0.0,
        "identical_top10": float(np.mean(same)) if same else 1.0,
        "reference_ndcg@10": reference_ndcg,
        "ndcg@10": ndcg,
        "ndcg@10_delta": ndcg - reference_ndcg,
        "ndcg@10_loss_upper_bound": loss_upper_bound(per_query(reference), per_query(logits)),
    }


def loss_upper_bound(
    reference: Sequence[float],
    candidate: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> float:
    """The one-sided ``confidence`` upper bound of the mean of ``reference − candidate`` (one
    value per query, paired): the percentile of the means of ``resamples`` bootstrap draws of
    the queries. Negative when the candidate is better beyond doubt."""
    loss = np.asarray(reference, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    if not len(loss):
        return 0.0
    rng = np.random.default_rng(seed)
    means = np.concatenate(  # drawn in chunks: memory stays bounded for large validation sets
        [loss[rng.integers(0, len(loss), size=(n, len(loss)))].mean(axis=1) for n in _chunks(resamples)]
    )
    return float(np.quantile(means, confidence))


def _chunks(total: int, size: int = 100) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _quantization(calibration: Sequence | None) -> str:
    if not calibration:
        return "dynamic (activation ranges per batch)"
    return f"static (activation ranges calibrated on {len(calibration)} pairs)"


def _sample_pairs(queries: Sequence[str], docs: Sequence[str], n: int, seed: int) -> list[tuple[str, str]]:
    picked = random.Random(seed).sample(range(len(queries)), min(n, len(queries)))
    return [(queries[i], docs[i]) for i in sorted(picked)]


def _batches(reranker, pairs: Sequence[tuple[str, str]]) -> list[dict]:
    """Calibration pairs tokenized and cut into the batches inference runs (same budget)."""
    queries, docs = zip(*pairs)
    encoded, batches = budget_batches(
        reranker.tokenizer,
        queries,
        docs,
        max_length=reranker.max_length,
        max_tokens=reranker.max_tokens,
        max_batch=reranker.max_batch,
        prompt=reranker.prompt,
    )
    return [dict(pad_batch(reranker.tokenizer, encoded, batch, "np")) for batch in batches]
