"""Reading the seed JSONL format into query records.

One line is one query::

    {"query_text": "...", "positives": [{"doc_id": "p1", "text": "..."}],
     "negatives": [{"doc_id": "n1", "text": "..."}], "source_chunk": "c1", "meta": {...}}

``negatives`` (mined hard negatives), ``source_chunk``, ``meta`` and ``instruction`` are optional.
``instruction`` is the query's task in words, written into a decoder's prompt template (e.g.
Qwen3-Reranker's ``<Instruct>``) in place of the config's default; an encoder ignores it. A document may
carry a teacher ``"score"`` (a finite number: a stronger model's or the first stage's score for
this query, as ``rerankit mine --teacher-scores`` writes it), which ``loss.distillation`` trains
towards.
A line that breaks the format raises :class:`DataError` naming file, line and field
(or, with ``on_error="skip"``, is left out and counted). Lines that are well formed but
need cleaning have a defined behaviour, counted in :class:`DataReport`:

- a document with empty text is dropped;
- a document longer than ``max_document_chars`` characters is cut there (a model reads only
  its first few hundred tokens; a huge one would only exhaust memory when tokenized);
- a doc_id repeated within a line keeps its first occurrence;
- a negative that is also a positive (same doc_id or same text) is dropped;
- a line with no positive left is dropped;
- lines whose normalized query text is the same are merged into one record.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rerankit.errors import DataError


@dataclass(frozen=True)
class Doc:
    doc_id: str
    text: str
    score: float | None = None  # teacher score for the line's query, when given

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"doc_id": self.doc_id, "text": self.text}
        if self.score is not None:
            line["score"] = self.score
        return line


@dataclass(frozen=True)
class QueryRecord:
    """One query with its positives and mined (hard) negatives."""

    query: str
    positives: tuple[Doc, ...]
    negatives: tuple[Doc, ...] = ()
    source_chunk: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # The query's task instruction for a decoder's template; None: the template's default.
    instruction: str | None = None

    @property
    def key(self) -> str:
        return normalize_query(self.query)

    def to_json(self) -> dict[str, Any]:
        """The record as a seed-format line (round-trips through read_records)."""
        line: dict[str, Any] = {
            "query_text": self.query,
            "positives": [d.to_json() for d in self.positives],
            "negatives": [d.to_json() for d in self.negatives],
        }
        if self.source_chunk is not None:
            line["source_chunk"] = self.source_chunk
        if self.meta:
            line["meta"] = self.meta
        if self.instruction is not None:
            line["instruction"] = self.instruction
        return line


def is_finite_number(value) -> bool:
    """Whether a value (from JSON, or numpy's) is a finite number: not a bool, NaN, an
    infinity, or an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # math.isfinite converts an int to a float first
        return False


def require_scores(records: Iterable[QueryRecord], source: str | Path, why: str) -> None:
    """DataError naming the file, document and query of the first document of ``records``
    without a first-stage ``"score"``; ``why`` says what reads them."""
    for record in records:
        for doc in record.positives + record.negatives:
            if doc.score is None:
                raise DataError(
                    f'{why} needs every document\'s first-stage "score": document {doc.doc_id!r} of '
                    f"query {record.query!r} has none (rerankit mine --teacher-scores writes them)",
                    path=str(source),
                )


def changed_counts(report: dict[str, Any]) -> dict[str, int]:
    """The counters of a DataReport (as a dict) that say what reading changed, when non-zero."""
    return {
        k: v for k, v in report.items() if k.startswith(("skipped", "dropped", "merged", "truncated")) and v
    }


@dataclass
class DataReport:
    """What reading a file found and did; every dropped item is counted here."""

    path: str
    lines: int = 0
    records: int = 0
    skipped_bad_lines: int = 0
    dropped_empty_text_docs: int = 0
    truncated_long_docs: int = 0
    dropped_duplicate_doc_ids: int = 0
    dropped_negatives_equal_to_positive: int = 0
    dropped_lines_without_positive: int = 0
    merged_duplicate_queries: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        changes = changed_counts(asdict(self))
        text = f"{self.path}: {self.records} queries from {self.lines} lines"
        if changes:
            text += " (" + ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in changes.items()) + ")"
        return text


