"""Where the adapters' scores come from: an in-process Reranker or a rerankit server.

``LocalBackend`` wraps a ``Reranker`` (async calls run in a worker thread). ``RemoteBackend``
posts to the server's ``/v2/rerank`` with httpx, retrying 429, 5xx and connection errors with
exponential backoff (honouring ``Retry-After``) and a timeout on every call.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Sequence

from rerankit.errors import RerankitError

Ranked = list[tuple[int, float]]   # (index into the input, relevance score), best first


class LocalBackend:
    def __init__(self, reranker) -> None:
        self.reranker = reranker
        self.name = getattr(reranker, "source", "") or "rerankit"

    def rank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        return [(r.index, r.score) for r in self.reranker.rerank(query, list(texts), top_k=top_n)]

    async def arank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        return await asyncio.to_thread(self.rank, query, texts, top_n)


class RemoteBackend:
    RETRY_STATUS = {429, 500, 502, 503, 504}

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0,
                 max_retries: int = 3, backoff: float = 0.5, model: str = "rerankit") -> None:
        self.url = base_url.rstrip("/") + "/v2/rerank"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.name = model

    def _body(self, query: str, texts: Sequence[str], top_n: int | None) -> dict:
        return {"model": self.name, "query": query, "documents": list(texts), "top_n": top_n}

    def _delay(self, attempt: int, response) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.isdigit():
            return float(retry_after)
        return self.backoff * (2 ** attempt) * (1 + 0.1 * random.random())

    def _result(self, response) -> Ranked:
        if response.status_code != 200:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            raise RerankitError(f"{self.url} answered {response.status_code}: {detail}")
        return [(r["index"], r["relevance_score"]) for r in response.json()["results"]]

    def rank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        import httpx

        body = self._body(query, texts, top_n)
        with httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.max_retries + 1):
                response = error = None
                try:
                    response = client.post(self.url, json=body)
                except httpx.TransportError as exc:
                    error = exc
                if error is None and response.status_code not in self.RETRY_STATUS:
                    return self._result(response)
                if attempt < self.max_retries:
                    time.sleep(self._delay(attempt, response))
        return self._give_up(response, error)

    async def arank(self, query: str, texts: Sequence[str], top_n: int | None) -> Ranked:
        import httpx

        body = self._body(query, texts, top_n)
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.max_retries + 1):
                response = error = None
                try:
                    response = await client.post(self.url, json=body)
                except httpx.TransportError as exc:
                    error = exc
                if error is None and response.status_code not in self.RETRY_STATUS:
                    return self._result(response)
                if attempt < self.max_retries:
                    await asyncio.sleep(self._delay(attempt, response))
        return self._give_up(response, error)

    def _give_up(self, response, error) -> Ranked:
        if error is not None:
            raise RerankitError(f"{self.url} unreachable after {self.max_retries + 1} tries: {error}")
        return self._result(response)


def make_backend(*, reranker=None, model: str | None = None, base_url: str | None = None,
                 api_key: str | None = None, timeout: float = 30.0, max_retries: int = 3,
                 dtype: str = "auto"):
    """Exactly one of ``reranker`` (a loaded Reranker), ``model`` (a path) or ``base_url``."""
    given = [name for name, value in (("reranker", reranker), ("model", model), ("base_url", base_url))
             if value is not None]
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
    return make_backend(reranker=reranker, model=adapter.model, base_url=adapter.base_url,
                        api_key=adapter.api_key, timeout=adapter.timeout,
                        max_retries=adapter.max_retries, dtype=adapter.dtype)
