"""Teacher scores by a cross-encoder: every document of mined lines scored by a (larger)
reranker through the bulk path (``rerankit.bulk``), the ``"score"`` ``loss.distillation``
trains towards (``rerankit mine --teacher-model``).

The scores are raw (``Reranker.score(raw=True)``: a logit, or the self-ensemble's score before
calibration), as distillation losses compare score differences and softmaxes of logits. The
pairs go through ``score_file`` in a work folder next to the output, so a large mining job
resumes its scoring after an interruption and can run on Ray (``engine="ray"``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from rerankit.data import QueryRecord


def teacher_scored(
    records: Sequence[QueryRecord], model, out: str | Path, **score_options
) -> list[QueryRecord]:
    """``records`` with every positive's and negative's ``score`` set to ``model``'s raw score
    of (query, document). ``score_options`` go to ``rerankit.bulk.score_file`` (``engine``,
    ``workers``, ``dtype``, ...)."""
    from rerankit.bulk import score_file

    out = Path(out)
    work = out.with_name(f".{out.name}.teacher")
    work.mkdir(parents=True, exist_ok=True)
    pairs, scores = work / "pairs.jsonl", work / "scores.jsonl"
    # The same lines give the same bytes, so an interrupted scoring resumes from its shards.
    with pairs.open("w", encoding="utf-8") as handle:
        for record in records:
            for doc in (*record.positives, *record.negatives):
                handle.write(
                    json.dumps({"query": record.query, "document": doc.text}, ensure_ascii=False) + "\n"
                )
    score_file(model, pairs, scores, raw=True, overwrite=True, **score_options)
    with scores.open(encoding="utf-8") as handle:
        values = iter(json.loads(line)["score"] for line in handle)
        scored = [
            dataclasses.replace(
                record,
                positives=tuple(dataclasses.replace(d, score=next(values)) for d in record.positives),
                negatives=tuple(dataclasses.replace(d, score=next(values)) for d in record.negatives),
            )
            for record in records
        ]
    shutil.rmtree(work, ignore_errors=True)
    return scored
