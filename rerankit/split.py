"""Train/validation split by query (optionally also by source chunk).

All records of one normalized query text land on the same side. With
``group_by="source_chunk"``, queries that share a source chunk are also kept together
(connected components over query and chunk, so a chain q1–c1–q2–c2–q3 stays whole).
Groups are ordered by a seeded hash of their key, so the split depends only on the seed
and the records' content, not on file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from rerankit.data import QueryRecord, read_records
from rerankit.errors import RerankitError


def _group_keys(records: Sequence[QueryRecord], group_by: str) -> list[str]:
    """A group key per record: the query key, or the component's smallest query key."""
    if group_by == "query":
        return [r.key for r in records]
    parent = list(range(len(records)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of: dict[str, int] = {}
    for i, rec in enumerate(records):
        for token in (f"q:{rec.key}", f"c:{rec.source_chunk}" if rec.source_chunk else None):
            if token is None:
                continue
            j = first_of.setdefault(token, i)
            parent[find(i)] = find(j)
    smallest: dict[int, str] = {}
    for i, rec in enumerate(records):
        root = find(i)
        smallest[root] = min(smallest.get(root, rec.key), rec.key)
    return [smallest[find(i)] for i in range(len(records))]


def split_records(
    records: Sequence[QueryRecord],
    valid_ratio: float,
    seed: int = 42,
    group_by: Literal["query", "source_chunk"] = "query",
) -> tuple[list[QueryRecord], list[QueryRecord]]:
    """Return (train, valid); valid holds about ``valid_ratio`` of the queries, at least one group."""
    if not 0 < valid_ratio < 1:
        raise ValueError(f"valid_ratio must be between 0 and 1, got {valid_ratio}")
    keys = _group_keys(records, group_by)
    sizes: dict[str, int] = {}
    for key in keys:
        sizes[key] = sizes.get(key, 0) + 1
    if len(sizes) < 2:
        raise ValueError("cannot split: all queries form one group")

    def rank(key: str) -> str:
        return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()

    target = max(1, round(valid_ratio * len(records)))
    valid_groups: set[str] = set()
    taken = 0
    for key in sorted(sizes, key=rank):
        if taken >= target or len(valid_groups) == len(sizes) - 1:
            break
        valid_groups.add(key)
        taken += sizes[key]
    train = [r for r, k in zip(records, keys) if k not in valid_groups]
    valid = [r for r, k in zip(records, keys) if k in valid_groups]
    return train, valid


def load_split(config):
    """The training and validation records of ``config`` (split by query, as ``fit`` splits
    them), and the data reports."""
    dcfg = config.data
    train, train_report = read_records(dcfg.train, dcfg.on_error, dcfg.max_document_chars)
    reports = {"train": train_report}
    if dcfg.valid:
        valid, reports["valid"] = read_records(dcfg.valid, dcfg.on_error, dcfg.max_document_chars)
        train_keys = {r.key for r in train}
        overlap = [r.query for r in valid if r.key in train_keys]
        if overlap:
            raise RerankitError(
                f"{dcfg.valid}: {len(overlap)} validation queries also appear in {dcfg.train} "
                f"(e.g. {overlap[0]!r}); the split must be by query"
            )
    else:
        train, valid = split_records(train, dcfg.valid_ratio, config.seed, dcfg.group_by)
    if dcfg.max_valid_queries and len(valid) > dcfg.max_valid_queries:
        import random

        valid = random.Random(config.seed).sample(valid, dcfg.max_valid_queries)
    return train, valid, reports
