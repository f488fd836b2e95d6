"""Scoring (query, document) pairs with a cross-encoder in token-budget batches.

Pairs are tokenized once without padding, sorted by length and cut into batches whose
padded size (pairs × longest pair) stays under ``max_tokens``: short pairs travel in large
batches, long ones in small, and little compute goes to padding. Scores come back in input
order as fp32: under bf16/fp16 the model (head included) computes in that precision and its
logits are widened to fp32 before anything else touches them, so a sigmoid over them does not
collapse near-equal scores into ties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from rerankit.encoding import encode_pairs, pad_batch
from rerankit.prompts import PromptTemplate
from rerankit.runtimes import GraphModel


def sigmoid(logits) -> np.ndarray:
    """``1 / (1 + exp(-logit))`` in float64: the relevance score every surface reports."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # Sorted longest first, so the first pair of a batch sets its padded length.
        width = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * width > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def budget_batches(
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    *,
    max_length: int,
    max_tokens: int,
    max_batch: int,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
    multiple: int | None = None,
) -> tuple[dict, list[list[int]]]:
    """The pairs tokenized once without padding, and their indices cut into token-budget
    batches (``token_budget_batches``; lengths rounded up to ``multiple`` when batches pad to
    one); ``pad_batch`` turns one batch into model inputs."""
    encoded = encode_pairs(
        tokenizer,
        queries,
        docs,
        max_length,
        padding=False,
        return_tensors=None,
        prompt=prompt,
        instructions=instructions,
    )
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if multiple:
        lengths = [-(-length // multiple) * multiple for length in lengths]
    return encoded, token_budget_batches(lengths, max_tokens, max_batch)


def score_pairs(
    model,
    tokenizer,
    queries: Sequence[str],
    docs: Sequence[str],
    *,
    max_length: int = 512,
    max_tokens: int = 16384,
    max_batch: int = 128,
    autocast_dtype=None,
    progress: bool = False,
    prompt: PromptTemplate | None = None,
    instructions: Sequence[str | None] | None = None,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """Raw scores (logits) of each (queries[i], docs[i]) pair, fp32, in input order.

    ``model``: a torch sequence classifier, or a compiled graph (``rerankit.runtimes``).
    ``prompt``: the template a decoder reads pairs through (None: the pair encoding).
    ``instructions``: each pair's instruction for the template (None: its default).
    ``groups``: sizes of consecutive runs of pairs (the requests of one server round) each
    tokenized and batched as it would be alone, so no run's scores depend on another's; a
    graph runs their batches together over its streams.
    """
    import torch

    if len(queries) != len(docs):
        raise ValueError(f"got {len(queries)} queries but {len(docs)} documents")
    groups = [len(queries)] if groups is None else [int(g) for g in groups]
    if sum(groups) != len(queries) or min(groups, default=1) < 1:
        raise ValueError(f"groups {groups} do not cover {len(queries)} pairs")
    if not queries:
        return np.zeros(0, dtype=np.float32)
    scores = np.empty(len(queries), dtype=np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queries), desc="scoring", unit="pair")

    # a graph whose scores stop moving past a width multiple is padded to it (runtimes.align_padding)
    multiple = model.pad_multiple if isinstance(model, GraphModel) else None

    def padded(return_tensors: str):
        """(rows, padded batch, whether it holds its whole run), a run at a time."""
        start = 0
        for size in groups:
            end = start + size
            encoded, batches = budget_batches(
                tokenizer,
                queries[start:end],
                docs[start:end],
                max_length=max_length,
                max_tokens=max_tokens,
                max_batch=max_batch,
                prompt=prompt,
                instructions=None if instructions is None else instructions[start:end],
                multiple=multiple,
            )
            for batch in batches:
                features = pad_batch(tokenizer, encoded, batch, return_tensors, multiple)
                yield [start + i for i in batch], features, len(batches) == 1
                if bar is not None:
                    bar.update(len(batch))
            start = end

    try:
        if isinstance(model, GraphModel):  # OpenVINO / ONNX Runtime: numpy in, fp32 logits out
            # As many batches at once as the graph has streams. A run that fits one batch has
            # its rows split over the streams, the same alone or in a round.
            model.score_batches(
                (
                    part
                    for rows, features, whole in padded("np")
                    for part in (model.stream_parts(rows, features) if whole else [(rows, features)])
                ),
                scores,
            )
            return scores
        device = next(model.parameters()).device
        autocast = (
            torch.autocast(device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else contextlib.nullcontext()
        )
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast:
                for rows, features, _ in padded("pt"):
                    features = {k: v.to(device) for k, v in features.items()}
                    logits = model(**features).logits
                    scores[rows] = logits.float().view(len(rows), -1)[:, 0].cpu().numpy()
        finally:
            model.train(was_training)
        return scores
    finally:
        if bar is not None:
            bar.close()
