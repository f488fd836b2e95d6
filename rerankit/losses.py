"""Ranking losses over query groups.

Every loss takes the same three tensors, shaped (queries, group size):

- ``scores``: raw model scores (logits), any float dtype (computed in fp32);
- ``labels``: 1 for a positive document, 0 for a negative;
- ``mask``: True where the slot holds a document (groups are padded to the longest).

A query contributes only if it has at least one positive and one negative (BCE uses every
real slot). Pairs are all positive × negative combinations within a query, so several
positives per query take part together.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _pair_differences(
    scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_pos - s_neg) for every (query, pos slot, neg slot), and which of them are real pairs."""
    pos = (labels > 0) & mask
    neg = (labels <= 0) & mask
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [Q, G, G]: s_i - s_j
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)  # i positive, j negative
    return diff, valid


def _mean_over(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if not valid.any():
        # No usable pair: a zero that still depends on the scores keeps autograd happy.
        return values.sum() * 0.0
    return values[valid].mean()


class PairwiseMarginLoss(nn.Module):
    """Hinge loss ``mean(max(0, margin - (s_pos - s_neg)))`` over every positive × negative pair.

    The default of rerankit: it asks each positive to beat each negative of its query by
    ``margin`` and stops pushing once it does.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, scores, labels, mask):
        diff, valid = _pair_differences(scores.float(), labels, mask)
        return _mean_over(F.relu(self.margin - diff), valid)


class RankNetLoss(nn.Module):
    """RankNet (Burges et al., 2005): ``mean(softplus(-(s_pos - s_neg) / temperature))``.

    The logistic loss of the pairwise preference; a smooth cousin of the margin loss.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, scores, labels, mask):
        diff, valid = _pair_differences(scores.float() / self.temperature, labels, mask)
        return _mean_over(F.softplus(-diff), valid)


class ListwiseSoftmaxLoss(nn.Module):
    """Softmax cross-entropy in which each positive competes only with the negatives.

    For a positive p of query q with negatives N(q)::

        loss(q, p) = -log( exp(s_p / T) / (exp(s_p / T) + sum_{n in N(q)} exp(s_n / T)) )

    averaged over every positive of every query. Putting all positives in one softmax
    would make them compete with each other; this form does not (a multi-positive InfoNCE).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, scores, labels, mask):
        scaled = scores.float() / self.temperature
        pos = (labels > 0) & mask
        neg = (labels <= 0) & mask
        has_both = pos.any(1) & neg.any(1)
        neg_lse = torch.logsumexp(scaled.masked_fill(~neg, float("-inf")), dim=1, keepdim=True)
        # -log softmax over {p} ∪ N(q) = logaddexp(s_p, lse(N)) - s_p
        per_positive = torch.logaddexp(scaled, neg_lse) - scaled
        return _mean_over(per_positive, pos & has_both.unsqueeze(1))


class BCEPairLoss(nn.Module):
    """Pointwise binary cross-entropy on the logits, positives weighted by ``pos_weight``.

    With ``pos_weight=None`` the weight is negatives/positives of the batch, which balances
    the two classes the way sentence-transformers' ``BinaryCrossEntropyLoss`` recommends.
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, scores, labels, mask):
        logits, targets = scores.float()[mask], labels.float()[mask]
        weight = self.pos_weight
        if weight is None:
            n_pos = targets.sum().clamp(min=1.0)
            weight = ((targets.numel() - n_pos) / n_pos).item()
        return F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=torch.tensor(weight, device=logits.device)
        )


class TeacherKLLoss(nn.Module):
    """Distillation: KL(teacher ‖ student) over each query's documents with a known teacher score.

    Teacher scores are standardized within the query first, so a teacher on any scale (BM25's
    scores, a cosine, another cross-encoder's logits) gives a target of the same shape;
    ``temperature`` sharpens (< 1) or flattens (> 1) it. A query needs two known documents.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, scores, teacher, known):
        count = known.sum(1, keepdim=True).clamp(min=1)
        mean = (teacher * known).sum(1, keepdim=True) / count
        spread = (((teacher - mean) ** 2) * known).sum(1, keepdim=True).div(count).sqrt()
        target = ((teacher - mean) / (spread + 1e-6) / self.temperature).masked_fill(~known, float("-inf"))
        student = scores.float().masked_fill(~known, float("-inf"))
        target_log, student_log = F.log_softmax(target, 1), F.log_softmax(student, 1)
        per_doc = (target_log.exp() * (target_log - student_log)).masked_fill(~known, 0.0)
        usable = known.sum(1) >= 2
        return _mean_over(per_doc.sum(1), usable)


class MarginMSELoss(nn.Module):
    """Distillation (Hofstätter et al., 2020): ``mean(((s_p - s_n) - (t_p - t_n))²)`` over
    positive × negative pairs whose teacher scores are both known. The student copies the
    teacher's margins as they are, so the teacher should score on the student's logit scale
    (another cross-encoder); for other teachers ``kl`` is scale-free."""

    def forward(self, scores, teacher, known, labels):
        diff, valid = _pair_differences(scores.float(), labels, known)
        teacher_diff, _ = _pair_differences(teacher.float(), labels, known)
        return _mean_over((diff - teacher_diff) ** 2, valid)


def build_distillation(name: str, temperature: float = 1.0):
    """``loss.distillation``: a callable (scores, teacher, known, labels) -> loss, or None."""
    if name == "none":
        return None
    if name == "kl":
        kl = TeacherKLLoss(temperature)
        return lambda scores, teacher, known, labels: kl(scores, teacher, known)
    if name == "margin_mse":
        return MarginMSELoss()
    raise ValueError(f"unknown distillation {name!r}; expected none, kl or margin_mse")


def build_loss(
    name: str, *, margin: float = 1.0, temperature: float = 1.0, pos_weight: float | None = None
) -> nn.Module:
    """The loss named in ``loss.name`` of the config."""
    if name == "margin":
        return PairwiseMarginLoss(margin)
    if name == "ranknet":
        return RankNetLoss(temperature)
    if name == "listwise":
        return ListwiseSoftmaxLoss(temperature)
    if name == "bce":
        return BCEPairLoss(pos_weight)
    raise ValueError(f"unknown loss {name!r}; expected margin, ranknet, listwise or bce")
