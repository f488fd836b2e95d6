"""``rerankit eval --engine local|ray``: the evaluation's pairs scored through the bulk path.

Every (query, candidate, first-stage score) the evaluation reranks is written to a pairs file
in a work folder and scored by ``rerankit.bulk.score_file`` — in shards that an interrupted
evaluation resumes from, in this process or by a Ray actor pool — in one pass that keeps both
numbers the metrics need: the score the reranker ranks by (raw: its self-ensemble's, before
calibration) and the cross-encoder's logit alone. The metrics are then computed from the
scores read back, exactly as from scores computed in process (``rerankit.held_out``).

The work folder holds ``pairs.jsonl``, the scores and ``score_file``'s shards; it is removed
once the scores are read back. Running the same evaluation again resumes from its saved
shards when the first stage hands over the same candidates (the pairs file's bytes are the
same); anything else starts over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rerankit.errors import RerankitError

PAIRS = "pairs.jsonl"
SCORES = "scores.jsonl"
_LOCK = "eval.lock"


class Group(NamedTuple):
    """One query's candidates to score, with the first stage's score of each (None where the
    data has none)."""

    query: str
    documents: Sequence[str]
    first_stage: Sequence[float | None]


class PairScores(NamedTuple):
    """One query's candidates scored: the cross-encoder's logits alone, and the score the
    reranker ranks by (its self-ensemble's, before calibration; the logits without one)."""

    cross_encoder: np.ndarray
    final: np.ndarray


@dataclass(frozen=True)
class BulkScoring:
    """Score an evaluation's pairs with ``rerankit.bulk.score_file`` in ``work_dir``.

    ``model``: what ``score_file`` takes (a path or hub id; with the local engine also a loaded
    ``Reranker``). ``options``: ``score_file``'s keyword arguments (``engine``, ``ray_address``,
    ``workers``, ``shard_size``, ``progress``, ``on_shard``, and the options the model is, or
    was, loaded with).
    """

    model: Any
    work_dir: Path
    options: Mapping[str, Any] = field(default_factory=dict)

    def scores(self, groups: Sequence[Group]) -> list[PairScores]:
        """Each group's scores, in order; resumes an interrupted run of the same pairs."""
        from filelock import FileLock, Timeout

        from rerankit.bulk import score_file

        work = Path(self.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(work / _LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RerankitError(f"{work} is in use by another rerankit eval; wait for it to end") from None
        try:
            _write_pairs(groups, work / PAIRS)
            score_file(
                self.model,
                work / PAIRS,
                work / SCORES,
                raw=True,
                cross_encoder_score=True,
                overwrite=True,
                **self.options,
            )
            scored = _read_scores(work / SCORES, [len(g.documents) for g in groups])
        finally:
            lock.release()
        shutil.rmtree(work, ignore_errors=True)
        return scored


def default_work_dir(out: str | Path | None, described: Mapping[str, Any]) -> Path:
    """Where ``rerankit eval`` keeps its pairs and shards: ``.NAME.eval`` beside its ``--out``
    file, else ``.rerankit-eval-<hash>`` in the current folder, the hash of ``described`` (the
    model, the data and the options that choose the pairs), so the same command finds its shards
    again and another evaluation does not take them."""
    if out is not None:
        out = Path(out)
        return out.with_name(f".{out.name}.eval")
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
    return Path(f".rerankit-eval-{digest[:12]}")


def _write_pairs(groups: Sequence[Group], path: Path) -> None:
    """One line per candidate, its query's candidates together; the same groups give the same
    bytes, which is what lets ``score_file`` resume."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for group in groups:
            for document, first_stage in zip(group.documents, group.first_stage, strict=True):
                row = {"query": group.query, "document": document}
                if first_stage is not None:
                    row["score"] = float(first_stage)
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _read_scores(path: Path, sizes: Sequence[int]) -> list[PairScores]:
    final = np.empty(sum(sizes), dtype=np.float64)
    cross_encoder = np.empty_like(final)
    with path.open(encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            row = json.loads(line)
            final[i], cross_encoder[i] = row["score"], row["cross_encoder_score"]
    bounds = np.cumsum([0, *sizes])
    return [
        PairScores(cross_encoder[start:end], final[start:end]) for start, end in zip(bounds[:-1], bounds[1:])
    ]