_SPACE = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """Key under which two query texts count as the same query (for merging and splitting).

    Unicode NFKC, case-folded, whitespace collapsed, trailing punctuation removed.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip().rstrip("?!.。 ")


# Characters kept of one document's text (see the module docstring).
MAX_DOCUMENT_CHARS = 100_000


def _docs(value: Any, name: str, where: dict[str, Any], report: DataReport, max_chars: int) -> list[Doc]:
    if not isinstance(value, list):
        raise DataError(
            f"expected a list of {{doc_id, text}} objects, got {type(value).__name__}", field=name, **where
        )
    docs: list[Doc] = []
    for i, item in enumerate(value):
        label = f"{name}[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"expected an object, got {type(item).__name__}", field=label, **where)
        unknown = set(item) - {"doc_id", "text", "score"}
        if unknown:
            raise DataError(f"unknown key(s) {sorted(unknown)}", field=label, **where)
        doc_id, text = item.get("doc_id"), item.get("text")
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
            raise DataError(
                f"doc_id must be a non-empty string, got {doc_id!r}", field=f"{label}.doc_id", **where
            )
        if not isinstance(text, str):
            raise DataError(
                f"text must be a string, got {type(text).__name__}", field=f"{label}.text", **where
            )
        score = item.get("score")
        if score is not None and not is_finite_number(score):
            raise DataError(f"score must be a finite number, got {score!r}", field=f"{label}.score", **where)
        if not text.strip():
            report.dropped_empty_text_docs += 1
            continue
        if len(text) > max_chars:
            report.truncated_long_docs += 1
            text = text[:max_chars]
        docs.append(Doc(str(doc_id), text, None if score is None else float(score)))
    return docs


def _dedupe(docs: Iterable[Doc], seen_ids: set[str], report: DataReport) -> list[Doc]:
    kept = []
    for doc in docs:
        if doc.doc_id in seen_ids:
            report.dropped_duplicate_doc_ids += 1
            continue
        seen_ids.add(doc.doc_id)
        kept.append(doc)
    return kept


_KEYS = {"query_text", "positives", "negatives", "source_chunk", "meta", "instruction"}


def parse_line(
    obj: Any, report: DataReport, where: dict[str, Any], max_document_chars: int = MAX_DOCUMENT_CHARS
) -> QueryRecord | None:
    """Validate one decoded line; None when it has no positive left after cleaning."""
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", **where)
    unknown = set(obj) - _KEYS
    if unknown:
        raise DataError(f"unknown key(s) {sorted(unknown)}; expected {sorted(_KEYS)}", **where)
    query = obj.get("query_text")
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"must be a non-empty string, got {query!r}", field="query_text", **where)
    if "positives" not in obj:
        raise DataError("required key is missing", field="positives", **where)
    positives = _docs(obj["positives"], "positives", where, report, max_document_chars)
    negatives = _docs(obj.get("negatives") or [], "negatives", where, report, max_document_chars)
    chunk = obj.get("source_chunk")
    if chunk is not None and not isinstance(chunk, (str, int)):
        raise DataError(
            f"must be a string or null, got {type(chunk).__name__}", field="source_chunk", **where
        )
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"must be an object, got {type(meta).__name__}", field="meta", **where)
    instruction = obj.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        shown = repr(instruction) if isinstance(instruction, str) else type(instruction).__name__
        raise DataError(f"must be a non-empty string or null, got {shown}", field="instruction", **where)

    seen: set[str] = set()
    positives = _dedupe(positives, seen, report)
    positive_texts = {d.text for d in positives}
    clean_negatives = []
    for doc in negatives:
        if doc.doc_id in {p.doc_id for p in positives} or doc.text in positive_texts:
            report.dropped_negatives_equal_to_positive += 1
        else:
            clean_negatives.append(doc)
    negatives = _dedupe(clean_negatives, seen, report)
    if not positives:
        report.dropped_lines_without_positive += 1
        return None
    return QueryRecord(
        query.strip(),
        tuple(positives),
        tuple(negatives),
        None if chunk is None else str(chunk),
        meta,
        instruction,
    )


def _merge(records: list[QueryRecord], report: DataReport) -> list[QueryRecord]:
    """Merge records of the same normalized query and instruction, keeping first-seen order (the
    same query under two instructions is two tasks: two records, split to the same side)."""
    by_key: dict[tuple[str, str | None], QueryRecord] = {}
    for rec in records:
        key = (rec.key, rec.instruction)
        first = by_key.get(key)
        if first is None:
            by_key[key] = rec
            continue
        report.merged_duplicate_queries += 1
        seen = {d.doc_id for d in first.positives}
        positives = first.positives + tuple(d for d in rec.positives if d.doc_id not in seen)
        pos_ids, pos_texts = {d.doc_id for d in positives}, {d.text for d in positives}
        negatives, neg_ids = [], set()
        for doc in first.negatives + rec.negatives:
            if doc.doc_id in pos_ids or doc.text in pos_texts or doc.doc_id in neg_ids:
                continue
            neg_ids.add(doc.doc_id)
            negatives.append(doc)
        by_key[key] = QueryRecord(
            first.query, positives, tuple(negatives), first.source_chunk, first.meta, first.instruction
        )
    return list(by_key.values())


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; DataError if the file cannot be read."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror or exc}", path=str(path)) from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    yield number, text
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason}", path=str(path)) from None


def read_records(
    path: str | Path,
    on_error: Literal["raise", "skip"] = "raise",
    max_document_chars: int = MAX_DOCUMENT_CHARS,
) -> tuple[list[QueryRecord], DataReport]:
    """Read a seed-format JSONL file into merged, cleaned query records."""
    report = DataReport(path=str(path))
    records: list[QueryRecord] = []
    for number, text in iter_jsonl(path):
        report.lines += 1
        where = {"path": str(path), "line": number}
        try:
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON: {exc.msg} at column {exc.colno}", **where) from None
            record = parse_line(obj, report, where, max_document_chars)
        except DataError as exc:
            if on_error == "raise":
                raise
            report.skipped_bad_lines += 1
            report.errors.append(str(exc))
            continue
        if record is not None:
            records.append(record)
    records = _merge(records, report)
    report.records = len(records)
    if not records:
        raise DataError("no usable query (every line was empty, bad or without a positive)", path=str(path))
    return records, report


def write_records(records: Iterable[QueryRecord], path: str | Path) -> int:
    """Write records as seed-format JSONL; returns the number of lines written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
            count += 1
    return count
