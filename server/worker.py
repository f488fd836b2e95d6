"""The inference worker: one thread that owns the model, fed by a queue.

Requests put their (query, document) pairs on the queue, each with its cost: the pairs the
model will score for it, one per document window. The worker keeps every admitted job in a
round-robin and scores them in rounds of at most ``max_pairs_per_round`` pairs: each job gets
a fair share of a round (a job that needs less leaves the rest to the others), so a large job
is scored in chunks with other requests' documents in between, and a small request waits about
one round, not for the large one. A document's windows stay in one chunk and are aggregated
together, so where scores do not depend on batch neighbours (fp32, static int8, a bf16 graph
padded to its width multiple) a request scores as it would alone. With ``cross_batching`` a
round mixes jobs in shared batches (after waiting up to ``batch_wait_ms`` for others to join an
idle worker). Without it (where a score depends on its batch neighbours: torch bf16, ONNX's
dynamic int8) each job's chunk is cut by that job alone and batched apart from the others (the
score function gets ``groups=``, the chunks' sizes), as it would be scored alone; a round still
holds the chunks of several jobs, so a graph's streams run their batches together instead of
waiting on one small request at a time. Jobs whose client went away are dropped between rounds.
Each job gets its own scores back, in its own order. The event loop never runs the model.

Several models can share one worker (the adapters of one base: ``server/shared_group.py``),
each through a ``Lane``: its jobs' pairs reach the score function with the lane's model beside
them, so one round mixes the models' requests; each lane keeps its own ``max_queue_pairs`` and
its own batch metrics. ``call_between_rounds`` runs a task on the worker thread where no round
is being scored (deleting a replaced adapter).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue holds too many pairs; the request should be retried later."""


@dataclass(eq=False)
class Lane:
    """One model's way into a worker: ``model`` goes to the score function beside each of its
    pairs (None: a worker of one model, whose score function takes pairs alone), ``on_batch``
    (pairs, requests) sees its part of each scored round, and its queued pairs count toward
    ``max_queue_pairs`` alone."""

    model: object = None
    on_batch: Callable[[int, int], None] = lambda pairs, jobs: None
    queued_pairs: int = 0


@dataclass(eq=False)
class Job:
    queries: Sequence[str]
    docs: Sequence[str]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    # Pairs the model scores per document (its windows).
    costs: np.ndarray
    cancelled: bool = False
    enqueued: float = field(default_factory=time.perf_counter)
    # Documents handed to rounds so far, and the scores of those already scored.
    taken: int = 0
    parts: list[np.ndarray] = field(default_factory=list)
    # Each pair's instruction for a decoder's template; None: the template's default for all.
    instructions: Sequence[str | None] | None = None
    lane: Lane = field(default_factory=Lane)

    def __post_init__(self) -> None:
        self._cumulative = np.concatenate([[0], np.cumsum(self.costs)])

    def __len__(self) -> int:
        return len(self.docs)

    def cost(self, start: int, end: int) -> int:
        return int(self._cumulative[end] - self._cumulative[start])

    @property
    def remaining(self) -> int:
        return self.cost(self.taken, len(self))

    def end_within(self, start: int, budget: int, *, at_least_one: bool) -> int:
        """The end of the longest run of documents from ``start`` costing at most ``budget``;
        with ``at_least_one``, one document even when it alone costs more."""
        limit = self._cumulative[start] + budget
        end = int(np.searchsorted(self._cumulative, limit, side="right")) - 1
        if at_least_one and end == start < len(self):
            end += 1
        return min(max(end, start), len(self))


@dataclass(frozen=True)
class Chunk:
    """Documents ``start:end`` of a job, scored in one round."""

    job: Job
    start: int
    end: int

    @property
    def cost(self) -> int:
        return self.job.cost(self.start, self.end)


