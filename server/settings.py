"""Server settings: one small frozen object, filled from ``rerankit serve`` options."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from rerankit.errors import ConfigError

# The smallest value of each numeric setting (None, where allowed, means "the default").
LOWEST = {
    "max_documents": 1,
    "max_body_bytes": 1,
    "max_document_chars": 1,
    "max_query_chars": 1,
    "max_queue_pairs": 1,
    "max_request_pairs": 1,
    "max_batch_tokens": 1,
    "batch_wait_ms": 0,
    "max_pairs_per_round": 1,
    "request_read_timeout_s": 0.1,
    "keep_alive_s": 1,
    "max_connections": 1,
    "retry_after_s": 0,
}


@dataclass(frozen=True)
class ServerSettings:
    # Run folder, exported folder or HF id of the cross-encoder, served under model_name and
    # answering to any requested name; or None with ``models`` given.
    model: str | None = None
    # Name echoed in responses and accepted in requests' "model" field (any value is accepted).
    model_name: str = "rerankit"
    # Several named models (rerankit.server.model_specs.ModelSpec): a request's "model" field
    # picks one, the first answers requests that name none.
    models: tuple = ()
    # "auto": bf16 where the hardware runs it natively, else fp32.
    dtype: str = "auto"
    device: str | None = None
    # Only the operator turns these on: run Python code shipped with the model (auto_map), or
    # read pickle weights (.bin/.pt) instead of safetensors.
    trust_remote_code: bool = False
    allow_pickle: bool = False
    # Long documents (fields of config.model.long_documents, e.g. {"mode": "windows"});
    # None: the run folder's own setting.
    long_documents: dict | None = None
    # Prompt template of a decoder LLM ("qwen3", "plain", "none", "auto"); None: the model's own.
    prompt: str | None = None
    # Runtime ("auto", "torch", "openvino", "onnx"; rerankit.runtimes) and whether an exported
    # graph that failed its accuracy gate may run.
    backend: str = "auto"
    allow_failed_gate: bool = False
    # LoRA runs of one base: "always" loads each merged into its own copy of the base, "never"
    # keeps one copy of the base with the adapters beside it (rerankit.shared_adapters), "auto"
    # shares where it pays (several runs of a base on a GPU, or a large base).
    merge: str = "auto"
    # auto: the run's self-ensemble (rerankit.ensemble) when it has one; none: the cross-encoder alone
    ensemble: str = "auto"
    # Bearer token required on the rerank routes; None leaves them open.
    api_key: str | None = None
    # Limits: documents per request, request body size, characters per document and query.
    max_documents: int = 1000
    max_body_bytes: int = 5_000_000
    max_document_chars: int = 100_000
    max_query_chars: int = 10_000
    # A pair is one (query, document window) the model scores: a document that fits the
    # model's window is one pair, a longer one under long_documents windows one per window.
    # Pairs waiting in the inference queue before new requests get 429, and pairs one request
    # may cost (more: 413).
    max_queue_pairs: int = 20_000
    max_request_pairs: int = 4_000
    # Padded tokens per forward pass (None: the Reranker's default for the device).
    max_batch_tokens: int | None = None
    # Merge pairs of concurrent requests into shared batches. None (auto): only when a pair's
    # score does not depend on its batch neighbours (Reranker.neighbour_independent); under
    # torch bf16/fp16 it moves with them (benchmarks/results/neighbour_drift*.md), so merging
    # would let one client's request change another's scores.
    cross_batching: bool | None = None
    # Longest wait for other requests to join a batch, in milliseconds.
    batch_wait_ms: float = 2.0
    # Pairs scored at most per worker round: a larger request is scored in chunks, shared
    # fairly with the other requests waiting, so this bounds how long a small request waits.
    max_pairs_per_round: int = 512
    # Connections: a request (headers and body) must arrive within this many seconds of the
    # connection opening or the previous response; idle keep-alive connections close after
    # keep_alive_s; past max_connections open connections (and requests) uvicorn answers 503.
    request_read_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_connections: int = 2048
    # Seconds clients are asked to wait after a 429.
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if self.merge not in ("auto", "always", "never"):
            raise ConfigError(f"ServerSettings.merge: expected auto, always or never, got {self.merge!r}")
        if (self.model is None) == (not self.models):
            raise ConfigError("ServerSettings: give either model (one model) or models (named models)")
        # A zero or negative limit would refuse every request, never batch, or never time out.
        for field in fields(self):
            value, lowest = getattr(self, field.name), LOWEST.get(field.name)
            if lowest is None or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"ServerSettings.{field.name}: expected a number, got {value!r}")
            if not math.isfinite(value) or value < lowest:
                raise ConfigError(
                    f"ServerSettings.{field.name}: must be a finite number >= {lowest}, got {value!r}"
                )
