"""Compiled CPU runtimes of a merged cross-encoder: OpenVINO and ONNX Runtime graphs.

Which library does what:

- torch → OpenVINO IR: OpenVINO's own PyTorch frontend (``openvino.convert_model``).
- torch → ONNX: torch's TorchScript exporter (``torch.onnx.export(dynamo=False)``). Its dynamo
  exporter bakes the example batch's attention mask into BERT graphs (every padded batch then
  scores wrong), so it is not used.
- int8 for OpenVINO: static, NNCF (``nncf.quantize``, transformer preset), its activation
  ranges calibrated on tokenized (query, document) pairs, the run's own validation pairs.
- int8 for ONNX: ONNX Runtime's dynamic quantization of the MatMuls (``quantize_dynamic``,
  int8 weights per channel, activation ranges taken per batch at run time). Its static
  quantization lost far more NDCG on MiniLM than the accuracy gate allows (the figures are in
  benchmarks/results/precision_notes.md). Per-batch ranges make a pair's score depend a little on the other
  pairs of its batch, so ``GraphModel.batch_dependent`` is True for it.
- optimum-intel / optimum-onnx would wrap the same steps, but pin transformers versions
  rerankit cannot run with, so they are not used.

A graph runs every batch ``rerankit.scoring`` cuts (the same token budget, the same length
sorting) and returns fp32 logits. fp32 and int8 graphs run with OpenVINO's f32 precision hint:
on a CPU with bf16 units it would otherwise compute in bf16 without saying so. The bf16 runtime
is the fp32 graph compiled with the bf16 hint (OpenVINO's own default on such CPUs); its
rounding moves with a batch's padded width. Where the CPU's kernels round the same for every
width that is a multiple of some block (16 tokens on AMX), batches are padded to that multiple
and a pair's bf16 score no longer depends on what shares its batch: ``align_padding`` checks
this on the loading machine; where it does not hold, ``GraphModel.batch_dependent`` stays True.

OpenVINO graphs are compiled for throughput: the cores split into streams (two on a 2-core
CPU), and a call's batches run one per stream at once (two infer requests per stream, taking
batches in turn, so a stream finds its next batch queued), a single batch's rows dealt out over
the streams; a small model's matrices keep one or two cores busier than all of them. Each pair
is still scored by itself (an fp32 or static int8 pair's score does not move with its
neighbours).

Beside a cross-encoder served by an OpenVINO graph, the self-ensemble's sentence encoder runs
as an OpenVINO graph too (``openvino_module``, ``rows_runner``; a run keeps it converted),
compiled the same way, its output whole embeddings instead of one logit per row.

Which graph serves is decided on the machine that loads it (``pick_runtime``): of the graphs
that passed the export's accuracy gate and whose runtime is installed (bf16 only where the CPU
computes it natively), each is compiled and timed on a short probe batch, and the fastest runs.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rerankit.errors import ModelLoadError, RerankitError, require, short_reason

GRAPH_BACKENDS = ("openvino", "onnx")
BACKENDS = ("auto", "torch", *GRAPH_BACKENDS)
# Where each graph lives inside an export folder (the layout sentence-transformers also reads).
GRAPH_FILES = {
    ("openvino", "fp32"): "openvino/openvino_model.xml",
    ("openvino", "bf16"): "openvino/openvino_model.xml",  # the fp32 graph, compiled for bf16
    ("openvino", "int8"): "openvino/openvino_model_int8.xml",
    ("onnx", "fp32"): "onnx/model.onnx",
    ("onnx", "int8"): "onnx/model_int8.onnx",
}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# OpenVINO infer requests per stream: a second keeps a batch queued behind the running one.
REQUESTS_PER_STREAM = 2
# Padded-width multiples tried, smallest first, for one from which bf16 scores stop moving,
# and about how many probe pairs of spread lengths that check scores.
ALIGNMENTS = (16, 32, 64)
PROBE_PAIRS = 24
NO_INT8_GRAPH = (
    "no int8 graph here passed the accuracy gate with its runtime installed (write one with "
    "rerankit export --format openvino|onnx --quantize int8; one that failed loads with a named "
    "backend and allow_failed_gate=True)"
)
# The pip extra that brings each backend's runtime.
EXTRAS = {"openvino": "openvino", "onnx": "onnx"}


@dataclass(frozen=True)
class GraphModel:
    """A converted cross-encoder run on the CPU: call it with a padded batch (numpy arrays by
    input name) for its fp32 logits, one per row."""

    backend: str
    precision: str
    path: Path
    input_names: tuple[str, ...]
    _run: object
    device_type: str = "cpu"
    # scores move with a batch's other rows or its padded width: ONNX's dynamic int8 (activation
    # ranges per batch) and OpenVINO bf16 where ``align_padding`` found no width multiple
    batch_dependent: bool = False
    # OpenVINO: batches run this many at once, each on its own stream of CPU cores
    # (run_parallel(batches, out)); None: one batch at a time on every core
    _run_parallel: object = None
    streams: int = 1
    # batches are padded to a multiple of this many tokens (``align_padding``); None: to their longest
    pad_multiple: int | None = None

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The logits of one padded batch; its rows split over the streams where there are several."""
        inputs = self._inputs(features)
        rows = len(inputs["input_ids"])
        if self.streams > 1 and rows > 1:
            out = np.empty(rows, dtype=np.float32)
            self.score_batches(self.stream_parts(np.arange(rows), inputs), out)
            return out
        return np.asarray(self._run(inputs), dtype=np.float32).reshape(rows, -1)[:, 0]

    def stream_parts(
        self, rows: Sequence[int], features: Mapping[str, np.ndarray]
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """One padded batch as (rows, features) parts, one per stream. Rows sorted longest
        first are dealt out in turn, so every part holds long and short ones and the streams
        finish together."""
        rows = np.asarray(rows)
        count = min(self.streams, len(rows))
        picks = [np.arange(start, len(rows), count) for start in range(count)]
        return [(rows[pick], {k: np.asarray(v)[pick] for k, v in features.items()}) for pick in picks]

    def score_batches(
        self, batches: Iterable[tuple[Sequence[int], Mapping[str, np.ndarray]]], out: np.ndarray
    ) -> None:
        """``out[rows]`` = the logits of each (rows, padded batch) of ``batches``, several at a
        time where the graph has streams; the batches are read as they are needed, so a long
        iterator holds only as many padded batches as run at once."""
        if self._run_parallel is None:
            for rows, features in batches:
                out[rows] = self._single(self._inputs(features))
            return
        self._run_parallel(((rows, self._inputs(features)) for rows, features in batches), out)

    def _inputs(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(features[name], dtype=np.int64) for name in self.input_names}

    def _single(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        logits = np.asarray(self._run(inputs), dtype=np.float32)
        return logits.reshape(len(inputs["input_ids"]), -1)[:, 0]

    def __repr__(self) -> str:
        return f"GraphModel({self.backend}, {self.precision}, {str(self.path)!r})"


def load_graph(
    path: str | Path, backend: str, precision: str = "fp32", threads: int | None = None
) -> GraphModel:
    """Compile the graph file at ``path`` for the CPU with ``backend``'s runtime."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no {backend} graph here (write one with rerankit export --format)")
    try:
        if backend == "openvino":
            graph = _openvino_graph(path, precision)
        elif backend == "onnx":
            graph = _onnx_graph(path, precision)
        else:
            raise ValueError(
                f"unknown graph backend {backend!r}; expected one of {', '.join(GRAPH_BACKENDS)}"
            )
    except RerankitError:
        raise
    except Exception as exc:  # a damaged graph surfaces as many error types
        raise ModelLoadError(f"cannot load the {backend} graph {path}: {short_reason(exc)}") from exc
    if "input_ids" not in graph.input_names or "attention_mask" not in graph.input_names:
        raise ModelLoadError(
            f"{path}: graph inputs {list(graph.input_names)}; expected some of {MODEL_INPUTS}"
        )
    return graph


def _openvino_graph(path: Path, precision: str) -> GraphModel:
    ov = require("openvino", EXTRAS["openvino"])
    core = ov.Core()
    model = core.read_model(str(path))
    ports = [port.get_names() for port in model.inputs]
    names = tuple(n for n in MODEL_INPUTS if any(n in port for port in ports))
    if len(names) != len(ports):
        raise ModelLoadError(f"{path}: graph inputs {ports}; expected some of {MODEL_INPUTS}")
    compiled, streams = _compiled_for_cpu(core, model, precision)
    output = compiled.outputs[0]
    run = lambda inputs: compiled(inputs)[output]
    return GraphModel(
        "openvino",
        precision,
        path,
        names,
        run,
        batch_dependent=precision == "bf16",
        _run_parallel=_parallel_runner(compiled, streams, REQUESTS_PER_STREAM) if streams > 1 else None,
        streams=streams,
    )


def _compiled_for_cpu(core, model, precision: str):
    """``model`` (an OpenVINO model) compiled for the CPU in ``precision`` (bf16, else f32), and
    its number of streams."""
    hint = "bf16" if precision == "bf16" else "f32"
    # THROUGHPUT: the cores split into streams, each running its own batch; a small model's
    # matrices keep one or two cores busy better than all of them (benchmarks/results/inference*.md)
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "THROUGHPUT"}
    compiled = core.compile_model(model, "CPU", config)
    return compiled, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))


def openvino_module(module, example: Mapping[str, object]):
    """A torch module called with padded batches by keyword (``example``: one such batch, its
    inputs in the graph's order), converted by OpenVINO into an fp32 model whose inputs carry
    those names. The self-ensemble's sentence encoder is converted this way."""
    import torch

    ov = require("openvino", EXTRAS["openvino"])
    names = list(example)
    # tracing warns about Python branches on the example's shapes; the embeddings are checked
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=dict(example))
    for port, name in zip(model.inputs, names):
        port.get_tensor().set_names({name})
    return model


def save_openvino(model, path: Path) -> None:
    """``model`` (an OpenVINO model) written to ``path`` (.xml, and its .bin) in fp32."""
    ov = require("openvino", EXTRAS["openvino"])
    ov.save_model(model, str(path), compress_to_fp16=False)


def read_openvino(path: Path):
    """The OpenVINO model at ``path`` and its input names, in order; ValueError when an input
    is none of a BERT-like encoder's (``MODEL_INPUTS``)."""
    ov = require("openvino", EXTRAS["openvino"])
    model = ov.Core().read_model(str(path))
    names = [next((n for n in MODEL_INPUTS if n in port.get_names()), None) for port in model.inputs]
    if None in names:
        raise ValueError(f"{path}: inputs {[p.get_names() for p in model.inputs]}; expected {MODEL_INPUTS}")
    return model, names


def rows_runner(model, precision: str):
    """``run(batches, out)`` of ``model`` (an OpenVINO model returning one row of floats per
    input row) compiled for the CPU in ``precision`` (fp32 or bf16): for each ``(rows, inputs)``
    of ``batches`` (numpy int64 arrays by input name), ``out[rows]`` = the model's rows, several
    batches at once over the CPU's streams."""
    ov = require("openvino", EXTRAS["openvino"])
    compiled, streams = _compiled_for_cpu(ov.Core(), model, precision)
    return _parallel_runner(compiled, max(streams, 1), REQUESTS_PER_STREAM, column=None)


def _parallel_runner(compiled, streams: int, per_stream: int = 1, column: int | None = 0):
    """run_parallel(batches, out) over ``streams × per_stream`` infer requests of ``compiled``,
    each batch's output written into ``out[rows]``: its ``column`` (a cross-encoder's logit), or
    whole rows (an embedding) when ``column`` is None.

    The requests take batches in turn, and a request's logits are read on the caller's thread
    before it takes its next batch. With more than one request per stream, a stream that
    finishes a batch starts the next one queued for it without waiting for the caller. No
    Python callback runs on OpenVINO's threads: one that needs the GIL while the interpreter
    frees a compiled model (joining those threads with the GIL held) would deadlock."""
    import contextlib
    import threading

    lock = threading.Lock()  # one call at a time owns the requests
    slots = streams * per_stream
    requests = [[compiled.create_infer_request() for _ in range(slots)]]

    def run_parallel(batches, out: np.ndarray) -> None:
        def collect(request, rows) -> None:
            request.wait()  # waits without the GIL; raises the batch's error
            values = np.asarray(request.get_output_tensor(0).data, dtype=np.float32).reshape(len(rows), -1)
            out[rows] = values if column is None else values[:, column]

        with lock:
            owned = requests[0]
            pending: list = [None] * slots  # the rows each request is scoring
            try:
                for turn, (rows, inputs) in enumerate(batches):
                    slot = turn % slots
                    if pending[slot] is not None:
                        collect(owned[slot], pending[slot])
                    owned[slot].start_async(inputs)
                    pending[slot] = rows
                for slot, rows in enumerate(pending):
                    if rows is not None:
                        collect(owned[slot], rows)
            except BaseException:
                # a request that failed (or still runs) is not reused: the next call gets fresh ones
                for slot, rows in enumerate(pending):
                    if rows is not None:  # the error already on its way is the one that counts
                        with contextlib.suppress(Exception):
                            owned[slot].wait()
                requests[0] = [compiled.create_infer_request() for _ in range(slots)]
                raise

    return run_parallel


def align_padding(graph: GraphModel, tokenizer, max_length: int, prompt=None) -> GraphModel:
    """``graph`` with batches padded to the smallest width multiple from which its scores stop
    depending on a batch's width and its other rows (``steady_multiple``, on probe pairs whose
    lengths spread over the whole window), when this machine's kernels have one; ``graph``
    unchanged when it is not batch-dependent or none holds here. A check that cannot run warns
    and leaves the graph as it was."""
    if not graph.batch_dependent or graph.backend != "openvino":
        return graph
    from rerankit.encoding import encode_pairs, pad_batch

    # documents from one word to past the window: pair lengths spread over every multiple
    step = max(1, max_length // PROBE_PAIRS)
    docs = [" ".join(["probe"] * count) for count in range(1, max_length + step, step)]
    try:
        encoded = encode_pairs(
            tokenizer,
            ["a probe question"] * len(docs),
            docs,
            max_length,
            padding=False,
            return_tensors=None,
            prompt=prompt,
        )
    except ValueError as exc:  # the probe question fills the window
        return _unaligned(graph, exc)
    rows = sorted(range(len(docs)), key=lambda i: len(encoded["input_ids"][i]))

    def logits(picked: list[int], multiple: int, width: int | None) -> np.ndarray:
        return graph(pad_batch(tokenizer, encoded, [rows[i] for i in picked], "np", multiple, width))

    try:
        multiple = steady_multiple(logits, len(rows), max_length)
    except Exception as exc:  # a probe that cannot run (no pad token): as it was
        return _unaligned(graph, exc)
    if multiple is None:
        return graph
    return dataclasses.replace(graph, batch_dependent=False, pad_multiple=multiple)


def steady_multiple(
    score: Callable[[list[int], int, int | None], np.ndarray],
    count: int,
    max_length: int,
    unpadded: bool = False,
) -> int | None:
    """The smallest padded-width multiple from which ``score``'s rows are bit for bit the same
    whatever shares their batch; None when none is, on this machine.

    ``score(probes, multiple, width)`` scores the probes ``probes`` (indices into ``count``
    probes, shortest first) in batches padded to ``multiple`` tokens, or to ``width`` when given.
    Multiples of ``ALIGNMENTS`` that divide ``max_length`` are tried (padding must not reach past
    the window the model was checked for); with ``unpadded``, where none does, unpadded batches
    (multiple 1), whose few probe widths say less about the others. A multiple holds when each
    probe scored alone, the shorter half together, all together, and every probe twice, reversed,
    at the whole window, all agree."""
    probes = list(range(count))
    for multiple in [m for m in ALIGNMENTS if max_length % m == 0] or ([1] if unpadded else []):
        alone = np.concatenate([score([i], multiple, None) for i in probes])
        half = score(probes[: count // 2], multiple, None)
        together = score(probes, multiple, None)
        large = score((probes + probes)[::-1], multiple, max_length)[::-1]
        others = (half, together, large[:count], large[count:])
        if all(np.array_equal(alone[: len(other)], other) for other in others):
            return multiple
    return None


def _unaligned(graph: GraphModel, exc: Exception) -> GraphModel:
    warnings.warn(
        f"{graph.path}: the padding check of its {graph.precision} graph could not run "
        f"({short_reason(exc)}); its scores move with what shares their batch",
        RuntimeWarning,
        stacklevel=3,
    )
    return graph


def openvino_bf16_here() -> bool:
    """Whether OpenVINO computes bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return False
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _onnx_graph(path: Path, precision: str) -> GraphModel:
    ort = require("onnxruntime", EXTRAS["onnx"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = tuple(i.name for i in session.get_inputs())
    unknown = [n for n in names if n not in MODEL_INPUTS]
    if unknown:
        raise ModelLoadError(f"{path}: unexpected graph inputs {unknown}; expected some of {MODEL_INPUTS}")
    run = lambda inputs: session.run(None, inputs)[0]
    return GraphModel("onnx", precision, path, names, run, batch_dependent=precision == "int8")


def _logits_module(model, names: Sequence[str]):
    """The classifier with keyword inputs and its logits as the one output, for tracing."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {"token_type_ids": token_type_ids} if "token_type_ids" in names else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return Logits().eval()


def example_batch(tokenizer, max_length: int, prompt=None) -> dict:
    """Two pairs of different lengths, padded: the tracing input (shapes stay dynamic)."""
    from rerankit.encoding import encode_pairs

    queries, docs = ["a question", "another question here"], ["a short document", "a longer document " * 8]
    batch = encode_pairs(tokenizer, queries, docs, max_length, prompt=prompt)
    return {name: batch[name] for name in MODEL_INPUTS if name in batch}


def convert(model, example: Mapping, backend: str, out: Path) -> Path:
    """Write ``model`` (a torch sequence classifier, fp32) as a ``backend`` fp32 graph at ``out``."""
    import torch

    names = list(example)
    wrapper = _logits_module(model.float().eval(), names)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Tracing warns about Python branches on shapes of the example (causal flags, mask
    # padding) that are constant for every cross-encoder batch; scores are checked instead.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "openvino":
            ov = require("openvino", EXTRAS["openvino"])
            graph = ov.convert_model(wrapper, example_input=dict(example))
            for port, name in zip(graph.inputs, names):
                port.get_tensor().set_names({name})
            ov.save_model(graph, str(out), compress_to_fp16=False)
        elif backend == "onnx":
            require("onnx", EXTRAS["onnx"])
            dims = {0: "batch", 1: "sequence"}
            torch.onnx.export(
                wrapper,
                (),
                str(out),
                kwargs=dict(example),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**dict.fromkeys(names, dims), "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        else:
            raise ValueError(f"unknown graph backend {backend!r}")
    return out


def quantize_int8(
    fp32_graph: Path, backend: str, out: Path, calibration: Iterable[Mapping[str, np.ndarray]] = ()
) -> Path:
    """int8 of ``fp32_graph`` written to ``out``: OpenVINO's static, its activation ranges
    calibrated on ``calibration`` (padded batches, numpy arrays by input name); ONNX's dynamic
    (no calibration)."""
    if backend == "openvino":
        batches = [{k: np.asarray(v, dtype=np.int64) for k, v in b.items()} for b in calibration]
        if not batches:
            raise RerankitError("static int8 calibration needs at least one batch of pairs")
        ov = require("openvino", EXTRAS["openvino"])
        nncf = require("nncf", EXTRAS["openvino"])
        model = ov.Core().read_model(str(fp32_graph))
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
        )
        ov.save_model(quantized, str(out), compress_to_fp16=False)
        return out
    if backend == "onnx":
        require("onnxruntime", EXTRAS["onnx"])
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = out.with_name(out.stem + ".prepared.onnx")
        try:
            quant_pre_process(str(fp32_graph), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(
                str(prepared),
                str(out),
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
        finally:
            prepared.unlink(missing_ok=True)
        return out
    raise ValueError(f"unknown graph backend {backend!r}")


def describe(record: Mapping) -> str:
    """One line of a runtime's figures, e.g. for the export's report or a refusal."""
    name = f"{record['backend']} {record['precision']}"
    if record["backend"] == "torch":
        return f"{name}: {record['pairs_per_second']:.1f} pairs/s (reference)"
    figure = lambda key, spec: format(record[key], spec) if isinstance(record.get(key), (int, float)) else "?"
    return (
        f"{name}: {record['pairs_per_second']:.1f} pairs/s, NDCG@10 {figure('ndcg@10', '.4f')} "
        f"({figure('ndcg@10_delta', '+.4f')}, loss ≤ {figure('ndcg@10_loss_upper_bound', '.4f')} at 95%), "
        f"identical top-10 {figure('identical_top10', '.0%')}, "
        f"max |Δ logit| {figure('max_abs_logit_delta', '.4g')}, gate {record['gate']}"
    )


def passed(record: Mapping) -> bool:
    """Whether a runtime may run unasked: the torch reference, or a graph that passed its gate."""
    return record["backend"] == "torch" or record.get("gate") == "passed"


def runtime_records(gate: Mapping | None, source: Path) -> list[dict]:
    """An export's ``accuracy_gate`` runtimes, checked; ModelLoadError naming the field
    otherwise. Each graph's ``file`` is the layout's (``GRAPH_FILES``), never the record's own,
    so a record cannot point outside its folder."""
    if gate is None:
        return []
    runtimes = gate.get("runtimes")
    if not isinstance(runtimes, list):
        raise ModelLoadError(
            f"{source}: accuracy_gate.runtimes: expected a list, got {type(runtimes).__name__}"
        )
    records = []
    for i, record in enumerate(runtimes):
        where = f"{source}: accuracy_gate.runtimes[{i}]"
        if not isinstance(record, Mapping):
            raise ModelLoadError(f"{where}: expected an object, got {type(record).__name__}")
        key = (record.get("backend"), record.get("precision"))
        if key != ("torch", "fp32") and key not in GRAPH_FILES:
            raise ModelLoadError(f"{where}: unknown runtime {key[0]!r} {key[1]!r}")
        if key[0] != "torch" and record.get("gate") not in ("passed", "failed"):
            raise ModelLoadError(f"{where}.gate: expected 'passed' or 'failed', got {record.get('gate')!r}")
        speed = record.get("pairs_per_second")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed >= 0:
            raise ModelLoadError(f"{where}.pairs_per_second: expected a number, got {speed!r}")
        records.append({**record, "file": GRAPH_FILES.get(key)})
    return records


@dataclass
class RuntimeChoice:
    """The runtime ``Reranker.load`` runs and why (``Reranker.backend_info`` reports it)."""

    record: dict  # the accuracy gate's record of the runtime
    reason: str
    graph: GraphModel  # compiled, ready to run
    # pairs/s of each candidate on the probe batch, measured on this machine at load
    measured: dict[str, float] = field(default_factory=dict)

    def info(self) -> dict:
        record = self.record
        return {
            "backend": record["backend"],
            "precision": record["precision"],
            "file": record.get("file"),
            "reason": self.reason,
            "measured_pairs_per_second": dict(self.measured),
            **({"gate": record["gate"]} if "gate" in record else {}),
        }


def runtime_name(record: Mapping) -> str:
    return f"{record['backend']} {record['precision']}"


def pick_runtime(
    gate: Mapping | None,
    folder: Path,
    backend: str,
    precision: str | None,
    allow_failed_gate: bool,
    source: Path,
    tokenizer=None,
    max_length: int | None = None,
) -> RuntimeChoice | None:
    """The runtime ``Reranker.load`` should run from an accuracy gate (an export's or a run
    folder's), its graph compiled; None for the torch model.

    ``backend="auto"``: of the graphs of ``precision`` (any when None) that passed the gate,
    have their file and their runtime installed (bf16: where the CPU computes it natively),
    the fastest on this machine: each is compiled and timed on a probe batch of ``tokenizer``'s
    pairs (``probe_batch``) when there are several; torch when none passed. A named graph
    backend: its fastest graph of ``precision`` that passed, by the export's figures, or any
    with ``allow_failed_gate``; None when it has none (converted at load, fp32)."""
    runtimes = runtime_records(gate, source)
    if backend == "torch":
        return None
    present = lambda r: r["file"] is None or (folder / r["file"]).is_file()
    speed = lambda r: r["pairs_per_second"]
    wanted = lambda r: precision is None or r["precision"] == precision
    if backend == "auto":
        usable = [
            r
            for r in runtimes
            if r["backend"] != "torch" and passed(r) and wanted(r) and present(r) and _runs_here(r)
        ]
        if precision == "int8" and not usable:
            raise ModelLoadError(f"{source}: {NO_INT8_GRAPH}")
        if not usable:
            return None
        if len(usable) == 1 or tokenizer is None:
            best = max(usable, key=speed)
            reason = "the fastest graph that passed the accuracy gate, measured at export"
            return RuntimeChoice(best, reason, graph=_compiled(best, folder))
        probe = probe_batch(tokenizer, min(max_length or PROBE_LENGTH, PROBE_LENGTH))
        return fastest_here(usable, folder, probe)
    mine = [r for r in runtimes if r["backend"] == backend and wanted(r)]
    if precision == "bf16" and not (mine and openvino_bf16_here()):
        raise ModelLoadError(
            f"{source}: no bf16 graph measured here, or this CPU has no bf16 units "
            "(an export written on a CPU with AVX512-BF16 or AMX measures one)"
        )
    if not mine:
        if precision == "int8":
            raise ModelLoadError(f"{source}: {NO_INT8_GRAPH}")
        return None
    passing = [r for r in mine if passed(r)]
    if not passing and not allow_failed_gate:
        raise ModelLoadError(
            f"{source}: the {backend} graphs here failed the accuracy gate on the run's validation set ("
            + "; ".join(describe(r) for r in mine)
            + "); load one anyway with allow_failed_gate=True (--allow-failed-gate)"
        )
    chosen = max(passing or mine, key=speed)
    if not present(chosen):
        raise ModelLoadError(f"{source}: lists the graph {chosen['file']}, which is missing from {folder}")
    reason = f"asked for backend {backend!r}" + ("" if passed(chosen) else " with allow_failed_gate")
    return RuntimeChoice(chosen, reason, graph=_compiled(chosen, folder))


def _compiled(record: Mapping, folder: Path) -> GraphModel:
    return load_graph(folder / record["file"], record["backend"], record["precision"])


# Timed passes of the probe batch per candidate, after one untimed pass that compiles kernels.
PROBE_PASSES = 3
# The probe's longest pair in tokens: a retrieved passage's length, not the model's limit.
PROBE_LENGTH = 256


def fastest_here(
    candidates: Sequence[dict],
    folder: Path,
    probe: Mapping[str, np.ndarray],
    timer: Callable = time.perf_counter,
) -> RuntimeChoice:
    """Compile each candidate graph and time it on ``probe`` (its best of a few passes, so a
    busy moment does not decide); the fastest, kept compiled."""
    rows = len(probe["input_ids"])
    graphs, measured = {}, {}
    for record in candidates:
        graph = _compiled(record, folder)
        graph(probe)
        best = float("inf")
        for _ in range(PROBE_PASSES):
            started = timer()
            graph(probe)
            best = min(best, timer() - started)
        name = runtime_name(record)
        graphs[name], measured[name] = graph, round(rows / max(best, 1e-9), 1)
    winner = max(candidates, key=lambda r: measured[runtime_name(r)])
    reason = f"the fastest on this machine of the {len(candidates)} graphs that passed the accuracy gate"
    return RuntimeChoice(winner, reason, graphs[runtime_name(winner)], measured)


def probe_batch(tokenizer, max_length: int, prompt=None, pairs: int = 8) -> dict:
    """A padded batch of ``pairs`` pairs about as long as a retrieved passage, for timing."""
    from rerankit.encoding import encode_pairs

    doc = " ".join(["a retrieved passage of plain words to time each runtime"] * 16)
    queries = ["a question to time the runtimes"] * pairs
    batch = encode_pairs(tokenizer, queries, [doc] * pairs, max_length, return_tensors="np", prompt=prompt)
    return {name: np.asarray(batch[name]) for name in MODEL_INPUTS if name in batch}


def _runs_here(record: Mapping) -> bool:
    """Whether ``record``'s runtime is installed, and for bf16, native on this CPU."""
    if not _installed(record["backend"]):
        return False
    return record["precision"] != "bf16" or openvino_bf16_here()


def _installed(backend: str) -> bool:
    import importlib.util

    module = {"torch": "torch", "openvino": "openvino", "onnx": "onnxruntime"}.get(backend)
    return module is not None and importlib.util.find_spec(module) is not None
