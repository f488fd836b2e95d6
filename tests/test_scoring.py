from pathlib import Path

import numpy as np
import pytest
from conftest import _bert_tokenizer

from rerankit.runtimes import GraphModel
from rerankit.scoring import score_pairs, token_budget_batches

pytestmark = pytest.mark.smoke


def test_batches_cover_every_pair_once_and_respect_the_budget():
    lengths = [5, 300, 17, 120, 120, 8, 64, 250, 33, 9] * 7
    batches = token_budget_batches(lengths, max_tokens=512, max_batch=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= 512 or len(batch) == 1
        assert len(batch) <= 16
    # longest first, so short pairs share large batches
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)
    assert len(batches[-1]) == 16


def test_a_pair_longer_than_the_budget_gets_its_own_batch():
    assert token_budget_batches([1000, 10, 10], max_tokens=100, max_batch=8) == [[0], [1, 2]]


def batch_dependent_graph(streams: int):
    """A graph whose logit of a row is its token count plus 100 × the rows run beside it
    (a bf16 graph's scores move with their neighbours), over ``streams`` streams, and the
    sizes of the batches it ran."""
    ran = []

    def run(inputs):
        rows = len(inputs["input_ids"])
        ran.append(rows)
        return (inputs["attention_mask"].sum(axis=1) + 100 * rows).astype(np.float32)[:, None]

    def run_parallel(batches, out):
        for rows, inputs in batches:
            out[rows] = run(inputs)[:, 0]

    graph = GraphModel(
        "fake",
        "bf16",
        Path("fake"),
        ("input_ids", "attention_mask"),
        run,
        batch_dependent=True,
        _run_parallel=run_parallel if streams > 1 else None,
        streams=streams,
    )
    return graph, ran


@pytest.mark.parametrize("streams", [1, 2])
def test_a_group_scores_in_a_round_as_it_does_alone(streams):
    """score_pairs with groups: each request's scores on a batch-dependent graph are the ones
    it gets scored alone, a request of one batch split over the streams either way."""
    tokenizer = _bert_tokenizer()
    requests = [[f"doc {i} " + "word " * (i * j % 7) for j in range(n)] for i, n in enumerate([3, 9, 1, 4])]
    graph, ran = batch_dependent_graph(streams)

    def score(docs, groups=None):
        return score_pairs(graph, tokenizer, ["a query"] * len(docs), docs, max_tokens=64, groups=groups)

    alone = [score(docs) for docs in requests]
    ran_alone = sorted(ran)
    ran.clear()
    together = score([d for docs in requests for d in docs], groups=[len(docs) for docs in requests])
    np.testing.assert_array_equal(together, np.concatenate(alone))
    assert sorted(ran) == ran_alone
    if streams == 2:  # the request of 3 pairs fits one batch: split 2 + 1
        assert {1, 2} <= set(ran_alone)
    with pytest.raises(ValueError, match="do not cover 17 pairs"):
        score([d for docs in requests for d in docs], groups=[3, 9])
