"""Per-epoch negative sampling.

Each epoch every training query gets a fresh group: its positives (all, or
``max_positives`` drawn at random) and ``num_negatives`` negatives, of which
``round(hard_ratio * num_negatives)`` come from the line's mined ``negatives`` and the
rest are random documents of other queries. A random negative is never one of the query's
positives, by doc_id or by identical text. When a query has too few hard negatives, random
ones fill the gap.

The draw is a pure function of (seed, epoch, query text): it does not depend on the
order in which queries are visited, the process that draws them, or earlier draws.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.data import Doc, QueryRecord
from rerankit.score_injection import levels


@dataclass(frozen=True)
class Group:
    """One query's training group for one epoch; labels are 1 for positives, 0 for negatives."""

    query: str
    docs: tuple[str, ...]
    labels: tuple[int, ...]
    doc_ids: tuple[str, ...]
    # Teacher score of each document for this query (None where the line gave none; always
    # None for random negatives, whose scores, if any, were for another query).
    teacher: tuple[float | None, ...] = ()
    # Each document's first-stage level (``rerankit.score_injection``) against the line's scored
    # documents; empty when the line carries no score.
    levels: tuple[int, ...] = ()
    # The query's task instruction for a decoder's template (None: the template's default).
    instruction: str | None = None
    # Each document's weighed, standardized untrained signals (``rerankit.complement``); empty
    # unless ``loss.complement`` asks for them.
    prior: tuple[float, ...] = ()


def _query_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


class NegativeSampler:
    """Draws each query's group for an epoch (see module docstring)."""

    def __init__(
        self,
        records: Sequence[QueryRecord],
        num_negatives: int = 7,
        hard_ratio: float = 0.75,
        max_positives: int = 4,
        seed: int = 42,
    ) -> None:
        if not records:
            raise ValueError("NegativeSampler needs at least one record")
        self.records = list(records)
        self.num_negatives = num_negatives
        self.hard_ratio = hard_ratio
        self.max_positives = max_positives
        self.seed = seed
        # Every document of the training set, once per doc_id, sorted by doc_id so that the
        # draw does not depend on the order of the file.
        pool: dict[str, Doc] = {}
        for rec in self.records:
            for doc in rec.positives + rec.negatives:
                pool.setdefault(doc.doc_id, doc)
        self.pool = [pool[k] for k in sorted(pool)]

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, epoch: int, record: QueryRecord) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, _query_seed(record.key)])

    def group(self, index: int, epoch: int) -> Group:
        record = self.records[index]
        rng = self.rng(epoch, record)
        positives = list(record.positives)
        if len(positives) > self.max_positives:
            picks = rng.choice(len(positives), self.max_positives, replace=False)
            positives = [positives[i] for i in sorted(picks)]

        n_hard = min(round(self.hard_ratio * self.num_negatives), len(record.negatives))
        hard_idx = rng.choice(len(record.negatives), n_hard, replace=False) if n_hard else []
        negatives = [record.negatives[i] for i in hard_idx]
        randoms = self._random_negatives(rng, record, negatives, self.num_negatives - len(negatives))
        docs = positives + negatives + randoms
        teacher = tuple(d.score for d in positives + negatives) + (None,) * len(randoms)
        scored = [d.score for d in record.positives + record.negatives if d.score is not None]
        return Group(
            record.query,
            tuple(d.text for d in docs),
            tuple([1] * len(positives) + [0] * (len(negatives) + len(randoms))),
            tuple(d.doc_id for d in docs),
            teacher,
            tuple(levels(teacher, scored)) if scored else (),
            record.instruction,
        )

    def _random_negatives(
        self, rng: np.random.Generator, record: QueryRecord, taken: list[Doc], count: int
    ) -> list[Doc]:
        if count <= 0:
            return []
        banned_ids = {d.doc_id for d in record.positives} | {d.doc_id for d in taken}
        banned_texts = {d.text for d in record.positives}
        chosen: list[Doc] = []
        # Rejection sampling over a permutation: every pool document is tried at most once.
        for i in rng.permutation(len(self.pool)):
            doc = self.pool[i]
            if doc.doc_id in banned_ids or doc.text in banned_texts:
                continue
            banned_ids.add(doc.doc_id)
            chosen.append(doc)
            if len(chosen) == count:
                break
        return chosen
