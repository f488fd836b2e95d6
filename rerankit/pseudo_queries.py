"""Pseudo-queries from an unlabelled corpus, for adapting a reranker to it before (or beside)
its labelled data: ``rerankit mine --corpus corpus.jsonl --pseudo-queries N``.

Inverse cloze (Lee et al., ACL 2019, "Latent Retrieval for Weakly Supervised Open Domain
Question Answering"): one sentence of a passage becomes a query, and the passage is its
positive. With ``remove_sentence`` (the default) the sentence is cut out of the positive, so
the model must match the query to its context rather than find a copy of it. Negatives are then mined
over the whole corpus with the usual first stages (``rerankit.mining``); the passage a
pseudo-query came from is never one of its negatives.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from rerankit.data import Doc, QueryRecord
from rerankit.errors import RerankitError
from rerankit.mining import MiningInput, mine
from rerankit.text_units import sentences

# Longer "sentences" (lists, tables, a missed sentence end) are not query-like, and would leave
# the document little of the pair's token budget.
MAX_WORDS = 48


@dataclass(frozen=True)
class PseudoQuery:
    query: str
    doc_id: str
    positive: str  # the passage as the positive reads it (the sentence cut out, for inverse cloze)
    kind: str  # how it was made: "inverse_cloze"


def inverse_cloze(
    doc_id: str,
    text: str,
    n: int,
    rng: random.Random,
    *,
    remove_sentence: bool = True,
    min_words: int = 5,
    max_words: int = MAX_WORDS,
) -> list[PseudoQuery]:
    """Up to ``n`` pseudo-queries of one passage, each a different sentence of ``min_words`` to
    ``max_words`` words; none when the passage has fewer than two sentences (its positive
    would be empty once the sentence is cut out)."""
    parts = sentences(text)
    if len(parts) < 2:
        return []
    usable = [i for i, s in enumerate(parts) if min_words <= len(s.split()) <= max_words]
    chosen = sorted(rng.sample(usable, min(n, len(usable))))
    return [
        PseudoQuery(
            parts[i],
            doc_id,
            " ".join(parts[:i] + parts[i + 1 :]) if remove_sentence else text,
            "inverse_cloze",
        )
        for i in chosen
    ]


def build(
    corpus: Mapping[str, str],
    per_passage: int = 1,
    *,
    remove_sentence: bool = True,
    min_words: int = 5,
    seed: int = 0,
) -> list[PseudoQuery]:
    """``per_passage`` inverse-cloze queries per passage, in corpus order; the same corpus and
    seed give the same queries."""
    if per_passage < 1:
        raise ValueError(f"per_passage must be at least 1, got {per_passage}")
    rng = random.Random(seed)
    pseudo: list[PseudoQuery] = []
    for doc_id, text in corpus.items():
        pseudo += inverse_cloze(
            doc_id, text, per_passage, rng, remove_sentence=remove_sentence, min_words=min_words
        )
    return pseudo


def require(pseudo: list[PseudoQuery], source: str, min_words: int = 5) -> list[PseudoQuery]:
    """``pseudo``, or RerankitError naming ``source`` when there is none to train on."""
    if not pseudo:
        raise RerankitError(
            f"{source}: no passage has two sentences, one of {min_words} to {MAX_WORDS} words, to "
            "make an inverse-cloze query from"
        )
    return pseudo


def mined_records(corpus: Mapping[str, str], pseudo: list[PseudoQuery], **mine_options) -> list[QueryRecord]:
    """The pseudo-queries' training records: negatives mined over ``corpus``
    (``rerankit.mining.mine`` with ``mine_options``), positives as the queries see them."""
    return records(pseudo, mine(mining_input(corpus, pseudo), **mine_options))


def mining_input(corpus: Mapping[str, str], pseudo: list[PseudoQuery]) -> MiningInput:
    """The pseudo-queries as mining queries, each with its passage as the one positive."""
    return MiningInput(
        dict(corpus),
        {str(i): p.query for i, p in enumerate(pseudo)},
        {str(i): [p.doc_id] for i, p in enumerate(pseudo)},
    )


def records(pseudo: list[PseudoQuery], mined: list[QueryRecord]) -> list[QueryRecord]:
    """Mined records with each positive read as its pseudo-query sees it (sentence cut out)."""
    out = []
    for record in mined:
        item = pseudo[int(record.meta["query_id"])]
        out.append(
            QueryRecord(
                record.query,
                (Doc(item.doc_id, item.positive, record.positives[0].score),),
                record.negatives,
                source_chunk=item.doc_id,
                meta={**record.meta, "pseudo_query": item.kind},
            )
        )
    return out
