"""Where the adapters' scores come from: an in-process Reranker or a rerankit server.

``LocalBackend`` wraps a ``Reranker`` (async calls run in a worker thread). ``RemoteBackend``
posts to the server's ``/v2/rerank`` with httpx — one client per backend and event loop, so
connections are reused — naming the served model in the body's ``model`` field when given (a
server holding several picks by it; without one, its first answers). It retries 429, 5xx and
connection errors through tenacity: exponential backoff with jitter, or the server's
``Retry-After`` (seconds or an HTTP date), capped at ``max_retry_after`` seconds. ``timeout``
bounds each network phase; ``deadline`` bounds a whole call, retries and waits included, and
``max_reply_bytes`` the body read. A reply that is not a valid ranking of the documents sent
(an index twice or outside them, a score that is not a finite number, fewer or more results
than asked for) is a ``RerankitError`` naming what is wrong.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from rerankit.errors import RerankitError

# (index into the input, relevance score), best first: by the reranker's score, or by its
# fusion with the first stage when the caller gave first-stage scores.
Ranked = list[tuple[int, float]]

DEFAULT_DEADLINE = 60.0  # seconds for one remote call, all tries and waits together
DEFAULT_MAX_REPLY_BYTES = 10_000_000  # far above a full ranking of the server's document limit


class LocalBackend:
    def __init__(self, reranker) -> None:
        self.reranker = reranker
        self.name = getattr(reranker, "source", "") or "rerankit"

    def rank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None,
        first_stage: Sequence[float] | None = None,
        instruction: str | None = None,
    ) -> Ranked:
        ranked = self.reranker.rerank(
            query, list(texts), top_k=top_n, first_stage=first_stage, instruction=instruction
        )
        return [(r.index, r.score) for r in ranked]

    async def arank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None,
        first_stage: Sequence[float] | None = None,
        instruction: str | None = None,
    ) -> Ranked:
        return await asyncio.to_thread(self.rank, query, texts, top_n, first_stage, instruction)


class _Reply(NamedTuple):
    """A server's answer, its body read within ``max_reply_bytes``."""

    status_code: int
    headers: Any
    content: bytes


class _RetryableStatus(Exception):
    """The server answered a status worth retrying (429, 5xx)."""

    def __init__(self, reply: _Reply) -> None:
        super().__init__(f"HTTP {reply.status_code}")
        self.reply = reply


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _LoopThread:
    """An event loop in a daemon thread. Sync calls run the async path here, so one deadline
    (``asyncio.wait_for``) bounds every phase, the response headers included, which httpx's
    per-read timeouts do not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        threading.Thread(target=self._serve, name="rerankit-remote", daemon=True).start()

    def _serve(self) -> None:
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:  # e.g. KeyboardInterrupt: stop the call, not only the wait
            future.cancel()
            raise

    def stop(self, clients: weakref.WeakKeyDictionary) -> concurrent.futures.Future | None:
        """Close this loop's client from ``clients`` (its connections), then end the loop."""
        if self.loop.is_closed():
            return None

        async def close_client() -> None:
            client = clients.pop(self.loop, None)
            if client is not None:
                await client.aclose()

        done = asyncio.run_coroutine_threadsafe(close_client(), self.loop)
        done.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.loop.stop))
        return done


