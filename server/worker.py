"""The inference worker: one thread that owns the model, fed by a queue.

Requests put their (query, document) pairs on the queue and await a future. The worker
takes the first waiting job, lets other requests join it for up to ``batch_wait_ms``
(cross-request batching), drops jobs whose client went away, and scores all pairs in one
``Reranker`` call, which sorts them by length and cuts token-budget batches. Each job then
gets its own scores back, in its own order. The event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue holds too many pairs; the request should be retried later."""


@dataclass
class Job:
    queries: Sequence[str]
    docs: Sequence[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)

    def __len__(self) -> int:
        return len(self.docs)


class InferenceWorker:
    """Scores jobs on one background thread; see the module docstring."""

    def __init__(
        self,
        score: Callable[[Sequence[str], Sequence[str]], np.ndarray],
        *,
        max_queue_pairs: int = 20_000,
        cross_batching: bool = True,
        batch_wait_ms: float = 2.0,
        max_pairs_per_round: int = 512,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._score = score
        self.max_queue_pairs, self.cross_batching = max_queue_pairs, cross_batching
        self.batch_wait_s, self.max_pairs_per_round = batch_wait_ms / 1000, max_pairs_per_round
        self._on_batch = on_batch or (lambda pairs, jobs: None)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued_pairs = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rerankit-inference", daemon=True)

    @property
    def queued_pairs(self) -> int:
        return self._queued_pairs

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    async def score(
        self, queries: Sequence[str], docs: Sequence[str], disconnected: asyncio.Future | None = None
    ) -> np.ndarray | None:
        """Raw scores of the pairs; None if ``disconnected`` resolved first (job dropped)."""
        loop = asyncio.get_running_loop()
        job = Job(queries, docs, loop.create_future(), loop)
        with self._lock:
            if self._queued_pairs + len(job) > self.max_queue_pairs:
                raise Overloaded(f"{self._queued_pairs} pairs are waiting")
            self._queued_pairs += len(job)
        self._queue.put(job)
        try:
            if disconnected is None:
                return await job.future
            done, _ = await asyncio.wait({job.future, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            job.cancelled = True
            return None
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    def _take_round(self, first: Job) -> list[Job]:
        """The first job plus those that arrive within the batching window."""
        jobs, pairs = [first], len(first)
        deadline = time.perf_counter() + self.batch_wait_s
        while self.cross_batching and pairs < self.max_pairs_per_round:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if job is None:  # stop signal: finish this round, then stop
                self._queue.put(None)
                break
            jobs.append(job)
            pairs += len(job)
        return jobs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = self._take_round(first)
            with self._lock:
                self._queued_pairs -= sum(len(j) for j in jobs)
            live = [j for j in jobs if not j.cancelled and not j.future.done()]
            if live:
                self._score_round(live)

    def _score_round(self, jobs: list[Job]) -> None:
        """Score the jobs' pairs together; if that fails, score each job alone, so only the
        job that cannot be scored gets the error. No request text goes to the log."""
        queries = [q for j in jobs for q in j.queries]
        docs = [d for j in jobs for d in j.docs]
        try:
            scores = self._score(queries, docs)
        except Exception as exc:  # a failed round fails its requests, never the worker
            if len(jobs) > 1:
                log.warning(
                    "a round of %d requests failed (%s); scoring each alone", len(jobs), type(exc).__name__
                )
                for job in jobs:
                    self._score_round([job])
                return
            # Request text stays out of the log; the traceback (code only) goes in.
            log.error("a request of %d pairs failed: %s", len(docs), type(exc).__name__, exc_info=exc)
            jobs[0].loop.call_soon_threadsafe(_set_exception, jobs[0].future, exc)
            return
        self._on_batch(len(docs), len(jobs))
        start = 0
        for job in jobs:
            part = np.asarray(scores[start : start + len(job)])
            start += len(job)
            job.loop.call_soon_threadsafe(_set_result, job.future, part)


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
