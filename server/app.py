"""The Litestar app: ``create_app(settings)``.

Routes: ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (alias), ``POST /rerank``
(Cohere body or text-embeddings-inference body), ``GET /health``, ``GET /ping``,
``GET /metrics`` (Prometheus) and the OpenAPI schema under ``/schema``.

The model loads in the background at start-up (so ``/health`` answers 503 until it is loaded
and warmed), then lives in one inference worker thread (``worker.py``). Scores are
``sigmoid(logit)`` in [0, 1] unless the request asks for raw scores. Bad input answers 4xx
with a JSON body naming the field; a full queue answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
from litestar import Litestar, MediaType, Request, Response, get, head, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ServiceUnavailableException,
    TooManyRequestsException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig

from rerankit.context import ContextError, RankContext
from rerankit.encoding import QueryTooLongError
from rerankit.errors import ModelLoadError, RerankitError, short_reason
from rerankit.server.prometheus import CONTENT_TYPE_LATEST, ServerMetrics, http_metrics_config
from rerankit.server.schemas import (
    RerankRequest,
    RerankResponse,
    RerankResultItem,
    ResultDocument,
    TEIRerankRequest,
    TEIResultItem,
)
from rerankit.server.settings import ServerSettings
from rerankit.server.text_prep import RequestTokenizer
from rerankit.server.worker import InferenceWorker, Overloaded

log = logging.getLogger(__name__)
WARMUP_PAIRS = [
    ("warm-up query", "a short warm-up document"),
    ("warm-up query", "a longer warm-up document " * 20),
]


def _field_error(key: str, message: str) -> ValidationException:
    return ValidationException(detail=f"{key}: {message}", extra=[{"key": key, "message": message}])


def _api_key_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """With an API key set, every route but the health probes (opt ``public``) needs it,
    the OpenAPI schema and /metrics included."""
    expected = connection.app.state.settings.api_key
    if expected is None or handler.opt.get("public"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise NotAuthorizedException(
            detail="missing or wrong API key (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": 'Bearer realm="rerankit"'},
        )


def _ready(state: State):
    if state.reranker is None:
        reason = f": {state.load_error}" if state.load_error else " (still loading)"
        raise ServiceUnavailableException(detail=f"model not ready{reason}", headers={"Retry-After": "5"})
    return state.reranker


def _check_request(
    settings: ServerSettings,
    query: str,
    docs: list[str],
    docs_field: str,
    top_n: int | None,
    max_tokens_per_doc: int | None,
) -> None:
    """The checks that need no model: 400 (or 413) naming the field."""
    if not query.strip():
        raise _field_error("query", "must not be empty")
    if len(query) > settings.max_query_chars:
        raise _field_error("query", f"longer than {settings.max_query_chars} characters")
    if not docs:
        raise _field_error(docs_field, "must hold at least one document")
    if len(docs) > settings.max_documents:
        raise _field_error(
            docs_field, f"at most {settings.max_documents} documents per request, got {len(docs)}"
        )
    most = min(settings.max_request_pairs, settings.max_queue_pairs)
    if len(docs) > most:  # every document is at least one pair: no need to count windows
        raise HTTPException(
            status_code=413, detail=f"{docs_field}: at most {most} documents fit one request, got {len(docs)}"
        )
    for i, doc in enumerate(docs):
        if len(doc) > settings.max_document_chars:
            raise _field_error(f"{docs_field}[{i}]", f"longer than {settings.max_document_chars} characters")
        if not doc.strip():
            raise _field_error(f"{docs_field}[{i}]", "empty or whitespace-only: nothing to score")
    if top_n is not None and top_n < 1:
        raise _field_error("top_n", f"must be at least 1, got {top_n}")
    if max_tokens_per_doc is not None and not 1 <= max_tokens_per_doc <= settings.max_document_chars:
        raise _field_error(
            "max_tokens_per_doc",
            f"must be between 1 and {settings.max_document_chars}, got {max_tokens_per_doc}",
        )


def _check_cost(settings: ServerSettings, pairs: int, docs_field: str) -> None:
    """413 for a request that costs more pairs than one request may, or than the whole queue
    holds (it could never be queued: not a "retry later")."""
    most = min(settings.max_request_pairs, settings.max_queue_pairs)
    if pairs > most:
        raise HTTPException(
            status_code=413,
            detail=f"{docs_field}: {pairs} document windows to score, at most {most} fit one "
            "request; send fewer or shorter documents",
        )


async def _wait_disconnect(request: Request) -> None:
    """Resolves when the client goes away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _rank(
    request: Request,
    state: State,
    query: str,
    docs: list[str],
    *,
    top_n: int | None,
    max_tokens_per_doc: int | None,
    raw: bool,
    docs_field: str,
    first_stage: list[float] | None = None,
) -> tuple[list[tuple[int, float, float | None]], int]:
    """Validate, score through the worker, and return (index, score, fused score or None)
    best first, with the number of document windows scored."""
    settings: ServerSettings = state.settings
    _check_request(settings, query, docs, docs_field, top_n, max_tokens_per_doc)
    reranker = _ready(state)
    try:  # what the model needs beside the pairs, checked once; a score-injection model reads it
        context = RankContext.build(len(docs), first_stage, field="first_stage_scores")
        queries = reranker.model_queries(query, context)
    except ContextError as exc:
        raise _field_error(exc.field, exc.message) from None
    prep: RequestTokenizer = state.request_tokenizer
    # Tokenizing is CPU work: off the event loop, with the request side's own tokenizer. The
    # query is checked here, so an over-long one fails its own request, never a merged round.
    try:
        await asyncio.to_thread(prep.check_query, max(queries, key=len))
    except QueryTooLongError as exc:
        raise _field_error("query", str(exc)) from None
    if max_tokens_per_doc is not None:
        docs = await asyncio.to_thread(prep.truncate, docs, max_tokens_per_doc)
    # A request costs the pairs the model will score: one per document window.
    try:
        costs = await asyncio.to_thread(prep.count_windows, queries, docs)
    except QueryTooLongError as exc:
        raise _field_error("query", str(exc)) from None
    _check_cost(settings, int(costs.sum()), docs_field)
    # the self-ensemble's signals, computed beside the cross-encoder's batches
    # The self-ensemble's signals, beside the cross-encoder's batches, one request at a time on a
    # thread of their own (never more threads competing with the worker for the cores).
    signals = asyncio.get_running_loop().run_in_executor(
        state.signal_pool, reranker.with_signals, query, docs, context
    )
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    scores = None
    try:
        scores = await state.worker.score(queries, docs, disconnected=watcher, costs=costs)
    except Overloaded:
        raise TooManyRequestsException(
            detail="the inference queue is full; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        ) from None
    except QueryTooLongError as exc:  # checked above; the model's own check agrees
        raise _field_error("query", str(exc)) from None
    finally:
        watcher.cancel()
        if scores is None:  # refused, failed or the client left: nobody reads the signals
            signals.cancel()
    if scores is None:  # client gone: nobody reads the answer
        raise HTTPException(status_code=499, detail="client closed the request")
    # The worker answers one row per document: (logit, windows scored).
    logits, windows = scores[:, 0], int(scores[:, 1].sum())
    results = reranker.results(query, docs, logits, await signals, top_n, raw=raw)
    return [(r.index, r.score, r.fused_score) for r in results], windows


def _document_texts(documents: list) -> list[str]:
    """Cohere's documents are strings or ``{"text": ...}`` objects."""
    return [d if isinstance(d, str) else d.text for d in documents]


async def _cohere(request: Request, state: State, data: RerankRequest) -> RerankResponse:
    docs = _document_texts(data.documents)
    ranked, windows = await _rank(
        request,
        state,
        data.query,
        docs,
        top_n=data.top_n,
        max_tokens_per_doc=data.max_tokens_per_doc,
        raw=bool(data.raw_scores),
        docs_field="documents",
        first_stage=data.first_stage_scores,
    )
    results = [
        RerankResultItem(i, s, ResultDocument(docs[i]) if data.return_documents else None, fused)
        for i, s, fused in ranked
    ]
    return RerankResponse(
        id=str(uuid.uuid4()),
        results=results,
        meta={
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1},
            "model": state.settings.model_name,
            "windows_scored": windows,
        },
    )


