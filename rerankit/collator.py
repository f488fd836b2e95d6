"""The training dataset (one query group per item, re-drawn per epoch) and its collator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rerankit.config import LongDocumentsConfig
from rerankit.encoding import encode_pairs
from rerankit.prompts import PromptTemplate
from rerankit.sampling import Group, NegativeSampler
from rerankit.score_injection import ScoreInjection
from rerankit.windows import split_documents

if TYPE_CHECKING:
    from rerankit.complement import SignalPrior


class EpochGroupDataset:
    """Map-style dataset: item i is query i's group for the current epoch.

    ``set_epoch`` is called by :class:`~rerankit.training.EpochCallback` at the start of
    each epoch, so the negatives change every epoch while staying a pure function of
    (seed, epoch, query).
    """

    def __init__(self, sampler: NegativeSampler, prior: SignalPrior | None = None) -> None:
        self.sampler, self.prior = sampler, prior
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int) -> Group:
        group = self.sampler.group(index, self.epoch)
        if self.prior is None:
            return group
        return dataclasses.replace(group, prior=self.prior(group.query, group.docs))


class GroupCollator:
    """Turns a list of groups into one batch of pairs plus the group layout.

    Returns the tokenized pairs (only real ones, no padding slots) and
    ``group_labels``/``group_mask`` of shape (queries, longest group) with ``pair_slots``,
    the flat position of each pair in that grid. With ``long_documents.mode: windows`` the
    tokenized rows are the documents' windows and ``window_owner`` says which pair each belongs
    to (the loss then scores a document by the aggregate of its windows: MaxP). When any group
    carries teacher scores, ``group_teacher`` holds them on the same grid and
    ``group_teacher_mask`` says where one is known; groups with a ``prior`` (``loss.complement``)
    give ``group_prior`` on the grid. With ``score_injection`` each pair's query
    carries its document's first-stage level (``rerankit.score_injection``). A group's
    ``instruction`` is written into the template of each of its pairs.
    """

    def __init__(
        self,
        tokenizer,
        max_length: int,
        long_documents: LongDocumentsConfig | None = None,
        prompt: PromptTemplate | None = None,
        score_injection: ScoreInjection | None = None,
    ) -> None:
        self.tokenizer, self.max_length, self.prompt = tokenizer, max_length, prompt
        self.score_injection = score_injection
        self.long_documents = long_documents or LongDocumentsConfig()

    def __call__(self, groups: Sequence[Group]) -> dict:
        import torch

        width = max(len(g.docs) for g in groups)
        queries, docs, slots, instructions = [], [], [], []
        labels = torch.zeros(len(groups), width, dtype=torch.long)
        mask = torch.zeros(len(groups), width, dtype=torch.bool)
        teacher = torch.zeros(len(groups), width)
        known = torch.zeros(len(groups), width, dtype=torch.bool)
        prior = torch.zeros(len(groups), width)
        for row, group in enumerate(groups):
            for col, (doc, label) in enumerate(zip(group.docs, group.labels)):
                queries.append(self._query(group, col))
                instructions.append(group.instruction)
                docs.append(doc)
                slots.append(row * width + col)
                labels[row, col] = label
                mask[row, col] = True
            for col, score in enumerate(group.teacher):
                if score is not None:
                    teacher[row, col], known[row, col] = score, True
            prior[row, : len(group.prior)] = torch.tensor(group.prior, dtype=prior.dtype)
        given = instructions if any(i is not None for i in instructions) else None
        if self.long_documents.mode == "windows":
            queries, docs, owner = split_documents(
                self.tokenizer, queries, docs, self.max_length, self.long_documents, self.prompt, given
            )
            kept = capped_windows(owner, self.long_documents.max_windows_per_step)
            queries, docs, owner = (
                [queries[i] for i in kept],
                [docs[i] for i in kept],
                [owner[i] for i in kept],
            )
            given = None if given is None else [given[i] for i in owner]
        batch = dict(
            encode_pairs(
                self.tokenizer, queries, docs, self.max_length, prompt=self.prompt, instructions=given
            )
        )
        batch.update(group_labels=labels, group_mask=mask, pair_slots=torch.tensor(slots, dtype=torch.long))
        if self.long_documents.mode == "windows":
            batch["window_owner"] = torch.tensor(owner, dtype=torch.long)
        if known.any():
            batch.update(group_teacher=teacher, group_teacher_mask=known)
        if any(group.prior for group in groups):
            batch["group_prior"] = prior
        return batch

    def _query(self, group: Group, col: int) -> str:
        if self.score_injection is None:
            return group.query
        if not group.levels:
            raise ValueError(f"score injection: the training query {group.query!r} has no first-stage score")
        return self.score_injection.query(group.query, group.levels[col])


def capped_windows(owner: Sequence[int], cap: int | None) -> list[int]:
    """Indices of the windows a training step reads (``owner``: each window's document, windows
    in document order): all of them, or at most ``cap``, taken in turn from each document's
    first window on: long documents lose their last windows, and every document keeps its first
    even past the cap."""
    if cap is None or len(owner) <= cap:
        return list(range(len(owner)))
    by_doc: dict[int, list[int]] = {}
    for index, doc in enumerate(owner):
        by_doc.setdefault(doc, []).append(index)
    kept = [windows[0] for windows in by_doc.values()]  # a document without a window has no score
    depth = 1
    while len(kept) < cap:
        kept += [windows[depth] for windows in by_doc.values() if depth < len(windows)][: cap - len(kept)]
        depth += 1
    return sorted(kept)
