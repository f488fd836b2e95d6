"""Tokenizing (query, document) pairs the one way training, validation and inference share."""

from __future__ import annotations

from collections.abc import Sequence

# Tokens a query must leave for its document (and the special tokens around the pair).
MIN_DOCUMENT_ROOM = 8


class QueryTooLongError(ValueError):
    """A query alone fills the model's window: nothing of the document would be read."""


def check_query_lengths(tokenizer, queries: Sequence[str], max_length: int) -> None:
    """Raise QueryTooLongError when a query leaves no room for its document in ``max_length``."""
    unique = list(dict.fromkeys(queries))  # one query usually comes with many documents
    lengths = [len(ids) for ids in tokenizer(unique, add_special_tokens=False)["input_ids"]]
    longest = max(lengths, default=0)
    if longest > max_length - MIN_DOCUMENT_ROOM:
        raise QueryTooLongError(
            f"query of {longest} tokens leaves no room for the document within max_length="
            f"{max_length} (at most {max_length - MIN_DOCUMENT_ROOM} query tokens)"
        )


def encode_pairs(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    padding: bool | str = True,
    return_tensors: str | None = "pt",
):
    """Tokenize (query, document) pairs, truncating the document and never the query.

    Raises QueryTooLongError when a query alone leaves no room for its document.
    """
    check_query_lengths(tokenizer, queries, max_length)
    return tokenizer(
        list(queries),
        list(docs),
        truncation="only_second",
        max_length=max_length,
        padding=padding,
        return_tensors=return_tensors,
    )
