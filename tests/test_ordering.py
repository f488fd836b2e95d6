import numpy as np
import pytest

from rerankit.ordering import best_first, ranks

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("seed", range(20))
def test_top_k_is_exactly_the_stable_full_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(3, 40)).astype(np.float32)  # many ties
    for k in (0, 1, 3, 7, 39, 40, 100, None):
        want = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
        np.testing.assert_array_equal(best_first(scores, k), want)
        np.testing.assert_array_equal(best_first(scores[0], k), want[0])


def test_nan_scores_fall_back_to_the_full_sort():
    scores = np.array([0.5, np.nan, 0.9, 0.5])
    assert best_first(scores, 2).tolist() == [2, 0]


def test_ranks_are_one_based_and_ties_keep_input_order():
    assert ranks(np.array([0.1, 0.9, 0.1, 0.5])).tolist() == [3, 1, 4, 2]