class InferenceWorker:
    """Scores jobs on one background thread; see the module docstring.

    ``score(queries, docs[, instructions])`` scores a round's pairs (instructions only when a
    round has any); with lanes of models, ``models=`` (one per pair) comes too, and without
    cross-batching ``groups=`` (the documents of each job's chunk, in order)."""

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
        # the lane of requests that name no other: a worker of one model has only this one
        self.lane = Lane(None, on_batch or (lambda pairs, jobs: None))
        # jobs, tasks to run between rounds, and None: the stop signal
        self._queue: queue.Queue[Job | Callable[[], None] | None] = queue.Queue()
        # Admitted jobs with documents left, in serving order; those served in the last round
        # rejoin at the back after the jobs that arrived meanwhile.
        self._active: deque[Job] = deque()
        self._served: list[Job] = []
        self._queued_pairs = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rerankit-inference", daemon=True)

    @property
    def queued_pairs(self) -> int:
        """Pairs admitted and not yet handed to a round."""
        return self._queued_pairs

    @property
    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def add_lane(self, model: object, on_batch: Callable[[int, int], None] | None = None) -> Lane:
        """A lane for the requests of ``model`` (see ``Lane``)."""
        return Lane(model, on_batch or (lambda pairs, jobs: None))

    def call_between_rounds(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the worker thread once the round in progress (if any) is done and
        before the next is planned; a task that fails is logged, the worker goes on."""
        self._queue.put(task)

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    async def score(
        self,
        queries: Sequence[str],
        docs: Sequence[str],
        disconnected: asyncio.Future | None = None,
        *,
        costs: Sequence[int] | None = None,
        instructions: Sequence[str | None] | None = None,
        lane: Lane | None = None,
    ) -> np.ndarray | None:
        """Raw scores of the pairs; None if ``disconnected`` resolved first (job dropped).

        ``costs``: per document, the pairs the model scores for it (its windows; one each when
        not given). They count toward ``max_queue_pairs`` and share out the rounds.
        ``instructions``: each pair's instruction, handed to the score function with the pairs.
        ``lane``: the model's lane (``add_lane``); none, the worker's own.
        """
        if not docs:
            raise ValueError("no documents to score")
        costs = np.ones(len(docs), dtype=np.int64) if costs is None else np.asarray(costs, dtype=np.int64)
        if costs.shape != (len(docs),) or costs.min() < 1:
            raise ValueError(f"costs: expected {len(docs)} counts of at least 1, got {costs.tolist()}")
        loop = asyncio.get_running_loop()
        lane = lane or self.lane
        job = Job(queries, docs, loop.create_future(), loop, costs, instructions=instructions, lane=lane)
        total = job.remaining
        with self._lock:
            if lane.queued_pairs + total > self.max_queue_pairs:
                raise Overloaded(f"{lane.queued_pairs} pairs are waiting")
            lane.queued_pairs += total
            self._queued_pairs += total
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

    def _run(self) -> None:
        stopping = False
        while True:
            idle = not self._active and not self._served
            if idle:
                if stopping:
                    return
                first = self._queue.get()
                if first is None:
                    return
                if not self._take(first):
                    continue
            # An idle worker waits a moment for other requests to share the round; a busy one
            # takes in whatever arrived during the last round.
            stopping = self._admit(self.batch_wait_s if idle and self.cross_batching else 0.0) or stopping
            self._active.extend(self._served)
            self._served.clear()
            self._drop_gone()
            if self._active:
                self._score_round(self._plan_round())

    def _admit(self, wait_s: float) -> bool:
        """Move queued jobs to the round-robin, waiting up to ``wait_s`` while there is less
        than a round of work. True when the stop signal came (finish the jobs, then stop)."""
        deadline = time.perf_counter() + wait_s
        while True:
            left = deadline - time.perf_counter()
            try:
                if left > 0 and sum(j.remaining for j in self._active) < self.max_pairs_per_round:
                    job = self._queue.get(timeout=left)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            self._take(job)

    def _take(self, item: Job | Callable[[], None]) -> bool:
        """A job joins the round-robin (True); a task runs now (False)."""
        if isinstance(item, Job):
            self._active.append(item)
            return True
        try:
            item()
        except Exception as exc:  # a task never stops the worker
            log.error("a task between rounds failed: %s", type(exc).__name__, exc_info=exc)
        return False

    def _drop_gone(self) -> None:
        """Jobs whose client went away (or that already failed) leave the round-robin."""
        for job in [j for j in self._active if j.cancelled or j.future.done()]:
            self._retire(job)

    def _retire(self, job: Job) -> None:
        for jobs in (self._active, self._served):
            if job in jobs:
                jobs.remove(job)
        with self._lock:
            self._queued_pairs -= job.remaining
            job.lane.queued_pairs -= job.remaining
        job.taken = len(job)

    def _plan_round(self) -> list[Chunk]:
        """The next round: a chunk of each of the jobs at the front of the round-robin. A
        round exceeds ``max_pairs_per_round`` only by the last document taken (a document is
        never split)."""
        ends = self._shared_cuts() if self.cross_batching else self._own_cuts()
        used = sum(job.cost(job.taken, end) for job, end in ends.items())
        chunks = [Chunk(job, job.taken, end) for job, end in ends.items()]
        for chunk in chunks:  # the served jobs wait for their next turn, the finished ones leave
            chunk.job.taken = chunk.end
            self._active.popleft()
            if chunk.end < len(chunk.job):
                self._served.append(chunk.job)
        with self._lock:
            self._queued_pairs -= used
            for chunk in chunks:
                chunk.job.lane.queued_pairs -= chunk.cost
        return chunks

    def _shared_cuts(self) -> dict[Job, int]:
        """Each job's chunk end: fair shares of the round first, then what is left to those
        that want more."""
        budget = self.max_pairs_per_round
        share = max(1, budget // len(self._active))
        ends: dict[Job, int] = {}
        used = 0
        for job in self._active:
            if used >= budget:
                break
            ends[job] = job.end_within(job.taken, min(share, budget - used), at_least_one=True)
            used += job.cost(job.taken, ends[job])
        for job in ends:
            if used >= budget:
                break
            end = job.end_within(ends[job], budget - used, at_least_one=False)
            used += job.cost(ends[job], end)
            ends[job] = end
        return ends

    def _own_cuts(self) -> dict[Job, int]:
        """Each job's chunk end, cut by the job alone (a round's worth of its documents), for
        the jobs in turn while their chunks fit the round together (the first always)."""
        budget = self.max_pairs_per_round
        ends: dict[Job, int] = {}
        used = 0
        for job in self._active:
            end = job.end_within(job.taken, budget, at_least_one=True)
            cost = job.cost(job.taken, end)
            if ends and used + cost > budget:
                break
            ends[job], used = end, used + cost
        return ends

    def _score_round(self, chunks: list[Chunk]) -> None:
        """Score the chunks' pairs together; if that fails, score each chunk alone, so only the
        job that cannot be scored gets the error. No request text goes to the log."""
        queries = [q for c in chunks for q in c.job.queries[c.start : c.end]]
        docs = [d for c in chunks for d in c.job.docs[c.start : c.end]]
        instructed = any(c.job.instructions is not None for c in chunks)
        # jobs of several models (lanes) can share a round: the model of each pair goes along
        extra = (
            {}
            if all(c.job.lane.model is None for c in chunks)
            else {"models": [c.job.lane.model for c in chunks for _ in range(c.start, c.end)]}
        )
        if not self.cross_batching:  # each job's chunk batched apart from the others
            extra["groups"] = [c.end - c.start for c in chunks]
        try:
            if instructed:  # jobs of several instructions can share a round: one per pair
                instructions = [
                    c.job.instructions[i] if c.job.instructions is not None else None
                    for c in chunks
                    for i in range(c.start, c.end)
                ]
                scores = self._score(queries, docs, instructions, **extra)
            else:
                scores = self._score(queries, docs, **extra)
        except Exception as exc:  # a failed round fails its requests, never the worker
            if len(chunks) > 1:
                log.warning(
                    "a round of %d requests failed (%s); scoring each alone", len(chunks), type(exc).__name__
                )
                for chunk in chunks:
                    self._score_round([chunk])
                return
            # Request text stays out of the log; the traceback (code only) goes in.
            log.error("a request failed on %d pairs: %s", chunks[0].cost, type(exc).__name__, exc_info=exc)
            job = chunks[0].job
            self._retire(job)
            job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
            return
        for lane in dict.fromkeys(c.job.lane for c in chunks):
            mine = [c for c in chunks if c.job.lane is lane]
            lane.on_batch(sum(c.cost for c in mine), len(mine))
        start = 0
        for chunk in chunks:
            job, size = chunk.job, chunk.end - chunk.start
            job.parts.append(np.asarray(scores[start : start + size]))
            start += size
            if chunk.end == len(job) and not job.future.done():
                job.loop.call_soon_threadsafe(_set_result, job.future, np.concatenate(job.parts))


def _set_result(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
