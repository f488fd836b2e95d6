"""The inference worker: cross-request batching, own results, dropped jobs, failures, and
rounds bounded in pairs (document windows) and shared fairly between requests."""

import asyncio
import threading

import numpy as np
import pytest

from rerankit.server.worker import InferenceWorker, Overloaded

pytestmark = pytest.mark.smoke


class LengthScorer:
    """Scores a pair by the length of its document, and records what it scored."""

    def __init__(self, fail_on=None):
        self.calls, self.groups, self.fail_on = [], [], fail_on

    def __call__(self, queries, docs, groups=None):
        if self.fail_on is not None and self.fail_on in docs:
            raise RuntimeError("boom")
        self.calls.append(list(docs))
        self.groups.append(groups)
        return np.array([float(len(d)) for d in docs])


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_rounds_and_get_their_own_scores():
    scorer, rounds = LengthScorer(), []
    worker = InferenceWorker(scorer, batch_wait_ms=50, on_batch=lambda p, j: rounds.append(j))
    worker.start()

    async def main():
        jobs = [worker.score(["q"] * 3, [f"{i}" * (i + 1), "x" * (10 * i + 1), "yy"]) for i in range(8)]
        return await asyncio.gather(*jobs)

    results = run(main())
    worker.stop()
    for i, scores in enumerate(results):
        assert list(scores) == [i + 1, 10 * i + 1, 2]
    assert max(rounds) > 1 and sum(rounds) == 8


def test_job_of_a_gone_client_is_not_scored():
    scorer = LengthScorer()
    worker = InferenceWorker(scorer, batch_wait_ms=0)

    async def main():
        gone = asyncio.get_running_loop().create_future()
        gone.set_result(None)
        result = await worker.score(["q"], ["never scored"], disconnected=gone)
        worker.start()
        kept = await worker.score(["q"], ["scored"])
        return result, kept

    result, kept = run(main())
    worker.stop()
    assert result is None and list(kept) == [6.0]
    assert scorer.calls == [["scored"]]


def test_queue_limit_and_failure_do_not_kill_the_worker():
    worker = InferenceWorker(LengthScorer(fail_on="bad"), max_queue_pairs=4, batch_wait_ms=0)
    worker.start()

    async def main():
        with pytest.raises(Overloaded):
            await worker.score(["q"] * 5, ["d"] * 5)
        with pytest.raises(RuntimeError, match="boom"):
            await worker.score(["q"], ["bad"])
        return await worker.score(["q"], ["fine"])

    assert list(run(main())) == [4.0]
    assert worker.queued_pairs == 0
    worker.stop()


