"""Where the adapters' scores come from: an in-process Reranker or a rerankit server.

``LocalBackend`` wraps a ``Reranker`` (async calls run in a worker thread). ``RemoteBackend``
posts to the server's ``/v2/rerank`` with httpx — one client per backend, so connections are
reused — and retries 429, 5xx and connection errors through tenacity: exponential backoff with
jitter, or the server's ``Retry-After`` (seconds or an HTTP date), capped at
``max_retry_after`` seconds. A reply that is not a valid ranking of the documents sent is a
``RerankitError`` naming what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from rerankit.errors import RerankitError

# (index into the input, relevance score), best first: by the reranker's score, or by its
# fusion with the first stage when the caller gave first-stage scores.
Ranked = list[tuple[int, float]]


class LocalBackend:
    def __init__(self, reranker) -> None:
        self.reranker = reranker
        self.name = getattr(reranker, "source", "") or "rerankit"

    def rank(
        self, query: str, texts: Sequence[str], top_n: int | None, first_stage: Sequence[float] | None = None
    ) -> Ranked:
        ranked = self.reranker.rerank(query, list(texts), top_k=top_n, first_stage=first_stage)
        return [(r.index, r.score) for r in ranked]

    async def arank(
        self, query: str, texts: Sequence[str], top_n: int | None, first_stage: Sequence[float] | None = None
    ) -> Ranked:
        return await asyncio.to_thread(self.rank, query, texts, top_n, first_stage)


class _RetryableStatus(Exception):
    """The server answered a status worth retrying (429, 5xx)."""

    def __init__(self, response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


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


class RemoteBackend:
    RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        model: str = "rerankit",
        max_retry_after: float = 30.0,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v2/rerank"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_retry_after = max_retry_after
        self.name = model
        self._client: Any = None
        # One async client per event loop: a connection pool is bound to the loop it was made on.
        self._async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- the HTTP clients, made on first use and reused --------------------------------------
    def _sync_client(self):
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
            return self._client

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
        """Close the sync client (async clients: ``aclose`` from their event loop)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

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
            asked = retry_after_seconds(error.response.headers.get("retry-after"))
            if asked is not None:
                return min(asked, self.max_retry_after)
        from tenacity import wait_exponential_jitter

        return wait_exponential_jitter(
            initial=self.backoff, max=self.max_retry_after, jitter=self.backoff / 10
        )(retry_state)

    def _policy(self) -> dict[str, Any]:
        import httpx
        from tenacity import retry_if_exception_type, stop_after_attempt

        return dict(
            stop=stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            reraise=True,
            retry=retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
        )

    @contextlib.contextmanager
    def _final_errors(self) -> Iterator[None]:
        """What is left after the last try, as a RerankitError."""
        import httpx

        try:
            yield
        except _RetryableStatus as exc:
            raise RerankitError(
                f"{self.url} answered {exc.response.status_code} after "
                f"{self.max_retries + 1} tries: {_detail(exc.response)}"
            ) from None
        except httpx.TransportError as exc:
            raise RerankitError(f"{self.url} unreachable after {self.max_retries + 1} tries: {exc}") from None

    def _body(self, query: str, texts: Sequence[str], top_n: int | None, first_stage=None) -> dict:
        body = {"model": self.name, "query": query, "documents": list(texts), "top_n": top_n}
        if first_stage is not None:  # rerankit's extension: the server fuses with it
            body["first_stage_scores"] = [float(s) for s in first_stage]
        return body

    def _parse(self, response, num_docs: int) -> Ranked:
        """The (index, score) pairs of a 200 answer, checked against the documents sent."""
        if response.status_code in self.RETRY_STATUS:
            raise _RetryableStatus(response)
        if response.status_code != 200:
            raise RerankitError(f"{self.url} answered {response.status_code}: {_detail(response)}")
        try:
            results = response.json()["results"]
            ranked = [(r["index"], r["relevance_score"]) for r in results]
        except (ValueError, KeyError, TypeError):
            raise RerankitError(
                f"{self.url} answered 200 without a valid rerank body "
                f"(a JSON object with 'results' of index and relevance_score): "
                f"{response.text[:200]!r}"
            ) from None
        for index, score in ranked:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < num_docs:
                raise RerankitError(
                    f"{self.url} answered index {index!r}, outside the {num_docs} documents sent"
                )
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise RerankitError(
                    f"{self.url} answered relevance_score {score!r} for document {index}, not a number"
                )
        return [(index, float(score)) for index, score in ranked]

    def _post(self, body: dict) -> Ranked:
        return self._parse(self._sync_client().post(self.url, json=body), len(body["documents"]))

    async def _apost(self, body: dict) -> Ranked:
        response = await self._async_client().post(self.url, json=body)
        return self._parse(response, len(body["documents"]))

    def rank(
        self, query: str, texts: Sequence[str], top_n: int | None, first_stage: Sequence[float] | None = None
    ) -> Ranked:
        from tenacity import Retrying

        with self._final_errors():
            return Retrying(**self._policy())(self._post, self._body(query, texts, top_n, first_stage))

    async def arank(
        self, query: str, texts: Sequence[str], top_n: int | None, first_stage: Sequence[float] | None = None
    ) -> Ranked:
        from tenacity import AsyncRetrying

        body = self._body(query, texts, top_n, first_stage)
        with self._final_errors():
            return await AsyncRetrying(**self._policy())(self._apost, body)


def _detail(response) -> str:
    try:
        body = response.json()
        return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]
    except ValueError:
        return response.text[:200]


def make_backend(
    *,
    reranker=None,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 30.0,
    max_retries: int = 3,
    dtype: str = "auto",
):
    """Exactly one of ``reranker`` (a loaded Reranker), ``model`` (a path) or ``base_url``."""
    given = [
        name
        for name, value in (("reranker", reranker), ("model", model), ("base_url", base_url))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of reranker, model or base_url (got {given or 'none'})")
    if base_url is not None:
        return RemoteBackend(base_url, api_key, timeout, max_retries)
    if model is not None:
        from rerankit.inference import Reranker

        reranker = Reranker.load(model, dtype=dtype)
    return LocalBackend(reranker)


def backend_for(adapter, reranker=None):
    """The backend an adapter's fields ask for (model, base_url, api_key, timeout, ...)."""
    return make_backend(
        reranker=reranker,
        model=adapter.model,
        base_url=adapter.base_url,
        api_key=adapter.api_key,
        timeout=adapter.timeout,
        max_retries=adapter.max_retries,
        dtype=adapter.dtype,
    )
