import math

import pytest
import torch

from rerankit.losses import BCEPairLoss, ListwiseSoftmaxLoss, PairwiseMarginLoss, RankNetLoss, build_loss

pytestmark = pytest.mark.smoke

# Two queries padded to 3 slots. q0: positives 2.0, 0.5; negative 1.0.
# q1: positive 0.0; negative 1.5; one padding slot (its score must be ignored).
SCORES = torch.tensor([[2.0, 0.5, 1.0], [0.0, 1.5, 99.0]], requires_grad=True)
LABELS = torch.tensor([[1, 1, 0], [1, 0, 0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])
# (pos - neg) differences: 2-1=1, 0.5-1=-0.5, 0-1.5=-1.5
DIFFS = [1.0, -0.5, -1.5]


def test_margin_hand_computed():
    loss = PairwiseMarginLoss(margin=1.0)(SCORES, LABELS, MASK)
    expected = sum(max(0.0, 1.0 - d) for d in DIFFS) / 3  # (0 + 1.5 + 2.5) / 3
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert SCORES.grad[1, 2] == 0  # padding gets no gradient
    SCORES.grad = None


def test_ranknet_hand_computed():
    loss = RankNetLoss()(SCORES, LABELS, MASK)
    expected = sum(math.log1p(math.exp(-d)) for d in DIFFS) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert RankNetLoss(temperature=2.0)(SCORES, LABELS, MASK).item() == pytest.approx(
        sum(math.log1p(math.exp(-d / 2)) for d in DIFFS) / 3, rel=1e-6
    )


def test_listwise_positives_do_not_compete():
    loss = ListwiseSoftmaxLoss()(SCORES, LABELS, MASK)

    def nll(p, negs):
        return -math.log(math.exp(p) / (math.exp(p) + sum(math.exp(n) for n in negs)))

    expected = (nll(2.0, [1.0]) + nll(0.5, [1.0]) + nll(0.0, [1.5])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Raising one positive must not raise the loss of the other positive.
    higher = SCORES.detach().clone()
    higher[0, 0] = 10.0
    assert ListwiseSoftmaxLoss()(higher, LABELS, MASK).item() < loss.item()


def test_bce_with_pos_weight_hand_computed():
    def bce(x, y, w):
        p = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(p) + (1 - y) * math.log(1 - p))

    real = [(2.0, 1), (0.5, 1), (1.0, 0), (0.0, 1), (1.5, 0)]
    loss = BCEPairLoss(pos_weight=2.0)(SCORES, LABELS, MASK)
    assert loss.item() == pytest.approx(sum(bce(x, y, 2.0) for x, y in real) / 5, rel=1e-6)
    auto = BCEPairLoss()(SCORES, LABELS, MASK)  # 2 negatives / 3 positives
    assert auto.item() == pytest.approx(sum(bce(x, y, 2 / 3) for x, y in real) / 5, rel=1e-6)


def test_query_without_negative_contributes_nothing():
    scores = torch.tensor([[3.0, 1.0]], requires_grad=True)
    loss = PairwiseMarginLoss()(scores, torch.tensor([[1, 1]]), torch.tensor([[True, True]]))
    assert loss.item() == 0.0
    loss.backward()  # still differentiable


def test_bf16_scores_are_computed_in_fp32():
    loss = PairwiseMarginLoss()(SCORES.detach().bfloat16(), LABELS, MASK)
    assert loss.dtype == torch.float32


def test_build_loss_names():
    assert isinstance(build_loss("margin", margin=0.5), PairwiseMarginLoss)
    assert isinstance(build_loss("listwise"), ListwiseSoftmaxLoss)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge")
