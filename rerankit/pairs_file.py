"""Files of (query, document) pairs to score in bulk: read, checked, cut into shards, and
a shard scored (``score_pairs``, what every engine of ``rerankit.bulk`` runs).

A pairs file is JSONL, one object a line — ``{"query": str, "document": str, "id"?: str | int,
"score"?: number}`` where ``score`` is the first stage's score of the pair — or Parquet with
those columns (``rerankit[parquet]``). Every row is checked once, while the file is planned
(``plan``): a bad row is a DataError naming the file, its line (for Parquet its row) and field,
before anything is scored.

A shard is a run of consecutive rows, cut only where the query changes, so rows of one query
that sit together are scored together: a model trained with score injection reads each
document's first-stage score against the others of its query (``rerankit.score_injection``).
Memory is bounded by the shard size, or by the longest run of one query when that is longer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rerankit.data import is_finite_number
from rerankit.errors import DataError, RerankitError, require

FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
# Rows per Parquet batch read while planning.
_PARQUET_BATCH = 4096


@dataclass(frozen=True)
class Pair:
    query: str
    document: str
    id: str | None
    first_stage: float | None
    # 1-based line of a JSONL file, 1-based row of a Parquet file: what errors name.
    line: int


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, start + rows)`` of the file; ``offset`` is the byte where a JSONL shard's
    first line starts and ``line`` that line's number (for Parquet, the row's)."""

    index: int
    start: int
    rows: int
    offset: int
    line: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    path: str
    format: str
    shards: tuple[Shard, ...]
    rows: int
    has_ids: bool
    has_first_stage: bool
    # sha256 of the file's bytes: a changed input never resumes another's shards
    digest: str


def file_format(path: str | Path) -> str:
    """ "jsonl" or "parquet" from the file's suffix; DataError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"expected a .jsonl or .parquet file, got {suffix or 'no suffix'!r}", path=str(path))
    return FORMATS[suffix]


def parquet():
    """pyarrow.parquet, or MissingExtraError naming the extra."""
    require("pyarrow", "parquet")
    import pyarrow.parquet as pq

    return pq


def plan(path: str | Path, shard_size: int) -> Plan:
    """Read and check every row of ``path`` and cut it into shards of about ``shard_size`` rows."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    path = str(path)
    fmt = file_format(path)
    digest = hashlib.sha256()
    shards: list[Shard] = []
    start = rows = 0
    has_ids = has_first_stage = False
    previous_query = None
    first = None  # (offset, line) of the open shard's first row
    for offset, pair in _rows_with_offsets(path, fmt, digest):
        if first is not None and rows - start >= shard_size and pair.query != previous_query:
            shards.append(Shard(len(shards), start, rows - start, *first))
            start, first = rows, None
        if first is None:
            first = (offset, pair.line)
        has_ids |= pair.id is not None
        has_first_stage |= pair.first_stage is not None
        previous_query = pair.query
        rows += 1
    if first is not None:
        shards.append(Shard(len(shards), start, rows - start, *first))
    if not rows:
        raise DataError("no pairs to score", path=path)
    return Plan(path, fmt, tuple(shards), rows, has_ids, has_first_stage, digest.hexdigest())


def read_shard(path: str, fmt: str, shard: Shard) -> list[Pair]:
    """The rows of one shard (already checked by ``plan``)."""
    if fmt == "jsonl":
        pairs = []
        with open(path, "rb") as handle:
            handle.seek(shard.offset)
            number = shard.line
            while len(pairs) < shard.rows:
                raw = handle.readline()
                if not raw:
                    raise DataError("the file ended before the planned rows: was it changed?", path=path)
                if raw.strip():
                    pairs.append(_json_pair(raw, path, number))
                number += 1
        return pairs
    # Only the row groups the shard overlaps are read.
    handle = parquet().ParquetFile(path)
    groups, first_row, row = [], 0, 0
    for group in range(handle.metadata.num_row_groups):
        size = handle.metadata.row_group(group).num_rows
        if row + size > shard.start and row < shard.start + shard.rows:
            first_row = row if not groups else first_row
            groups.append(group)
        row += size
    table = handle.read_row_groups(groups, columns=_columns(path)).slice(shard.start - first_row, shard.rows)
    return [_parquet_pair(row, path, shard.line + i) for i, row in enumerate(table.to_pylist())]


def iter_pairs(plan: Plan) -> Iterator[list[Pair]]:
    """Every shard's rows, in order."""
    if plan.format == "jsonl":
        for shard in plan.shards:
            yield read_shard(plan.path, plan.format, shard)
        return
    # One pass over the file's batches instead of a read per shard.
    buffer: list[Pair] = []
    shards = iter(plan.shards)
    shard = next(shards, None)
    for offset, pair in _rows_with_offsets(plan.path, plan.format, None):
        del offset
        buffer.append(pair)
        while shard is not None and len(buffer) >= shard.rows:
            yield buffer[: shard.rows]
            buffer = buffer[shard.rows :]
            shard = next(shards, None)


