"""The inference worker: cross-request batching, own results, dropped jobs, failures."""

import asyncio

import numpy as np
import pytest

from rerankit.server.worker import InferenceWorker, Overloaded

pytestmark = pytest.mark.smoke


class LengthScorer:
    """Scores a pair by the length of its document, and records what it scored."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, queries, docs):
        if self.fail_on is not None and self.fail_on in docs:
            raise RuntimeError("boom")
        self.calls.append(list(docs))
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


def test_without_cross_batching_each_request_is_its_own_round():
    rounds = []
    worker = InferenceWorker(LengthScorer(), cross_batching=False, on_batch=lambda p, j: rounds.append(j))
    worker.start()

    async def main():
        return await asyncio.gather(*(worker.score(["q"], ["d" * i]) for i in range(1, 6)))

    assert [list(s) for s in run(main())] == [[float(i)] for i in range(1, 6)]
    worker.stop()
    assert rounds == [1] * 5


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
