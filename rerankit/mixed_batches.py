"""The pairs of several rerankers that share one base (``SharedBase``), scored in shared batches.

Each reranker turns its pairs into what its model reads, as it would alone (its documents'
windows, its prompt template and instructions, its ``max_length``: ``Reranker.model_pairs``).
The pairs of all of them are then cut into token-budget batches together, each row routed to
its reranker's adapter (``SharedBase.forward``: one mixed-adapter pass where peft can mix them,
else one pass per adapter), and each reranker gets its own pairs' logits back to aggregate its
windows. In fp32 a pair scores as it would alone (its batch neighbours do not move it).

    from rerankit.mixed_batches import score_together
    (logits_a, windows_a), (logits_b, windows_b) = score_together(
        [(reranker_a, queries_a, docs_a, None), (reranker_b, queries_b, docs_b, None)]
    )
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rerankit.scoring import token_budget_batches

# (reranker, queries as its model reads them, documents, instructions or None)
Part = tuple[object, Sequence[str], Sequence[str], Sequence[str | None] | None]


def shared_base_of(reranker):
    """The ``SharedBase`` a reranker scores through, or None (a merged or compiled model)."""
    return getattr(reranker.model, "shared", None)


def score_together(parts: Sequence[Part]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per part, what ``reranker.input_logits(queries, docs, instructions)`` returns (logits,
    windows scored per document), the pairs of every part scored in shared batches. Every
    reranker must score through one SharedBase (ValueError otherwise)."""
    if not parts:
        return []
    bases = {id(shared_base_of(reranker)): shared_base_of(reranker) for reranker, *_ in parts}
    if len(bases) != 1 or None in bases.values():
        raise ValueError("score_together: the rerankers must all score through one SharedBase")
    shared = next(iter(bases.values()))
    prepared = [
        reranker.model_pairs(queries, docs, instructions) for reranker, queries, docs, instructions in parts
    ]
    keys = {tuple(sorted(encoded)) for _, encoded in prepared}
    if len(keys) != 1:
        raise ValueError(f"the rerankers' tokenizers encode pairs differently: {sorted(keys)}")
    encoded = {key: [row for _, part in prepared for row in part[key]] for key in keys.pop()}
    adapters = [
        reranker.model.name for (reranker, *_), (pairs, _) in zip(parts, prepared) for _ in pairs.queries
    ]
    rerankers = [reranker for reranker, *_ in parts]
    batches = token_budget_batches(
        [len(ids) for ids in encoded["input_ids"]],
        max_tokens=min(r.max_tokens for r in rerankers),
        max_batch=min(r.max_batch for r in rerankers),
    )
    scores = shared.score_batches(encoded, batches, adapters)
    results, start = [], 0
    for pairs, _ in prepared:
        end = start + len(pairs.queries)
        results.append(pairs.document_scores(scores[start:end]))
        start = end
    return results