def _rows_with_offsets(path: str, fmt: str, digest) -> Iterator[tuple[int, Pair]]:
    if fmt == "jsonl":
        yield from _jsonl_rows(path, digest)
    else:
        yield from _parquet_rows(path, digest)


def _jsonl_rows(path: str, digest) -> Iterator[tuple[int, Pair]]:
    file = Path(path)
    try:
        handle = file.open("rb")
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror or exc}", path=path) from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            if digest is not None:
                digest.update(raw)
            if raw.strip():
                yield offset, _json_pair(raw, path, number)
            offset += len(raw)


def _json_pair(raw: bytes, path: str, number: int) -> Pair:
    try:
        item = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc.reason}", path=path, line=number) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", path=path, line=number) from None
    if not isinstance(item, dict):
        raise DataError(
            f'expected an object {{"query", "document"}}, got {type(item).__name__}', path=path, line=number
        )
    return _pair(item, lambda field: {"path": path, "line": number, "field": field}, number)


def _columns(path: str) -> list[str]:
    names = set(parquet().read_schema(path).names)
    for needed in ("query", "document"):
        if needed not in names:
            raise DataError(f"no column {needed!r} (columns: {', '.join(sorted(names))})", path=path)
    return [name for name in ("query", "document", "id", "score") if name in names]


def _parquet_rows(path: str, digest) -> Iterator[tuple[int, Pair]]:
    pq = parquet()
    if digest is not None:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH, columns=_columns(path))
    except OSError as exc:
        raise DataError(f"cannot read Parquet: {exc}", path=path) from None
    row = 0
    for batch in batches:
        for item in batch.to_pylist():
            row += 1
            yield row - 1, _parquet_pair(item, path, row)


def _parquet_pair(item: dict, path: str, row: int) -> Pair:
    return _pair(item, lambda field: {"path": f"{path} row {row}", "field": field}, row)


def _pair(item: dict, where, number: int) -> Pair:
    for field in ("query", "document"):
        value = item.get(field)
        if value is None:
            raise DataError("missing: every row needs a query and a document", **where(field))
        if not isinstance(value, str):
            raise DataError(f"expected a string, got {type(value).__name__}", **where(field))
        if not value.strip():
            raise DataError("empty or whitespace-only: nothing to score", **where(field))
    query, document = item["query"], item["document"]
    ident = item.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, (str, int))):
        raise DataError(f"expected a string or an integer, got {type(ident).__name__}", **where("id"))
    score = item.get("score")
    if score is not None and not is_finite_number(score):
        shown = repr(score) if len(repr(score)) <= 40 else repr(score)[:37] + "..."
        raise DataError(f"expected a finite number (the first stage's score), got {shown}", **where("score"))
    return Pair(
        query,
        document,
        None if ident is None else str(ident),
        None if score is None else float(score),
        number,
    )


def score_columns(cross_encoder_score: bool) -> tuple[str, ...]:
    """The columns a shard's scores hold: ``score`` (``Reranker.score``), and with
    ``cross_encoder_score`` the cross-encoder's logit before the self-ensemble beside it."""
    return ("score", "cross_encoder_score") if cross_encoder_score else ("score",)


def score_pairs(
    reranker, pairs: list[Pair], *, raw: bool, path: str, cross_encoder_score: bool = False
) -> np.ndarray:
    """One shard's scores by ``reranker.score``, one row per pair and one column per
    ``score_columns(cross_encoder_score)`` (both from one pass), with the rows' first-stage
    scores when every row has one; DataError naming the line when a score-injection model finds
    a row without."""
    first_stage = None
    if all(pair.first_stage is not None for pair in pairs):
        first_stage = [pair.first_stage for pair in pairs]
    elif reranker.score_injection is not None:
        missing = next(pair for pair in pairs if pair.first_stage is None)
        raise DataError(
            'no first-stage "score": this model reads each pair\'s retriever score in its input '
            "(score injection); give every row a score",
            path=path,
            line=missing.line,
            field="score",
        )
    try:
        scores, logits = reranker.scores_and_logits(
            [(p.query, p.document) for p in pairs], raw=raw, first_stage=first_stage
        )
    except RerankitError:
        raise
    except ValueError as exc:  # a query that fills the model's window
        raise DataError(f"lines {pairs[0].line}-{pairs[-1].line}: {exc}", path=path) from None
    columns = (scores, logits) if cross_encoder_score else (scores,)
    return np.stack(columns, axis=1).astype(np.float64)