@post(
    ["/v2/rerank", "/v1/rerank"],
    status_code=200,
    summary="Rerank documents (Cohere v2 shape)",
)
async def rerank_cohere(request: Request, state: State, data: RerankRequest) -> RerankResponse:
    return await _cohere(request, state, data)


_MSGSPEC_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _convert(data: dict[str, Any], kind: type):
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _MSGSPEC_PATH.search(message)
        key = match.group("path") if match else "body"
        raise _field_error(key or "body", _MSGSPEC_PATH.sub("", message)) from None


@post(
    "/rerank",
    status_code=200,
    summary="Rerank documents: Cohere body, or text-embeddings-inference body (query, texts)",
)
async def rerank_any(request: Request, state: State, data: dict[str, Any]) -> Any:
    if "texts" not in data:
        return await _cohere(request, state, _convert(data, RerankRequest))
    tei = _convert(data, TEIRerankRequest)
    ranked, _ = await _rank(
        request,
        state,
        tei.query,
        tei.texts,
        top_n=None,
        max_tokens_per_doc=None,
        raw=bool(tei.raw_scores),
        docs_field="texts",
        first_stage=tei.first_stage_scores,
    )
    return [TEIResultItem(i, s, tei.texts[i] if tei.return_text else None) for i, s, _ in ranked]


