"""Tokenizing (query, document) pairs the one way training, validation and inference share.

Without a prompt template (encoders) a pair goes through the tokenizer's pair encoding. With
one (decoder LLMs, ``rerankit.prompts``) the pair is written into the template and tokenized
in three parts (prefix, body, suffix); either way the document is truncated and never the
query, the instruction or the template's suffix.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankit.errors import ModelLoadError
from rerankit.prompts import PromptTemplate, neutralise, reserved_strings

# Tokens a query must leave for its document (and the special tokens around the pair).
MIN_DOCUMENT_ROOM = 8


class QueryTooLongError(ValueError):
    """A query alone fills the model's window: nothing of the document would be read."""


def document_budgets(
    tokenizer, queries: Sequence[str], max_length: int, prompt: PromptTemplate | None = None
) -> dict[str, int]:
    """Per distinct query, the document tokens that fit beside it in ``max_length``.

    Raises QueryTooLongError when a query leaves fewer than MIN_DOCUMENT_ROOM.
    """
    unique = list(dict.fromkeys(queries))  # one query usually comes with many documents
    if prompt is None:
        special, template = tokenizer.num_special_tokens_to_add(pair=True), 0
        texts = unique
    else:
        parts = _TemplateParts.of(tokenizer, prompt)
        special = template = len(parts.fixed_ids)
        texts = [prompt.head(neutralise(q, parts.reserved)) for q in unique]
    lengths = [len(ids) for ids in _tokenize(tokenizer, texts, prompt is not None)["input_ids"]]
    longest = template + max(lengths, default=0)
    if longest > max_length - MIN_DOCUMENT_ROOM:
        what = "query" if prompt is None else "query with its prompt template"
        raise QueryTooLongError(
            f"{what} of {longest} tokens leaves no room for the document within max_length="
            f"{max_length} (at most {max_length - MIN_DOCUMENT_ROOM} tokens)"
        )
    return {q: max(1, max_length - special - n) for q, n in zip(unique, lengths)}


def check_query_lengths(
    tokenizer, queries: Sequence[str], max_length: int, prompt: PromptTemplate | None = None
) -> None:
    """Raise QueryTooLongError when a query leaves no room for its document in ``max_length``."""
    document_budgets(tokenizer, queries, max_length, prompt)


def encode_pairs(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    padding: bool | str = True,
    return_tensors: str | None = "pt",
    prompt: PromptTemplate | None = None,
):
    """Tokenize (query, document) pairs, truncating the document and never the query.

    Raises QueryTooLongError when a query alone leaves no room for its document.
    """
    if prompt is not None:
        return _encode_with_template(tokenizer, queries, docs, max_length, padding, return_tensors, prompt)
    check_query_lengths(tokenizer, queries, max_length)
    return tokenizer(
        list(queries),
        list(docs),
        truncation="only_second",
        max_length=max_length,
        padding=padding,
        return_tensors=return_tensors,
    )


class _TemplateParts:
    """The token ids a template puts around every body: the tokenizer's own leading and trailing
    special tokens (a BOS, say), the prefix and the suffix."""

    def __init__(self, tokenizer, prompt: PromptTemplate) -> None:
        leading, trailing = special_tokens_around(tokenizer)
        prefix = tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"] if prompt.prefix else []
        suffix = tokenizer(prompt.suffix, add_special_tokens=False)["input_ids"] if prompt.suffix else []
        self.before = leading + prefix
        self.after = suffix + trailing
        self.fixed_ids = self.before + self.after
        self.reserved = reserved_strings(tokenizer)
        pad = tokenizer.pad_token_id
        if self.after and pad is not None and self.after[-1] == pad:
            # Sequence-classification heads read the last token that is not padding.
            raise ModelLoadError(
                f"the {prompt.name} prompt template ends with the pad token "
                f"{tokenizer.pad_token!r}: the score would be read one token early; give the "
                "tokenizer another pad token"
            )

    @classmethod
    def of(cls, tokenizer, prompt: PromptTemplate) -> _TemplateParts:
        cache = tokenizer.__dict__.setdefault("_rerankit_template_parts", {})
        if prompt not in cache:
            cache[prompt] = cls(tokenizer, prompt)
        return cache[prompt]


def check_template(tokenizer, prompt: PromptTemplate | None) -> None:
    """ModelLoadError when a template cannot work with this tokenizer (checked at load)."""
    if prompt is not None:
        _TemplateParts.of(tokenizer, prompt)


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one text (a BOS, say)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    marked = tokenizer("x")["input_ids"]
    starts = [i for i in range(len(marked)) if plain and marked[i : i + len(plain)] == plain]
    if not starts:  # "x" is not even one token for this tokenizer: nothing to learn from it
        return [], []
    return marked[: starts[0]], marked[starts[0] + len(plain) :]


def render_pair(tokenizer, prompt: PromptTemplate, query: str, document: str, max_length: int) -> str:
    """One pair's whole prompt as text, as this encoding reads it: user text neutralised and
    the document cut where its last token that fits ``max_length`` ends, the suffix kept. A tool
    that tokenizes the text again may split the cut's last word differently."""
    parts = _TemplateParts.of(tokenizer, prompt)
    check_query_lengths(tokenizer, [query], max_length, prompt)
    head, document = prompt.head(neutralise(query, parts.reserved)), neutralise(document, parts.reserved)
    offsets = _tokenize(tokenizer, [head + document], True, return_offsets_mapping=True)["offset_mapping"][0]
    head_tokens = sum(1 for start, _ in offsets if start < len(head))
    keep = min(len(offsets), max(head_tokens, max_length - len(parts.fixed_ids)))
    end = offsets[keep - 1][1] if keep else len(head)
    return prompt.prefix + head + document[: max(0, end - len(head))] + prompt.suffix


def _tokenize(tokenizer, texts: Sequence[str], user_text: bool, **kwargs):
    # Text from users never becomes a special token: a document holding "<|im_end|>" cannot
    # end the template early.
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=user_text, **kwargs)


def _encode_with_template(tokenizer, queries, docs, max_length, padding, return_tensors, prompt):
    parts = _TemplateParts.of(tokenizer, prompt)
    check_query_lengths(tokenizer, queries, max_length, prompt)
    # User text is neutralised as the exported chat template and ``render`` do, so every tool
    # reads the same tokens (and splitting special tokens keeps any left over as text).
    heads = [prompt.head(neutralise(q, parts.reserved)) for q in queries]
    docs = [neutralise(d, parts.reserved) for d in docs]
    encoded = _tokenize(tokenizer, [h + d for h, d in zip(heads, docs)], True, return_offsets_mapping=True)
    input_ids = []
    room = max_length - len(parts.fixed_ids)
    for head, ids, offsets in zip(heads, encoded["input_ids"], encoded["offset_mapping"]):
        # Tokens that start inside the head (instruction, query, field names) are all kept;
        # the document's are cut to what the window leaves.
        head_tokens = sum(1 for start, _ in offsets if start < len(head))
        keep = min(len(ids), max(head_tokens, room))
        input_ids.append(parts.before + ids[:keep] + parts.after)
    features = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}
    if not padding:
        if return_tensors is not None:
            raise ValueError("unpadded pairs cannot be returned as tensors")
        return features
    return tokenizer.pad(features, padding=padding, return_tensors=return_tensors)
