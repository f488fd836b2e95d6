import pytest

from rerankit.scoring import token_budget_batches

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