@get("/health", summary="200 once the model is loaded and warmed, else 503", opt={"public": True})
async def health(state: State) -> dict[str, str]:
    _ready(state)
    return {"status": "ok", "model": state.settings.model_name}


@head("/health", summary="/health without a body, for probes that send HEAD", opt={"public": True})
async def health_head(state: State) -> None:
    _ready(state)


@get("/ping", summary="Liveness", opt={"public": True})
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(state: State) -> Response:
    state.metrics.queue_pairs.set(state.worker.queued_pairs if state.worker else 0)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _bad_body(_: Request, exc: Exception) -> Response:
    """Bodies the JSON decoder cannot read: bytes that are not UTF-8, nesting too deep."""
    reason = "not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else "JSON nested too deeply"
    return Response(
        {"status_code": 400, "detail": f"body: {reason}"}, status_code=400, media_type=MediaType.JSON
    )


def _internal_error(_: Request, exc: Exception) -> Response:
    """Anything else: HTTP errors keep their status; the rest is a 500 that says nothing of the
    request or the code (the log has the type)."""
    if isinstance(exc, HTTPException):
        body = {"status_code": exc.status_code, "detail": exc.detail}
        return Response(body, status_code=exc.status_code, headers=exc.headers, media_type=MediaType.JSON)
    # The traceback names code, not request text: it goes to the log, never to the client.
    log.error("unexpected %s while answering a request", type(exc).__name__, exc_info=exc)
    body = {"status_code": 500, "detail": "internal error"}
    return Response(body, status_code=500, media_type=MediaType.JSON)


_MISSING = re.compile(r"missing required field `(?P<key>[^`]+)`")


def _validation_error(_: Request, exc: ValidationException) -> Response:
    """400 with a detail that names every bad field, e.g. ``documents: ... missing``."""
    extra = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        item = dict(item)
        missing = _MISSING.search(str(item.get("message", "")))
        if not item.get("key") and missing:
            item["key"] = missing.group("key")
        extra.append(item)
    detail = "; ".join(f"{e.get('key') or 'body'}: {e.get('message')}" for e in extra) or exc.detail
    return Response(
        {"status_code": 400, "detail": detail, "extra": extra}, status_code=400, media_type=MediaType.JSON
    )


