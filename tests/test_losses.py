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


def test_teacher_kl_is_zero_when_the_student_copies_the_teacher_on_any_scale():
    from rerankit.losses import TeacherKLLoss

    teacher = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 7.0]])
    known = torch.tensor([[True, True, True], [True, True, False]])  # q1: only two known
    z = (teacher - teacher.mean(1, keepdim=True)) / teacher.std(1, unbiased=False, keepdim=True)
    z[1, :2] = torch.tensor([-1.0, 1.0])  # standardized over its two known documents
    kl = TeacherKLLoss()
    assert kl(z + 4.0, teacher, known).item() == pytest.approx(0.0, abs=1e-5)  # shift-free
    assert kl(z, teacher * 10 + 3, known).item() == pytest.approx(0.0, abs=1e-5)  # teacher scale-free
    student = torch.zeros(2, 3, requires_grad=True)
    loss = kl(student, teacher, known)
    # q0 by hand: p = softmax(z), KL(p || uniform over 3) = sum p log p + log 3
    p = torch.softmax(z[0], 0)
    q0 = (p * p.log()).sum().item() + math.log(3)
    p1 = torch.softmax(torch.tensor([-1.0, 1.0]), 0)
    q1 = (p1 * p1.log()).sum().item() + math.log(2)
    assert loss.item() == pytest.approx((q0 + q1) / 2, rel=1e-4)
    loss.backward()
    assert student.grad[1, 2] == 0  # unknown teacher score: no gradient
    lone = torch.tensor([[True, False, False], [False, False, False]])
    assert kl(student, teacher, lone).item() == 0.0  # a query needs two known documents


def test_margin_mse_hand_computed():
    from rerankit.losses import MarginMSELoss, build_distillation

    teacher = torch.tensor([[4.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    known = torch.tensor([[True, True, True], [True, False, False]])  # q1's negative unknown
    loss = MarginMSELoss()(SCORES, teacher, known, LABELS)
    # q0 pairs (pos, neg): (0, 2): (2-1) - (4-2) = -1; (1, 2): (0.5-1) - (1-2) = 0.5
    assert loss.item() == pytest.approx((1.0 + 0.25) / 2)
    assert build_distillation("none") is None
    assert build_distillation("margin_mse")(SCORES, teacher, known, LABELS).item() == pytest.approx(0.625)
    with pytest.raises(ValueError, match="unknown distillation"):
        build_distillation("mse")
