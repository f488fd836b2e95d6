"""Tokenizing (query, document) pairs the one way training, validation and inference share.

Without a prompt template (encoders) a pair goes through the tokenizer's pair encoding. With
one (decoder LLMs, ``rerankit.prompts``) the pair is written into the template and tokenized
in three parts (prefix, body, suffix); either way the document is truncated and never the
query, the instruction or the template's suffix.

``instructions``: one per pair (None: the template's default), written into the template; the
pair encoding of an encoder has no place for one and ignores them.
"""

from __future__ import annotations

from collections.abc import Sequence

from rerankit.errors import ModelLoadError
from rerankit.prompts import InstructionError, PromptTemplate, neutralise, reserved_strings

# Tokens a query must leave for its document (and the special tokens around the pair).
MIN_DOCUMENT_ROOM = 8


class QueryTooLongError(ValueError):
    """A query alone fills the model's window: nothing of the document would be read."""


def document_budgets(
    tokenizer,
    queries: Sequence[str],
    max_length: int,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
) -> list[int]:
    """Per pair, the document tokens that fit beside its query (and instruction) in ``max_length``.

    Raises QueryTooLongError when a query leaves fewer than MIN_DOCUMENT_ROOM.
    """
    if prompt is None:
        keys = list(queries)
        unique = list(dict.fromkeys(keys))  # one query usually comes with many documents
        texts = unique
        # the special tokens around the pair are not counted against the query's room
        special, shown = [tokenizer.num_special_tokens_to_add(pair=True)] * len(unique), [0] * len(unique)
    else:
        parts = _TemplateParts.of(tokenizer, prompt)
        keys = list(zip(queries, pair_instructions(instructions, len(queries), parts.reserved)))
        unique = list(dict.fromkeys(keys))
        texts = [prompt.head(neutralise(q, parts.reserved), i) for q, i in unique]
        special = shown = [len(parts.before) + len(parts.after(i)) for _, i in unique]
    lengths = [len(ids) for ids in _tokenize(tokenizer, texts, prompt is not None)["input_ids"]]
    longest = max((f + n for f, n in zip(shown, lengths)), default=0)
    if longest > max_length - MIN_DOCUMENT_ROOM:
        what = "query" if prompt is None else "query with its prompt template and instruction"
        raise QueryTooLongError(
            f"{what} of {longest} tokens leaves no room for the document within max_length="
            f"{max_length} (at most {max_length - MIN_DOCUMENT_ROOM} tokens)"
        )
    budget = {key: max(1, max_length - f - n) for key, f, n in zip(unique, special, lengths)}
    return [budget[key] for key in keys]


def pair_instructions(instructions, count: int, reserved: Sequence[str] = ()) -> list[str | None]:
    """One instruction per pair (None: the template's default), special-token strings
    neutralised; InstructionError for a value that is not a string."""
    if instructions is None:
        return [None] * count
    if len(instructions) != count:
        raise ValueError(f"{len(instructions)} instructions for {count} pairs: one per pair (or None)")
    out = []
    for instruction in instructions:
        if instruction is not None and not isinstance(instruction, str):
            raise InstructionError(f"an instruction must be a string, got {type(instruction).__name__}")
        out.append(None if instruction is None else neutralise(instruction, reserved))
    return out


def check_query_lengths(
    tokenizer,
    queries: Sequence[str],
    max_length: int,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
) -> None:
    """Raise QueryTooLongError when a query leaves no room for its document in ``max_length``
    (InstructionError when the template cannot take a pair's instruction)."""
    document_budgets(tokenizer, queries, max_length, prompt, instructions)


def encode_pairs(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    max_length: int,
    padding: bool | str = True,
    return_tensors: str | None = "pt",
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
):
    """Tokenize (query, document) pairs, truncating the document and never the query.

    Raises QueryTooLongError when a query alone leaves no room for its document.
    """
    if prompt is not None:
        return _encode_with_template(
            tokenizer, queries, docs, max_length, padding, return_tensors, prompt, instructions
        )
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
    special tokens (a BOS, say), the prefix and the suffix (per instruction, when the suffix
    holds one)."""

    # Suffixes kept per template: each distinct instruction of a suffix that holds one.
    MAX_SUFFIXES = 256

    def __init__(self, tokenizer, prompt: PromptTemplate) -> None:
        self.tokenizer, self.prompt = tokenizer, prompt
        leading, self.trailing = special_tokens_around(tokenizer)
        prefix = tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"] if prompt.prefix else []
        self.before = leading + prefix
        self.reserved = reserved_strings(tokenizer)
        self._after: dict[str | None, list[int]] = {}
        after = self.after(None)
        pad = tokenizer.pad_token_id
        if after and pad is not None and after[-1] == pad:
            # Sequence-classification heads read the last token that is not padding.
            raise ModelLoadError(
                f"the {prompt.name} prompt template ends with the pad token "
                f"{tokenizer.pad_token!r}: the score would be read one token early; give the "
                "tokenizer another pad token"
            )

    def after(self, instruction: str | None) -> list[int]:
        """The suffix's tokens (with ``instruction`` written in) and the trailing special tokens."""
        key = instruction if "{instruction}" in self.prompt.suffix else None
        if key not in self._after:
            if len(self._after) >= self.MAX_SUFFIXES:
                self._after.clear()
            suffix = self.prompt.tail(key)
            ids = self.tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
            self._after[key] = ids + self.trailing
        return self._after[key]

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


