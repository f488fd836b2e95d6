"""Score injection: the first stage's score of each document written into the model's input as
text (Askari et al., ECIR 2023, "Injecting the BM25 Score as Text Improves BERT-Based
Re-rankers"), so the cross-encoder reads the retriever's judgement beside the words instead of
having its score fused in afterwards.

A score is written as an integer level from 0 to ``SCALE``: the score divided by the best score
among its query's candidates (scores are first shifted to start at 0 when a list holds a
negative one). For first stages whose scores are never negative (BM25, reciprocal-rank fusion)
dividing by the best rather than min-max keeps a level independent of how deep the list goes:
training reads a line's mined documents (a first stage's top 15, say), inference its top 30,
and BM25's third document gets the same level in both. Scores that can be negative (a cosine,
another model's logits) are shifted by their list's lowest, which does depend on the depth.
The level follows the query (``query [SEP] 87``): the query side is never truncated, so every
window of a long document reads it.

Training reads each document's ``"score"`` (``rerankit mine --teacher-scores``); random
negatives, from outside the first stage's list, read 0. Inference reads ``first_stage``
(``Reranker.rerank``, the server's ``first_stage_scores``, the adapters' retriever scores).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SCALE = 100


@dataclass(frozen=True)
class ScoreInjection:
    # Text between the query and its level: the tokenizer's separator token for encoders, words
    # for prompt templates (a decoder has no separator of its own).
    marker: str

    @classmethod
    def for_tokenizer(cls, tokenizer, prompt=None) -> ScoreInjection:
        sep = getattr(tokenizer, "sep_token", None)
        return cls(sep if prompt is None and sep else "| retriever score:")

    def query(self, query: str, level: int) -> str:
        return f"{query} {self.marker} {level}"

    def queries(self, query: str, scores: Sequence[float | None]) -> list[str]:
        """``query`` as the model reads it beside each of the candidates ``scores`` belong to
        (a candidate without a score reads level 0)."""
        return [self.query(query, level) for level in levels(scores)]

    def to_dict(self) -> dict:
        return {"marker": self.marker, "scale": SCALE}

    @classmethod
    def from_dict(cls, data: Mapping) -> ScoreInjection:
        if data.get("scale", SCALE) != SCALE:
            raise ValueError(f"scale {data.get('scale')!r} is not this version's {SCALE}")
        marker = data["marker"]
        if not isinstance(marker, str) or not marker:
            raise ValueError(f"marker must be a non-empty string, got {marker!r}")
        return cls(marker)


def levels(scores: Sequence[float | None], reference: Sequence[float] | None = None) -> list[int]:
    """The level (0..SCALE) of each score against ``reference`` (the query's scored candidates;
    ``scores`` themselves by default). None, a document the first stage did not score, is 0."""
    known = np.asarray([s for s in (scores if reference is None else reference) if s is not None], float)
    if known.size == 0:
        return [0] * len(scores)
    # Scaled to at most 1 in magnitude first, so that no difference of huge scores overflows.
    magnitude = float(np.abs(known).max()) or 1.0
    floor = min(0.0, float(known.min()) / magnitude)
    top = float(known.max()) / magnitude - floor
    out = []
    for s in scores:
        if s is None:
            out.append(0)
        elif top <= 0:  # every candidate scored zero
            out.append(SCALE)
        else:
            out.append(int(np.clip(round(SCALE * (s / magnitude - floor) / top), 0, SCALE)))
    return out
