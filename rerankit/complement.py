"""Training the cross-encoder as the complement of the self-ensemble's other signals.

The shipped score is a fusion: the cross-encoder's logit and the untrained signals (BM25 with
the corpus's statistics, the backbone's cosine, and their best-sentence forms), each
standardized and weighed per family (``rerankit.ensemble``). Trained alone, the cross-encoder
may spend its capacity on what those signals already rank. With ``loss.complement: ensemble``
the ranking loss reads each training pair the way the ensemble's equal weights fuse it:

    fused = logit + spread(logits) · Σ_s (w_s / w_reranker) · (s − mean_s) / std_s

``spread(logits)`` is the standard deviation of the batch's logits, held constant, so the ratio
between the cross-encoder and the signals stays the one of equal weights however the
cross-encoder scales its logits. Two approximations: each signal's mean and standard deviation
are taken over the training lines' documents (the ensemble takes them over the validation
candidates as deployed), and the ensemble's fit at the end of the run may still move the weights
away from equal. The cross-encoder is to learn what the signals miss, the residual of boosting.
Checkpoints are still chosen on the cross-encoder's own validation score. On the quality
benchmark (``benchmarks/results/quality_ablations.md``, row 29) the cross-encoder trained this way
ranked far worse alone and the shipped ensemble lost on both domains: it is not the default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.data import QueryRecord
from rerankit.ensemble import (
    PIN_LIMIT,
    BestSentence,
    BM25Signal,
    CosineSignal,
    Ensemble,
    document_sentences,
    equal_weights,
)

log = logging.getLogger(__name__)


@dataclass
class SignalPrior:
    """Each pair's standardized, weighed signals (see the module docstring): the fixed part of
    the fused training score."""

    signals: Mapping[str, object]  # name -> object with scores(queries, docs)
    # equal weights; the reranker's mean 0 and std 1, so a zero logit adds nothing to the fusion
    fusion: Ensemble

    def __call__(self, query: str, docs: Sequence[str]) -> tuple[float, ...]:
        features = {name: s.scores([query] * len(docs), list(docs)) for name, s in self.signals.items()}
        shares = self.fusion.combine({"reranker": np.zeros(len(docs)), **features})
        return tuple(float(v) for v in shares / self.fusion.weights[0])  # over the reranker's weight


def build_prior(
    records: Sequence[QueryRecord],
    corpus_texts: Sequence[str],
    base_model: str,
    revision: str | None = None,
) -> SignalPrior:
    """The prior of the signals the ensemble would fit for this backbone: BM25 over
    ``corpus_texts`` and, when the backbone is a sentence encoder, its cosine (fp32, its pooling,
    base weights), each with its best-sentence form. Every training document, query and sentence
    is embedded once and, up to ``PIN_LIMIT`` texts, kept for the run (under ``torchrun`` each
    process builds its own)."""
    from rerankit.loading import resolve_model_path

    bm25 = BM25Signal.from_corpus(list(corpus_texts))
    signals: dict[str, object] = {"bm25": bm25, "bm25_sentence": BestSentence(bm25)}
    try:
        cosine = CosineSignal.load(resolve_model_path(base_model), revision=revision)
    except (OSError, ValueError) as exc:  # as the ensemble at the end of the run: BM25 alone
        log.warning(
            "loss.complement: the backbone %s cannot be read as a sentence encoder (%s)", base_model, exc
        )
        cosine = None
    if cosine is None:
        log.info("loss.complement: no cosine signal for the backbone %s, BM25 alone", base_model)
    else:
        unique = list(dict.fromkeys(d.text for r in records for d in r.positives + r.negatives))
        texts = [r.query for r in records] + unique + [s for d in unique for s in document_sentences(d)]
        # kept for the run (random negatives come back every epoch); past the cap, the cache
        log.info("loss.complement: embedding %d training texts with the backbone", min(len(texts), PIN_LIMIT))
        cosine.pin(texts[:PIN_LIMIT])
        signals |= {"cosine": cosine, "cosine_sentence": BestSentence(cosine)}
    queries = [r.query for r in records for _ in r.positives + r.negatives]
    docs = [d.text for r in records for d in r.positives + r.negatives]
    means, stds = [], []
    for signal in signals.values():
        values = np.asarray(signal.scores(queries, docs), dtype=np.float64)
        means.append(float(values.mean()))
        stds.append(float(values.std()) or 1.0)
    names = ("reranker", *signals)
    return SignalPrior(signals, Ensemble(names, equal_weights(names), (0.0, *means), (1.0, *stds)))
