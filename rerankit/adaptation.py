"""Corpus adaptation inside ``fit``: the config's ``adaptation:`` section turns the user's
unlabelled corpus into inverse-cloze training queries (``rerankit.pseudo_queries``), mines
their negatives with the usual first stages (``rerankit.mining``) and hands them to the
trainer beside the labelled queries. ``rerankit mine --pseudo-queries`` writes the same
records to a file instead.

A user always has the corpus the reranker will search, including the passages no labelled
question touches; the pseudo-queries teach the model those passages' words and topics.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from rerankit import pseudo_queries as pq
from rerankit.beir import read_corpus
from rerankit.config import AdaptationConfig
from rerankit.data import QueryRecord, normalize_query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptationReport:
    corpus: str
    passages: int
    pseudo_queries: int
    mining: str
    seconds: float


def pseudo_query_records(
    cfg: AdaptationConfig,
    seed: int,
    labelled: int,
    exclude_queries: set[str] = frozenset(),
    *,
    teacher_scores: bool = False,
) -> tuple[list[QueryRecord], AdaptationReport]:
    """The training records of ``cfg.corpus``'s pseudo-queries (a seeded draw of at most
    ``max_queries`` and ``ratio`` × ``labelled``), leaving out any whose text is a labelled query
    in ``exclude_queries`` (so a validation question never comes back as a training query)."""
    started = time.perf_counter()
    corpus = read_corpus(cfg.corpus)
    pseudo = pq.build(corpus, cfg.per_passage, remove_sentence=cfg.remove_sentence, seed=seed)
    excluded = {normalize_query(q) for q in exclude_queries}  # case, spacing, end punctuation aside
    pseudo = pq.require(
        [p for p in pseudo if normalize_query(p.query) not in excluded], f"adaptation.corpus {cfg.corpus}"
    )
    caps = [cfg.max_queries, None if cfg.ratio is None else max(1, round(cfg.ratio * labelled))]
    cap = min((c for c in caps if c is not None), default=len(pseudo))
    if len(pseudo) > cap:
        pseudo = random.Random(seed).sample(pseudo, cap)
    log.info("adaptation: %d pseudo-queries from %d passages of %s", len(pseudo), len(corpus), cfg.corpus)
    # ``teacher_scores`` (for score injection): each document's first-stage score. A positive's
    # is that of its whole passage, the cut sentence included, so it is almost always the top one.
    records = pq.mined_records(
        corpus, pseudo, method=cfg.mining, num_negatives=cfg.num_negatives, teacher_scores=teacher_scores
    )
    report = AdaptationReport(
        cfg.corpus, len(corpus), len(records), cfg.mining, round(time.perf_counter() - started, 1)
    )
    return records, report