class RemoteBackend:
    RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        model: str | None = None,
        max_retry_after: float = 30.0,
        deadline: float = DEFAULT_DEADLINE,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        for name, value in (("deadline", deadline), ("max_reply_bytes", max_reply_bytes)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self.url = base_url.rstrip("/") + "/v2/rerank"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_retry_after = max_retry_after
        self.deadline, self.max_reply_bytes = float(deadline), int(max_reply_bytes)
        self.model = model  # the served model's name, sent with each request
        self.name = model or "rerankit"
        self._loop_thread: _LoopThread | None = None
        self._stop_loop_thread: weakref.finalize | None = None  # runs once: at close() or collection
        # One async client per event loop: a connection pool is bound to the loop it was made on.
        self._async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- the HTTP clients, made on first use and reused --------------------------------------
    def _runner(self) -> _LoopThread:
        """The loop that sync calls run on (a new one in a forked child, where the thread is gone)."""
        with self._lock:
            if self._loop_thread is None or self._loop_thread.pid != os.getpid():
                self._loop_thread = _LoopThread()
                self._stop_loop_thread = weakref.finalize(self, self._loop_thread.stop, self._async_clients)
            return self._loop_thread

    def _async_client(self):
        import httpx

        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async_clients.get(loop)
            if client is None:
                client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
                self._async_clients[loop] = client
            return client

    def close(self) -> None:
        """Close the client of the sync calls (async clients: ``aclose`` from their event loop)."""
        with self._lock:
            stop, self._loop_thread, self._stop_loop_thread = self._stop_loop_thread, None, None
        done = stop() if stop is not None else None
        if done is not None:
            done.result()

    async def aclose(self) -> None:
        """Close this event loop's async client."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- one policy for both paths -----------------------------------------------------------
    def _wait(self, retry_state) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, _RetryableStatus):
            asked = retry_after_seconds(error.reply.headers.get("retry-after"))
            if asked is not None:
                return min(asked, self.max_retry_after)
        from tenacity import wait_exponential_jitter

        return wait_exponential_jitter(
            initial=self.backoff, max=self.max_retry_after, jitter=self.backoff / 10
        )(retry_state)

    def _policy(self) -> dict[str, Any]:
        import httpx
        from tenacity import retry_if_exception_type, stop_after_attempt, stop_before_delay

        return dict(
            # no try that would start after the deadline: give up with the last answer instead
            stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.deadline),
            wait=self._wait,
            reraise=True,
            retry=retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
        )

    @contextlib.contextmanager
    def _final_errors(self, retrying) -> Iterator[None]:
        """What is left after the last try, or at the deadline, as a RerankitError."""
        import httpx

        def tries() -> str:
            count = retrying.statistics.get("attempt_number", 1)
            return f"{count} {'try' if count == 1 else 'tries'}"

        try:
            yield
        except _RetryableStatus as exc:
            raise RerankitError(
                f"{self.url} answered {exc.reply.status_code} after {tries()}: {_detail(exc.reply)}"
            ) from None
        except httpx.TransportError as exc:
            raise RerankitError(f"{self.url} unreachable after {tries()}: {exc}") from None
        except asyncio.TimeoutError:
            raise RerankitError(
                f"{self.url} sent no complete answer within the {self.deadline:g} s deadline "
                f"({tries()}; the deadline option sets it)"
            ) from None
        except httpx.HTTPError as exc:  # e.g. a body that does not decode
            raise RerankitError(f"{self.url}: {exc}") from None

    def _body(
        self, query: str, texts: Sequence[str], top_n: int | None, first_stage=None, instruction=None
    ) -> dict:
        body = {"query": query, "documents": list(texts), "top_n": top_n}
        if self.model is not None:
            body["model"] = self.model
        if first_stage is not None:  # rerankit's extension: the server fuses with it
            body["first_stage_scores"] = [float(s) for s in first_stage]
        if instruction is not None:  # rerankit's extension: a decoder's task instruction
            body["instruction"] = instruction
        return body

    async def _read_capped(self, response) -> bytes:
        """The body, refused as soon as it is known to pass ``max_reply_bytes``."""
        limit = self.max_reply_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RerankitError(
                f"{self.url} announced a reply of {declared} bytes, over the max_reply_bytes "
                f"limit of {limit} bytes"
            )
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise RerankitError(
                    f"{self.url} sent a reply over the max_reply_bytes limit of {limit} bytes"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, reply: _Reply, num_docs: int, top_n: int | None) -> Ranked:
        """The (index, score) pairs of a 200 answer, checked against the documents sent: each
        index once, inside them, a finite score each, and as many results as ``top_n`` asks."""
        if reply.status_code in self.RETRY_STATUS:
            raise _RetryableStatus(reply)
        if reply.status_code != 200:
            raise RerankitError(f"{self.url} answered {reply.status_code}: {_detail(reply)}")
        try:
            results = json.loads(reply.content)["results"]
            if not isinstance(results, list):
                raise TypeError
            ranked = [(r["index"], r["relevance_score"]) for r in results]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise RerankitError(
                f"{self.url} answered 200 without a valid rerank body "
                f"(a JSON object with 'results' of index and relevance_score): "
                f"{_detail(reply)!r}"
            ) from None
        seen: set[int] = set()
        out: Ranked = []
        for index, score in ranked:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < num_docs:
                raise RerankitError(
                    f"{self.url} answered index {_short(index)}, outside the {num_docs} documents sent"
                )
            if index in seen:
                raise RerankitError(f"{self.url} answered document {index} twice")
            seen.add(index)
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise RerankitError(
                    f"{self.url} answered relevance_score {_short(score)} for document {index}, not a number"
                )
            try:
                value = float(score)
            except OverflowError:  # a JSON integer too large for a float
                value = math.inf
            if not math.isfinite(value):
                raise RerankitError(
                    f"{self.url} answered relevance_score {_short(score)} for document {index}, "
                    "not a finite number"
                )
            out.append((index, value))
        expected = num_docs if top_n is None else min(top_n, num_docs)
        if len(out) != expected:
            raise RerankitError(
                f"{self.url} answered {len(out)} result{'' if len(out) == 1 else 's'} where "
                f"{expected} were expected ({num_docs} documents sent, top_n={top_n})"
            )
        return out

    async def _apost(self, body: dict) -> Ranked:
        async with self._async_client().stream("POST", self.url, json=body) as response:
            reply = _Reply(response.status_code, response.headers, await self._read_capped(response))
        return self._parse(reply, len(body["documents"]), body["top_n"])

    def rank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None,
        first_stage: Sequence[float] | None = None,
        instruction: str | None = None,
    ) -> Ranked:
        return self._runner().run(self.arank(query, texts, top_n, first_stage, instruction))

    async def arank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None,
        first_stage: Sequence[float] | None = None,
        instruction: str | None = None,
    ) -> Ranked:
        from tenacity import AsyncRetrying

        body = self._body(query, texts, top_n, first_stage, instruction)
        retrying = AsyncRetrying(**self._policy())
        with self._final_errors(retrying):
            return await asyncio.wait_for(retrying(self._apost, body), timeout=self.deadline)


def _detail(reply: _Reply) -> str:
    text = reply.content[:2000].decode("utf-8", errors="replace")
    try:
        body = json.loads(reply.content)
    except (ValueError, RecursionError):
        return text[:200]
    return str(body.get("detail", body))[:200] if isinstance(body, dict) else text[:200]


def _short(value: Any) -> str:
    """``repr`` cut to a readable length: a server may send a number of hundreds of digits."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def make_backend(
    *,
    reranker=None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 3,
    dtype: str = "auto",
    deadline: float = DEFAULT_DEADLINE,
    max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
):
    """Exactly one of ``reranker`` (a loaded Reranker), ``model`` (a path) or ``base_url``; with
    ``base_url``, ``model`` may name the model to use among those the server holds."""
    remote_model = model if base_url is not None else None
    given = [
        name
        for name, value in (("reranker", reranker), ("model", model), ("base_url", base_url))
        if value is not None and not (name == "model" and remote_model is not None)
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of reranker, model or base_url (got {given or 'none'})")
    if base_url is not None:
        return RemoteBackend(
            base_url,
            api_key,
            timeout,
            max_retries,
            model=remote_model,
            deadline=deadline,
            max_reply_bytes=max_reply_bytes,
        )
    if model is not None:
        from rerankit.inference import Reranker

        reranker = Reranker.load(model, dtype=dtype)
    return LocalBackend(reranker)


def backend_for(adapter, reranker=None):
    """The backend an adapter's fields ask for (model, base_url, api_key, timeout, deadline, ...)."""
    return make_backend(
        reranker=reranker,
        model=adapter.model,
        base_url=adapter.base_url,
        api_key=adapter.api_key,
        timeout=adapter.timeout,
        max_retries=adapter.max_retries,
        dtype=adapter.dtype,
        deadline=adapter.deadline,
        max_reply_bytes=adapter.max_reply_bytes,
    )
