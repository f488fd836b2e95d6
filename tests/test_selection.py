"""The one-standard-error rule the ensemble and fusion fits share (``rerankit.selection``)."""

from __future__ import annotations

import numpy as np
import pytest

from rerankit.selection import beats_noise, gain_and_error, held_out_values, query_folds

pytestmark = pytest.mark.smoke


def test_a_gain_beats_noise_only_beyond_its_standard_error():
    # one query of 40 ranked better, one a little worse: within noise
    gain, error = gain_and_error(np.array([0.5, -0.2] + [0.0] * 38))
    assert 0 < gain < error and not beats_noise(gain, error, 40)
    # one query alone ranked better: the gain is its standard error, to rounding, and does not count
    gain, error = gain_and_error(np.array([0.3] + [0.0] * 39))
    assert gain == pytest.approx(error) and not beats_noise(gain, error, 40)
    # most queries a little better: beyond it
    gain, error = gain_and_error(np.array([0.05] * 30 + [-0.05] * 10))
    assert gain > error > 0 and beats_noise(gain, error, 40)
    # a single query has no standard error, and nothing beats noise on it
    assert gain_and_error(np.array([0.3])) == (0.3, 0.0)
    assert not beats_noise(0.3, 0.0, 1)
    assert gain_and_error(np.array([])) == (0.0, 0.0)


def test_query_folds_partition_the_queries_reproducibly():
    parts = query_folds(23, 5, seed=7)
    assert len(parts) == 5 and sorted(q for p in parts for q in p) == list(range(23))
    assert {len(p) for p in parts} == {4, 5}
    assert parts == query_folds(23, 5, seed=7) != query_folds(23, 5, seed=8)
    assert sorted(query_folds(3, 5, seed=0)) == [[0], [1], [2]]  # fewer queries than folds
    assert query_folds(1, 5, seed=0) == [[0]] and query_folds(0, 5, seed=0) == [[]]
    with pytest.raises(ValueError, match="at least 2 folds"):  # one fold would judge its own fit
        query_folds(23, 1, seed=0)


def test_held_out_values_fit_each_fold_without_its_own_queries():
    parts = query_folds(10, 5, seed=0)
    fitted_on: list[list[int]] = []

    def fit(queries):
        fitted_on.append(queries)
        return frozenset(queries)

    values = held_out_values(10, parts, fit, lambda seen, q: float(q in seen) + q)
    assert values.tolist() == list(range(10))  # no query was in the set its setting was fitted on
    assert len(fitted_on) == 5 and all(len(f) == 8 for f in fitted_on)
    # one query alone: fitted on itself, since there is nothing else
    assert held_out_values(1, [[0]], fit, lambda seen, q: float(q in seen)).tolist() == [1.0]
