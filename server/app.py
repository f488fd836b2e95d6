"""The Litestar app: ``create_app(settings)``.

Routes: ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (alias), ``POST /rerank``
(Cohere body or text-embeddings-inference body), ``GET /v1/models`` (the served models, in
the OpenAI list shape), ``POST /v1/models/{name}/reload``, ``GET /health``, ``GET /ping``,
``GET /metrics`` (Prometheus) and the OpenAPI schema under ``/schema``.

The models load in the background at start-up (so ``/health`` answers 503 until they are
loaded and warmed); each then lives in an inference worker thread of its own (``worker.py``,
``served_models.py``), or, for the adapters of one shared base, in one worker whose rounds mix
their requests (``shared_group.py``). A request's ``model`` field (TEI bodies: the ``model`` query
parameter) picks the model; none picks the first. Scores are
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
from rerankit.server.prometheus import CONTENT_TYPE_LATEST, http_metrics_config
from rerankit.server.schemas import (
    RerankRequest,
    RerankResponse,
    RerankResultItem,
    ResultDocument,
    TEIRerankRequest,
    TEIResultItem,
)
from rerankit.server.served_models import (
    LoadedModel,
    ServedModel,
    ServedModels,
    join_groups,
    load_reranker,
    load_shared,
    preloaded_for,
    served_models,
    sharing_groups,
)
from rerankit.server.settings import ServerSettings
from rerankit.server.text_prep import RequestTokenizer
from rerankit.server.worker import Overloaded

__all__ = ["create_app", "load_reranker"]
log = logging.getLogger(__name__)


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
    served: ServedModel,
    query: str,
    docs: list[str],
    *,
    top_n: int | None,
    max_tokens_per_doc: int | None,
    raw: bool,
    docs_field: str,
    first_stage: list[float] | None = None,
    instruction: str | None = None,
) -> tuple[list[tuple[int, float, float | None]], int]:
    """Validate, score through the worker, and return (index, score, fused score or None)
    best first, with the number of document windows scored."""
    settings: ServerSettings = served.settings
    _check_request(settings, query, docs, docs_field, top_n, max_tokens_per_doc)
    async with served.use() as loaded:  # the version in service now, kept to the end
        ranked = await _score(
            request,
            state,
            loaded,
            query,
            docs,
            top_n=top_n,
            max_tokens_per_doc=max_tokens_per_doc,
            raw=raw,
            docs_field=docs_field,
            first_stage=first_stage,
            instruction=instruction,
        )
    state.metrics.scored.labels(model=served.name).inc()
    return ranked


async def _score(
    request: Request,
    state: State,
    loaded: LoadedModel,
    query: str,
    docs: list[str],
    *,
    top_n: int | None,
    max_tokens_per_doc: int | None,
    raw: bool,
    docs_field: str,
    first_stage: list[float] | None,
    instruction: str | None = None,
) -> tuple[list[tuple[int, float, float | None]], int]:
    """``_rank`` on one loaded version of the model."""
    settings: ServerSettings = loaded.settings
    reranker = loaded.reranker
    try:  # what the model needs beside the pairs, checked once; a score-injection model reads it
        context = RankContext.build(
            len(docs), first_stage, field="first_stage_scores", instruction=instruction
        )
        queries = reranker.model_queries(query, context)
        instructions = reranker.model_instructions(context)
    except ContextError as exc:
        raise _field_error(exc.field, exc.message) from None
    prep: RequestTokenizer = loaded.request_tokenizer
    # Tokenizing is CPU work: off the event loop, with the request side's own tokenizer. The
    # query is checked here, so an over-long one fails its own request, never a merged round.
    try:
        await asyncio.to_thread(prep.check_query, max(queries, key=len), instructions and instructions[0])
    except QueryTooLongError as exc:
        raise _field_error("query", str(exc)) from None
    if max_tokens_per_doc is not None:
        docs = await asyncio.to_thread(prep.truncate, docs, max_tokens_per_doc)
    # A request costs the pairs the model will score: one per document window.
    try:
        costs = await asyncio.to_thread(prep.count_windows, queries, docs, instructions)
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
        scores = await loaded.score(
            queries, docs, disconnected=watcher, costs=costs, instructions=instructions
        )
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


async def _cohere(
    request: Request, state: State, data: RerankRequest, model: str | None = None
) -> RerankResponse:
    docs = _document_texts(data.documents)
    served = state.models.get(data.model if data.model is not None else model)
    ranked, windows = await _rank(
        request,
        state,
        served,
        data.query,
        docs,
        top_n=data.top_n,
        max_tokens_per_doc=data.max_tokens_per_doc,
        raw=bool(data.raw_scores),
        docs_field="documents",
        first_stage=data.first_stage_scores,
        instruction=data.instruction,
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
            "model": served.name,
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
async def rerank_any(request: Request, state: State, data: dict[str, Any], model: str | None = None) -> Any:
    """``model`` (query parameter): the served model for a body that names none (TEI's)."""
    if "texts" not in data:
        return await _cohere(request, state, _convert(data, RerankRequest), model)
    tei = _convert(data, TEIRerankRequest)
    served = state.models.get(model)
    ranked, _ = await _rank(
        request,
        state,
        served,
        tei.query,
        tei.texts,
        top_n=None,
        max_tokens_per_doc=None,
        raw=bool(tei.raw_scores),
        docs_field="texts",
        first_stage=tei.first_stage_scores,
        instruction=tei.instruction,
    )
    return [TEIResultItem(i, s, tei.texts[i] if tei.return_text else None) for i, s, _ in ranked]


def _health(models: ServedModels) -> tuple[int, dict]:
    """200 once every model is loaded and warmed, else 503; each model's own status."""
    report = {}
    for served in models:
        report[served.name] = {"status": served.status}
        if served.load_error and served.current is None:
            report[served.name]["detail"] = served.load_error
    waiting = [s for s in models if s.current is None]
    if not waiting:
        return 200, {"status": "ok", "model": models.first.name, "models": report}
    first = waiting[0]
    reason = f": {first.load_error}" if first.load_error else " (still loading)"
    names = "" if models.any_name else f"{first.name}: "
    body = {"status_code": 503, "detail": f"{names}model not ready{reason}", "models": report}
    return 503, body


@get("/health", summary="200 once every model is loaded and warmed, else 503", opt={"public": True})
async def health(state: State) -> Response:
    status, body = _health(state.models)
    headers = {"Retry-After": "5"} if status == 503 else None
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


@head("/health", summary="/health without a body, for probes that send HEAD", opt={"public": True})
async def health_head(state: State) -> None:
    status, body = _health(state.models)
    if status != 200:
        raise ServiceUnavailableException(detail=body["detail"], headers={"Retry-After": "5"})


def _model_entry(served: ServedModel) -> dict:
    loaded = served.current
    entry = {"id": served.name, "object": "model", "owned_by": "rerankit", "status": served.status}
    if loaded is not None:
        entry.update(created=loaded.loaded_at, **loaded.facts)
    return entry


@get("/v1/models", summary="The served models (OpenAI list shape)")
async def list_models(state: State) -> dict[str, Any]:
    return {"object": "list", "data": [_model_entry(served) for served in state.models]}


@post(
    "/v1/models/{name:str}/reload",
    status_code=200,
    summary="Load the model's folder again and swap it in without downtime (409: one is running)",
)
async def reload_model(state: State, name: str) -> dict[str, Any]:
    served = state.models.get(name)
    await served.reload()
    return _model_entry(served)


@get("/ping", summary="Liveness", opt={"public": True})
async def ping() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics_route(state: State) -> Response:
    for served in state.models:
        loaded = served.current
        state.metrics.queue_pairs.labels(model=served.name).set(loaded.queued_pairs if loaded else 0)
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


def create_app(settings: ServerSettings, reranker=None, rerankers: dict | None = None) -> Litestar:
    """The app. ``reranker`` (a loaded Reranker) skips loading the first model, ``rerankers``
    (by name) the models named; the others load from their folders."""
    models, metrics = served_models(settings)
    preloaded = preloaded_for(models, reranker, rerankers)
    # runs of one base that load onto one copy of it (--merge), unless given already loaded
    groups = [
        group
        for group in sharing_groups(models, settings.merge)
        if not any(served.name in preloaded for served in group)
    ]
    grouped = {served.name for group in groups for served in group}

    async def load_group(group: list[ServedModel]) -> None:
        try:
            loaded = await asyncio.to_thread(load_shared, group)
        except Exception as exc:  # reported by /health for each model of the group
            log.error("could not load models %s: %s", ", ".join(s.name for s in group), exc)
            for served in group:
                served.load_error = str(exc)
            return
        join_groups(models, loaded)  # one worker for the group, its rounds mixing the adapters
        for served in group:
            await served.load(loaded[served.name])

    @asynccontextmanager
    async def lifespan(app: Litestar):
        state = app.state
        join_groups(models, preloaded)  # rerankers given on one shared base share a worker too
        tasks = [asyncio.create_task(load_group(group)) for group in groups]
        tasks += [
            asyncio.create_task(served.load(preloaded.get(served.name)))
            for served in models
            if served.name not in grouped
        ]
        state.signal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankit-signals")
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for served in models:
                await asyncio.to_thread(served.stop)
            state.signal_pool.shutdown(wait=False, cancel_futures=True)

    return Litestar(
        route_handlers=[
            rerank_cohere,
            rerank_any,
            list_models,
            reload_model,
            health,
            health_head,
            ping,
            metrics_route,
        ],
        guards=[_api_key_guard],
        state=State({"settings": settings, "metrics": metrics, "models": models, "signal_pool": None}),
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
