"""Long documents: scoring a document by windows of its text instead of truncating it.

A cross-encoder reads at most ``max_length`` tokens of a (query, document) pair; truncation
throws away everything after the first window, wherever the answer is. With windows, the
document part is cut into overlapping token windows (the query stays whole in each), every
window is scored as its own pair, and the document's score is an aggregate of its windows'
scores (Dai & Callan, 2019: FirstP / MaxP):

- ``max``: the best window (MaxP, the default), ``first``: the first (FirstP, what truncation
  gives), ``mean``: their mean, ``max+first``: the mean of the best and the first.

Where the windows are cut (``cut``):

- ``boundaries`` (the default): a window holds whole paragraphs, as many as fit its token
  budget, so a paragraph that fits one window is read whole by one; a paragraph longer than a
  window is cut at sentence ends into pieces that overlap by whole sentences (up to ``stride``
  tokens), and a sentence longer than a window at tokens (``rerankit.text_units`` says where
  paragraphs and sentences begin);
- ``tokens``: fixed windows of the budget every ``size - stride`` tokens, wherever they fall.

The options are ``config.LongDocumentsConfig`` (config ``model.long_documents``). Windows are
cut on token offsets of the document alone and handed on as text, so every pair
still goes through the one pair encoding (``encoding.encode_pairs``) and the same token-budget
batching as any other pair. Documents with more windows than ``max_windows`` are read only that
far, and a warning says so.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.config import LongDocumentsConfig
from rerankit.encoding import document_budgets
from rerankit.prompts import PromptTemplate
from rerankit.text_units import paragraph_starts, sentence_starts


def window_spans(num_tokens: int, size: int, stride: int, max_windows: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering ``num_tokens`` with windows of ``size`` overlapping
    by ``stride``; at most ``max_windows`` (the last ones are dropped)."""
    if num_tokens <= size:
        return [(0, num_tokens)]
    step = max(1, size - min(stride, size - 1))
    spans = []
    start = 0
    while len(spans) < max_windows:
        end = min(start + size, num_tokens)
        spans.append((start, end))
        if end == num_tokens:
            break
        start += step
    return spans


def boundary_spans(
    num_tokens: int,
    paragraphs: Sequence[int],
    sentences: Sequence[int],
    size: int,
    stride: int,
    max_windows: int,
) -> list[tuple[int, int]]:
    """Token ranges [start, end) of windows of at most ``size`` tokens cut at paragraph, then
    sentence, boundaries (``paragraphs`` and ``sentences``: the token indices where one begins);
    at most ``max_windows``. See the module docstring."""
    if num_tokens <= size:
        return [(0, num_tokens)]
    edges = sorted({0, *(p for p in paragraphs if 0 < p < num_tokens), num_tokens})
    units: list[tuple[int, int]] = []
    for start, end in zip(edges, edges[1:]):
        if end - start <= size:
            units.append((start, end))
        else:
            inside = [s for s in sentences if start < s < end]
            units.extend(_sentence_pieces(start, end, inside, size, stride))
    windows: list[tuple[int, int]] = []
    i = 0
    while i < len(units) and len(windows) < max_windows:
        start, j = units[i][0], i
        while j + 1 < len(units) and units[j + 1][1] - start <= size:
            j += 1
        windows.append((start, units[j][1]))
        i = j + 1
    return windows


def _sentence_pieces(
    start: int, end: int, sentences: Sequence[int], size: int, stride: int
) -> list[tuple[int, int]]:
    """A paragraph longer than a window as pieces of whole sentences (a sentence longer than a
    window cut at ``size`` tokens); each piece after the first repeats the sentences of the one
    before that fit in ``stride`` tokens, or ``stride`` tokens when it was cut mid-sentence."""
    edges = [start, *sentences, end]
    pieces = []
    piece_start = start
    while True:
        fitting = [e for e in edges if piece_start < e <= piece_start + size]
        piece_end = fitting[-1] if fitting else piece_start + size
        pieces.append((piece_start, piece_end))
        if piece_end >= end:
            return pieces
        floor = max(piece_start + 1, piece_end - stride)
        overlap = [e for e in edges if floor <= e <= piece_end]
        piece_start = overlap[0] if overlap else floor