class HeldScorer(LengthScorer):
    """A LengthScorer whose first round waits until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, queries, docs, groups=None):
        self.entered.set()
        assert self.release.wait(10)
        return super().__call__(queries, docs, groups)


class GroupScorer(HeldScorer):
    """Scores a pair by its document's length plus the size of the batch it shares: what a
    batch-dependent (bf16) model does. Its first round waits until ``release`` is set."""

    def __call__(self, queries, docs, groups=None):
        lengths = super().__call__(queries, docs, groups)
        sizes = groups or [len(docs)]
        return lengths + np.repeat(sizes, sizes)


def test_without_cross_batching_a_round_scores_requests_apart():
    """Requests queued while a round runs share the next round, each in its own group: a
    batch-dependent score of a request is the one it gets alone."""
    scorer, rounds = GroupScorer(), []
    worker = InferenceWorker(scorer, cross_batching=False, on_batch=lambda p, j: rounds.append(j))
    worker.start()
    requests = [["d" * i] * i for i in range(1, 5)]  # i documents of length i

    async def main():
        first = asyncio.ensure_future(worker.score(["q"] * 2, ["first", "first"]))
        await asyncio.to_thread(scorer.entered.wait, 10)
        rest = [asyncio.ensure_future(worker.score(["q"] * len(docs), docs)) for docs in requests]
        while worker.queued_pairs < 10:
            await asyncio.sleep(0.001)
        scorer.release.set()
        return await asyncio.gather(first, *rest)

    first, *rest = run(main())
    worker.stop()
    assert list(first) == [7.0, 7.0]
    assert [list(s) for s in rest] == [[2.0 * i] * i for i in range(1, 5)]
    assert rounds == [1, 4] and scorer.groups == [[2], [1, 2, 3, 4]]


async def queue_a_job_while_the_first_round_runs(worker, scorer, big, small):
    """``big`` (queries, docs, costs) starts; once its first round is running, ``small`` is
    queued; then the round is released. Both results, in that order."""
    big_job = asyncio.ensure_future(worker.score(big[0], big[1], costs=big[2]))
    await asyncio.to_thread(scorer.entered.wait, 10)
    waiting = worker.queued_pairs
    small_job = asyncio.ensure_future(worker.score(small[0], small[1]))
    while worker.queued_pairs == waiting:  # the small job is in the queue
        await asyncio.sleep(0.001)
    scorer.release.set()
    return await asyncio.gather(big_job, small_job)


def test_a_large_job_is_scored_in_bounded_rounds_and_a_small_one_joins_the_next():
    """A job of 20 documents of 2 windows each under a 4-pair round: every round stays within
    4 pairs, the 1-document request queued during the first round is in the second, and
    both get the scores they would get alone."""
    scorer, rounds = HeldScorer(), []
    worker = InferenceWorker(scorer, max_pairs_per_round=4, on_batch=lambda p, j: rounds.append((p, j)))
    worker.start()
    big_docs = ["d" * (i + 1) for i in range(20)]
    big, small = run(
        queue_a_job_while_the_first_round_runs(
            worker, scorer, (["q"] * 20, big_docs, [2] * 20), (["q"], ["small"])
        )
    )
    worker.stop()
    assert list(big) == [float(i + 1) for i in range(20)] and list(small) == [5.0]
    assert "small" in scorer.calls[1]
    assert max(pairs for pairs, _ in rounds) <= 4 and sum(pairs for pairs, _ in rounds) == 41
    assert rounds[1] == (3, 2)  # one document of each: the small job did not wait its turn
    assert worker.queued_pairs == 0


def test_without_cross_batching_large_jobs_take_turns_by_chunks():
    """Each round holds one job's chunk, and the jobs alternate: a second request does not
    wait for the whole first one."""
    scorer = HeldScorer()
    worker = InferenceWorker(scorer, cross_batching=False, max_pairs_per_round=2)
    worker.start()
    first = [f"a{i}" for i in range(6)]
    second = [f"bb{i}" for i in range(4)]
    a, b = run(
        queue_a_job_while_the_first_round_runs(worker, scorer, (["q"] * 6, first, None), (["q"] * 4, second))
    )
    worker.stop()
    assert list(a) == [2.0] * 6 and list(b) == [3.0] * 4
    assert scorer.calls == [first[0:2], second[0:2], first[2:4], second[2:4], first[4:6]]


def test_the_queue_limit_counts_windows_not_documents():
    worker = InferenceWorker(LengthScorer(), max_queue_pairs=10, batch_wait_ms=0)
    worker.start()

    async def main():
        with pytest.raises(Overloaded, match="0 pairs are waiting"):
            await worker.score(["q"] * 2, ["long", "longer"], costs=[6, 5])
        with pytest.raises(ValueError, match="costs: expected 2 counts of at least 1"):
            await worker.score(["q"] * 2, ["a", "b"], costs=[1, 0])
        return await worker.score(["q"] * 2, ["long", "longer"], costs=[6, 4])

    assert list(run(main())) == [4.0, 6.0]
    worker.stop()


def test_lanes_share_rounds_each_with_its_own_model_limit_and_metrics():
    """Models sharing one worker: one round holds both, each pair's model goes along, each lane
    counts its own queue and rounds; a task between rounds runs on the worker thread."""
    calls, seen = [], {"a": [], "b": []}

    def score(queries, docs, *, models):
        calls.append(list(models))
        return np.array([float(len(d)) * (1 if m == "a" else -1) for d, m in zip(docs, models)])

    worker = InferenceWorker(score, max_queue_pairs=3, batch_wait_ms=500)
    lanes = {name: worker.add_lane(name, lambda p, j, name=name: seen[name].append((p, j))) for name in "ab"}
    worker.start()

    async def main():
        both = asyncio.gather(
            worker.score(["q"] * 2, ["aa", "aaa"], lane=lanes["a"]),
            worker.score(["q"] * 3, ["b", "bb", "bbbb"], lane=lanes["b"]),
        )
        await asyncio.sleep(0.01)  # both queued; the idle worker waits for more to join
        # a's lane is full at 3 pairs whatever b's holds
        with pytest.raises(Overloaded, match="2 pairs are waiting"):
            await worker.score(["q"] * 2, ["x", "y"], lane=lanes["a"])
        return await both

    got_a, got_b = run(main())
    ran = threading.Event()
    worker.call_between_rounds(lambda: ran.set() if threading.current_thread() is worker._thread else None)
    assert ran.wait(10)
    worker.stop()
    assert list(got_a) == [2.0, 3.0] and list(got_b) == [-1.0, -2.0, -4.0]
    assert calls == [["a", "a", "b", "b", "b"]]  # one round, every pair with its model
    assert seen == {"a": [(2, 1)], "b": [(3, 1)]}
    assert lanes["a"].queued_pairs == lanes["b"].queued_pairs == worker.queued_pairs == 0
