"""Reading the BEIR layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

Errors name the file, the line and the missing field. Used by ``rerankit mine`` and
``rerankit eval``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from rerankit.data import iter_jsonl
from rerankit.errors import DataError


def _rows(path: str | Path, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, object) of each line, each holding the ``required`` string fields."""
    rows = []
    for number, line in iter_jsonl(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", path=str(path), line=number) from None
        for key in required:
            if not isinstance(row, dict) or key not in row:
                raise DataError("required key is missing", path=str(path), line=number, field=key)
            ids_may_be_numbers = key == "_id" and type(row[key]) is int
            if not isinstance(row[key], str) and not ids_may_be_numbers:
                raise DataError(
                    f"must be a string, got {type(row[key]).__name__}", path=str(path), line=number, field=key
                )
        rows.append((number, row))
    return rows


def read_corpus(path: str | Path, with_title: bool = False) -> dict[str, str]:
    """doc_id -> text, in file order; rows are ``{_id, text, title?}`` or ``{doc_id, text}``.

    ``with_title`` puts the title before the text (as BEIR evaluations usually do).
    """
    corpus = {}
    for number, row in _rows(path, ["text"]):
        doc_id = row.get("_id", row.get("doc_id"))
        if doc_id is None:
            raise DataError("a document needs '_id' or 'doc_id'", path=str(path), line=number, field="_id")
        text = row["text"]
        if not isinstance(row.get("title") or "", str):
            raise DataError("must be a string", path=str(path), line=number, field="title")
        if with_title and row.get("title"):
            text = f"{row['title']} {text}"
        corpus[str(doc_id)] = text
    return corpus


def read_queries(path: str | Path) -> dict[str, str]:
    return {str(row["_id"]): row["text"] for _, row in _rows(path, ["_id", "text"])}


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """query id -> {doc_id: grade}; TSV ``query-id  corpus-id  score`` with an optional header."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with Path(path).open(encoding="utf-8") as handle:
            for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
                if not row or (number == 1 and row[0] == "query-id"):
                    continue
                if len(row) < 3:
                    raise DataError("expected query-id, corpus-id, score", path=str(path), line=number)
                try:
                    grade = int(float(row[2]))
                except (ValueError, OverflowError):  # not a number, NaN or infinite
                    raise DataError(
                        f"score must be a number, got {row[2]!r}", path=str(path), line=number, field="score"
                    ) from None
                qrels.setdefault(row[0], {})[row[1]] = grade
    except OSError as exc:
        raise DataError(f"cannot open: {exc.strerror or exc}", path=str(path)) from None
    return qrels