def split_documents(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    options: LongDocumentsConfig,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
) -> tuple[list[str], list[str], list[int]]:
    """Every (query, document) pair as one or more (query, window) pairs.

    Returns the flat queries, the flat window texts and, per window, the index of the pair it
    came from (a window's instruction is its pair's). A document that fits the pair's budget
    stays one window (its whole text). Raises QueryTooLongError when a query leaves no room for
    its document.
    """
    flat_queries, flat_docs, owner = [], [], []
    spans_of, offsets_of = _document_spans(
        tokenizer, queries, docs, max_length, options, prompt, instructions
    )
    if any(spans[-1][1] < len(offsets) for spans, offsets in zip(spans_of, offsets_of)):
        # one fixed message, so Python shows it once per caller rather than once per batch
        warnings.warn(
            f"documents with more than max_windows ({options.max_windows}) windows are read only "
            "that far: raise long_documents.max_windows to read them whole",
            stacklevel=2,
        )
    for i, (query, doc, spans, offsets) in enumerate(zip(queries, docs, spans_of, offsets_of)):
        for start, end in spans:
            text = doc if (start, end) == (0, len(offsets)) else doc[offsets[start][0] : offsets[end - 1][1]]
            flat_queries.append(query)
            flat_docs.append(text)
            owner.append(i)
    return flat_queries, flat_docs, owner