def _cross_batching(settings: ServerSettings, reranker) -> bool:
    """The setting, or (auto) on only when a pair's score does not depend on its batch
    neighbours (``Reranker.neighbour_independent``)."""
    if settings.cross_batching is not None:
        return settings.cross_batching
    return reranker.neighbour_independent


def load_reranker(settings: ServerSettings, reranker=None):
    """The model ``settings`` name (or ``reranker``), warmed up and checked to score finitely."""
    from rerankit.inference import Reranker

    try:
        if reranker is None:
            reranker = Reranker.load(
                settings.model,
                device=settings.device,
                dtype=settings.dtype,
                trust_remote_code=settings.trust_remote_code,
                allow_pickle=settings.allow_pickle,
                long_documents=settings.long_documents,
                prompt=settings.prompt,
                backend=settings.backend,
                allow_failed_gate=settings.allow_failed_gate,
                ensemble=settings.ensemble,
            )
        if settings.max_batch_tokens:
            reranker.max_tokens = settings.max_batch_tokens
        queries, docs = zip(*WARMUP_PAIRS)  # as the model reads them: no first stage needed
        warm = reranker.input_logits(queries, docs)[0]
        # what a request gets: the ensemble's score with its signals, calibrated
        served = reranker.probabilities(reranker.final_scores(warm, reranker.signal_scores(queries, docs)))
    except RerankitError:
        raise
    except Exception as exc:  # whatever else a broken folder raises: one clear line, exit 2
        raise ModelLoadError(f"cannot load {settings.model}: {short_reason(exc)}") from exc
    if not (np.isfinite(warm).all() and np.isfinite(served).all()):
        raise ModelLoadError(f"{settings.model} scores NaN or infinity; refusing to serve it")
    return reranker


def create_app(settings: ServerSettings, reranker=None) -> Litestar:
    """The app; ``reranker`` (a loaded Reranker) skips loading ``settings.model``."""

    @asynccontextmanager
    async def lifespan(app: Litestar):
        state = app.state

        async def load() -> None:
            try:
                loaded = await asyncio.to_thread(load_reranker, settings, reranker)
            except Exception as exc:  # reported by /health, never a crash of the server
                log.error("could not load %s: %s", settings.model, exc)
                state.load_error = str(exc)
                return
            state.request_tokenizer = RequestTokenizer(
                loaded.tokenizer, loaded.max_length, loaded.prompt, loaded.long_documents
            )
            state.worker = InferenceWorker(
                lambda q, d: np.column_stack(loaded.input_logits(q, d)),
                max_queue_pairs=settings.max_queue_pairs,
                cross_batching=_cross_batching(settings, loaded),
                batch_wait_ms=settings.batch_wait_ms,
                max_pairs_per_round=settings.max_pairs_per_round,
                on_batch=state.metrics.observe_batch,
            )
            state.worker.start()
            state.reranker = loaded
            log.info("model %s ready", settings.model)

        task = asyncio.create_task(load())
        state.signal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankit-signals")
        try:
            yield
        finally:
            task.cancel()
            if state.worker is not None:
                await asyncio.to_thread(state.worker.stop)
            state.signal_pool.shutdown(wait=False, cancel_futures=True)

    return Litestar(
        route_handlers=[rerank_cohere, rerank_any, health, health_head, ping, metrics],
        guards=[_api_key_guard],
        state=State(
            {
                "settings": settings,
                "metrics": ServerMetrics(),
                "reranker": None,
                "worker": None,
                "load_error": None,
                "request_tokenizer": None,
                "signal_pool": None,
            }
        ),
        lifespan=[lifespan],
        middleware=[http_metrics_config(settings.model_name).middleware],
        exception_handlers={
            ValidationException: _validation_error,
            UnicodeDecodeError: _bad_body,
            RecursionError: _bad_body,
            Exception: _internal_error,
        },
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="rerankit", version="2"),
    )