def render_pair(
    tokenizer,
    prompt: PromptTemplate,
    query: str,
    document: str,
    max_length: int,
    instruction: str | None = None,
) -> str:
    """One pair's whole prompt as text, as this encoding reads it: user text neutralised and
    the document cut where its last token that fits ``max_length`` ends, the suffix kept. A tool
    that tokenizes the text again may split the cut's last word differently."""
    parts = _TemplateParts.of(tokenizer, prompt)
    check_query_lengths(tokenizer, [query], max_length, prompt, [instruction])
    (instruction,) = pair_instructions([instruction], 1, parts.reserved)
    head, document = (
        prompt.head(neutralise(query, parts.reserved), instruction),
        neutralise(document, parts.reserved),
    )
    offsets = _tokenize(tokenizer, [head + document], True, return_offsets_mapping=True)["offset_mapping"][0]
    head_tokens = sum(1 for start, _ in offsets if start < len(head))
    keep = min(len(offsets), max(head_tokens, max_length - len(parts.before) - len(parts.after(instruction))))
    end = offsets[keep - 1][1] if keep else len(head)
    return prompt.prefix + head + document[: max(0, end - len(head))] + prompt.tail(instruction)


def _tokenize(tokenizer, texts: Sequence[str], user_text: bool, **kwargs):
    # Text from users never becomes a special token: a document holding "<|im_end|>" cannot
    # end the template early.
    return tokenizer(list(texts), add_special_tokens=False, split_special_tokens=user_text, **kwargs)


def _encode_with_template(
    tokenizer, queries, docs, max_length, padding, return_tensors, prompt, instructions
):
    parts = _TemplateParts.of(tokenizer, prompt)
    check_query_lengths(tokenizer, queries, max_length, prompt, instructions)
    # User text is neutralised as the exported chat template and ``render`` do, so every tool
    # reads the same tokens (and splitting special tokens keeps any left over as text).
    instructions = pair_instructions(instructions, len(queries), parts.reserved)
    heads = [prompt.head(neutralise(q, parts.reserved), i) for q, i in zip(queries, instructions)]
    docs = [neutralise(d, parts.reserved) for d in docs]
    encoded = _tokenize(tokenizer, [h + d for h, d in zip(heads, docs)], True, return_offsets_mapping=True)
    input_ids = []
    for head, instruction, ids, offsets in zip(
        heads, instructions, encoded["input_ids"], encoded["offset_mapping"]
    ):
        after = parts.after(instruction)
        # Tokens that start inside the head (instruction, query, field names) are all kept;
        # the document's are cut to what the window leaves.
        head_tokens = sum(1 for start, _ in offsets if start < len(head))
        keep = min(len(ids), max(head_tokens, max_length - len(parts.before) - len(after)))
        input_ids.append(parts.before + ids[:keep] + after)
    features = {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}
    if not padding:
        if return_tensors is not None:
            raise ValueError("unpadded pairs cannot be returned as tensors")
        return features
    return tokenizer.pad(features, padding=padding, return_tensors=return_tensors)


def pad_batch(
    tokenizer,
    encoded: dict,
    batch: Sequence[int],
    return_tensors: str,
    multiple: int | None = None,
    width: int | None = None,
):
    """The pairs ``batch`` of ``encoded`` (unpadded, as ``encode_pairs(padding=False)`` gives
    them) padded to their longest, or to ``width`` tokens when given, rounded up to ``multiple``
    tokens when given, as ``return_tensors`` arrays."""
    padding = {"padding": "max_length", "max_length": width} if width else {}
    return tokenizer.pad(
        {k: [v[i] for i in batch] for k, v in encoded.items()},
        return_tensors=return_tensors,
        pad_to_multiple_of=multiple,
        **padding,
    )
