"""A finished run's CPU graphs, written at the end of ``fit`` so the run folder serves at its fastest.

With ``graphs: auto`` and a graph runtime installed (OpenVINO, else ONNX Runtime), the kept
model, merged in fp32, is converted into ``graphs/`` of the run folder: its fp32 graph, the same
graph compiled for bf16 where the CPU computes bf16 natively, and an int8 one (OpenVINO's
static, calibrated on validation pairs; ONNX Runtime's dynamic). Each passes or fails the
accuracy gate of ``rerankit.graph_export`` on the validation queries (each query's first
``GATE_DEPTH`` candidates), and the gate is recorded in ``run.json``: ``Reranker.load(run)``
then runs, on a CPU, the fastest graph here that passed (``rerankit.runtimes.pick_runtime``).

Decoder LLM runs are left to ``rerankit export --format``: their graphs are large and slow to
convert, and they are served on GPUs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path

from rerankit import run_folder
from rerankit.graph_export import DEFAULT_TOLERANCE, gate_record, write_graphs
from rerankit.validation import ValidationSet

log = logging.getLogger(__name__)

# The candidates per validation query the gate scores: the ranks NDCG@10 reads, at a fraction of
# the fit time a deployed depth would cost.
GATE_DEPTH = 10
CALIBRATION_PAIRS = 256


def graph_backend() -> str | None:
    """The graph runtime installed here, OpenVINO first (static int8, bf16); None without one."""
    for backend, module in (("openvino", "openvino"), ("onnx", "onnxruntime")):
        if importlib.util.find_spec(module) is not None:
            return backend
    return None


def write_run_graphs(out: Path, cfg, vset: ValidationSet, *, decoder: bool, injection=None) -> dict | None:
    """Write the run's gated graphs into ``out/graphs`` and return the gate record for
    ``run.json``; None when ``graphs: none``, for a decoder, or without a graph runtime."""
    backend = graph_backend()
    if cfg.graphs == "none" or decoder or backend is None:
        if cfg.graphs == "auto" and not decoder and backend is None:
            log.info("no graph runtime (rerankit[openvino] or rerankit[onnx]): the run serves torch")
        return None
    import torch

    from rerankit.inference import Reranker, trained_weights

    model, tokenizer, prompt = trained_weights(
        out / run_folder.MODEL_DIR,
        cfg.model.name_or_path,
        cfg.lora.enabled,
        cfg.model.revision,
        torch.float32,
        "none",
        cfg.model.trust_remote_code,
    )
    reranker = Reranker(
        model,
        tokenizer,
        max_length=cfg.model.max_length,
        long_documents=cfg.model.long_documents,
        prompt=prompt,
        score_injection=injection,
    )
    gated = vset.at_depth(GATE_DEPTH)
    final = out / run_folder.GRAPHS_DIR
    staging = final.with_name(final.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    log.info("writing the %s graphs of the model, measured on %d validation queries", backend, len(gated))
    records = write_graphs(
        staging,
        reranker,
        gated,
        [backend],
        quantize="int8",
        calibration_pairs=CALIBRATION_PAIRS,
        seed=cfg.seed,
    )
    model.config.save_pretrained(staging)  # read at load in place of the weights
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    source = f"validation queries, first {GATE_DEPTH} candidates each"
    gate = gate_record(records, gated, source, DEFAULT_TOLERANCE)
    for record in records[1:]:
        log.info("graph %s %s: gate %s", record["backend"], record["precision"], record["gate"])
    return gate