def count_windows(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    options: LongDocumentsConfig,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Per (query, document) pair, how many windows ``score_documents`` scores for it (one
    each under ``truncate``), from token counts alone: what a request will cost, before it runs.
    Raises QueryTooLongError like ``split_documents``."""
    if options.mode == "truncate":
        return np.ones(len(docs), dtype=np.int64)
    spans_of, _ = _document_spans(tokenizer, queries, docs, max_length, options, prompt, instructions)
    return np.array([len(spans) for spans in spans_of], dtype=np.int64)


def _document_spans(
    tokenizer, queries, docs, max_length: int, options: LongDocumentsConfig, prompt, instructions=None
):
    """Per (query, document) pair, the token spans of its windows and the document's token
    offsets: the one cut ``split_documents`` scores and ``count_windows`` counts."""
    budgets = document_budgets(tokenizer, queries, max_length, prompt, instructions)
    encoded = tokenizer(
        list(docs),
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=prompt is not None,
    )
    spans = [
        _spans(doc, offsets, _window_size(options, budget), options)
        for doc, budget, offsets in zip(docs, budgets, encoded["offset_mapping"])
    ]
    return spans, encoded["offset_mapping"]


def _spans(doc: str, offsets, size: int, options: LongDocumentsConfig) -> list[tuple[int, int]]:
    if options.cut == "tokens" or len(offsets) <= size:
        return window_spans(len(offsets), size, options.stride, options.max_windows)
    # a boundary at character c begins at the first token that ends after c (a BPE token can
    # carry the space before its word)
    ends = [end for _, end in offsets]

    def tokens(chars: list[int]) -> list[int]:
        return [bisect.bisect_right(ends, c) for c in chars]

    return boundary_spans(
        len(offsets),
        tokens(paragraph_starts(doc)),
        tokens(sentence_starts(doc)),
        size,
        options.stride,
        options.max_windows,
    )


def _window_size(options: LongDocumentsConfig, budget: int) -> int:
    """Document tokens per window: the configured size, at most what the query leaves."""
    return min(options.window or budget, budget)


def aggregate(window_scores: np.ndarray, owner: Sequence[int], num_docs: int, how: str) -> np.ndarray:
    """One score per document from its windows' scores (windows in document order)."""
    per_doc: list[list[float]] = [[] for _ in range(num_docs)]
    for score, i in zip(window_scores, owner):
        per_doc[i].append(float(score))
    result = np.empty(num_docs, dtype=np.float32)
    for i, scores in enumerate(per_doc):
        if how == "max":
            result[i] = max(scores)
        elif how == "first":
            result[i] = scores[0]
        elif how == "mean":
            result[i] = sum(scores) / len(scores)
        else:  # max+first
            result[i] = (max(scores) + scores[0]) / 2
    return result


def aggregate_tensor(window_scores, owner, num_docs: int, how: str):
    """``aggregate`` for torch tensors, differentiable: trains a document's score as the
    aggregate of its windows' scores (MaxP for ``max``). ``owner``: a long tensor."""
    import torch

    if how in ("max", "max+first"):
        best = window_scores.new_full((num_docs,), float("-inf"))
        best = best.scatter_reduce(0, owner, window_scores, reduce="amax", include_self=False)
    if how in ("first", "max+first"):
        positions = torch.arange(len(owner), device=owner.device)
        first_index = torch.full((num_docs,), len(owner), device=owner.device, dtype=torch.long)
        first_index = first_index.scatter_reduce(0, owner, positions, reduce="amin", include_self=False)
        first = window_scores[first_index]
    if how == "max":
        return best
    if how == "first":
        return first
    if how == "max+first":
        return (best + first) / 2
    total = window_scores.new_zeros(num_docs).index_add(0, owner, window_scores)
    counts = torch.bincount(owner, minlength=num_docs).to(window_scores.dtype)
    return total / counts


@dataclass(frozen=True)
class DocumentPairs:
    """The plain pairs a model scores for some (query, document) pairs: one per document, or
    one per window of it (``owner``: the document each window came from)."""

    queries: Sequence[str]
    docs: Sequence[str]
    instructions: Sequence[str | None] | None
    num_docs: int
    aggregate: str
    owner: Sequence[int] | None = None  # None: one pair per document, in order

    def pair_groups(self, doc_groups: Sequence[int]) -> list[int]:
        """Consecutive runs of documents (their counts) as the runs of pairs they score as."""
        if self.owner is None:
            return list(doc_groups)
        counts = np.bincount(self.owner, minlength=self.num_docs)
        ends = np.cumsum(doc_groups)
        return [int(counts[end - size : end].sum()) for size, end in zip(doc_groups, ends)]

    def document_scores(self, pair_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per document, its score from its pairs' scores and the number of windows scored."""
        if self.owner is None:
            return pair_scores, np.ones(self.num_docs, dtype=np.int64)
        counts = np.bincount(self.owner, minlength=self.num_docs)
        return aggregate(pair_scores, self.owner, self.num_docs, self.aggregate), counts


def document_pairs(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    options: LongDocumentsConfig,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
) -> DocumentPairs:
    """The pairs to score for (query, document) pairs as ``options`` says: each pair itself
    (truncated), or its document's windows."""
    if options.mode == "truncate":
        return DocumentPairs(queries, docs, instructions, len(docs), options.aggregate)
    flat_queries, flat_docs, owner = split_documents(
        tokenizer, queries, docs, max_length, options, prompt, instructions
    )
    flat_instructions = None if instructions is None else [instructions[i] for i in owner]
    return DocumentPairs(flat_queries, flat_docs, flat_instructions, len(docs), options.aggregate, owner)


def score_documents(
    score_pairs: Callable[[Sequence[str], Sequence[str], Sequence[str | None] | None], np.ndarray],
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    options: LongDocumentsConfig,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
    groups: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of (query, document) pairs as ``options`` says (truncated, or by windows), and
    per pair the number of windows scored. ``score_pairs(queries, docs, instructions)`` scores
    plain pairs (``instructions``: one per pair, or None); with ``groups`` (consecutive runs of
    documents batched apart), ``groups=`` the runs of pairs they make goes along."""
    pairs = document_pairs(tokenizer, queries, docs, max_length, options, prompt, instructions)
    extra = {} if groups is None else {"groups": pairs.pair_groups(groups)}
    return pairs.document_scores(score_pairs(pairs.queries, pairs.docs, pairs.instructions, **extra))
