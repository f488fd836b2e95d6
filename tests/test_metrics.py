import math

import pytest

from rerankit.ranking_metrics import pairwise_accuracy, ranking_metrics

pytestmark = pytest.mark.smoke


def test_hand_computed_metrics():
    # q1: relevant d1, d3; ranking d2 > d1 > d3.  q2: relevant e1 ranked first.
    qrels = {"q1": {"d1": 1, "d2": 0, "d3": 1}, "q2": {"e1": 1, "e2": 0}}
    run = {"q1": {"d1": 0.5, "d2": 0.9, "d3": 0.1}, "q2": {"e1": 2.0, "e2": 1.0}}
    m = ranking_metrics(qrels, run, recall_at=2)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / idcg + 1.0) / 2)
    assert m["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1.0) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    # q1: both positives lose to d2 (0 of 2 pairs right); q2: 1 of 1.
    assert m["pairwise_accuracy"] == pytest.approx((0.0 + 1.0) / 2)


def test_ties_count_half_and_missing_query_scores_zero():
    assert pairwise_accuracy({"q": {"a": 1, "b": 0}}, {"q": {"a": 1.0, "b": 1.0}}) == 0.5
    m = ranking_metrics({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}})
    assert m["ndcg@10"] == pytest.approx(0.5)
