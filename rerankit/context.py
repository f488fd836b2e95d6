"""What a ranking call knows beside its (query, document) pairs, validated once.

A model may need more than the pairs: the first stage's scores of the documents (for a fusion
with the retriever, or written into the input by score injection), and later an instruction
or the self-ensemble's signals. Every surface builds one ``RankContext`` at its boundary —
``Reranker.rerank``/``score`` from Python arguments, the CLI from a file, the server from a
request body — naming its own field in the error, and passes the object along; nothing past
the boundary checks the values again or drops one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rerankit.data import is_finite_number


class ContextError(ValueError):
    """A value beside the pairs is missing or wrong; ``field`` names it as the caller wrote it
    (``first_stage[2]``, ``first_stage_scores``), ``message`` says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True, eq=False)
class RankContext:
    """Per call, for ``num_docs`` documents: ``first_stage`` holds one array per retriever, each
    one finite float64 score per document (higher is better); the first is the one a
    score-injection model reads."""

    num_docs: int
    first_stage: tuple[np.ndarray, ...] = ()
    # How the caller named the first-stage scores, for errors raised past the boundary.
    field: str = "first_stage"
    # The self-ensemble's signals of the documents (rerankit.ensemble), once computed.
    signals: Mapping[str, np.ndarray] | None = None
    # The task instruction for a decoder's prompt template (None: the template's default), and
    # how the caller named it.
    instruction: str | None = None
    instruction_field: str = "instruction"

    @classmethod
    def build(
        cls,
        num_docs: int,
        first_stage=None,
        *,
        field: str = "first_stage",
        instruction: str | None = None,
        instruction_field: str = "instruction",
    ) -> RankContext:
        """Checked: ``first_stage`` is None, one score per document, or a list of such lists
        (several retrievers); ``instruction`` None or a non-blank string; ContextError naming
        ``field`` (and the position) or ``instruction_field`` otherwise."""
        if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
            shown = repr(instruction) if isinstance(instruction, str) else type(instruction).__name__
            raise ContextError(instruction_field, f"expected a non-empty string or null, got {shown}")
        scores = _score_arrays(first_stage, num_docs, field)
        return cls(num_docs, scores, field, instruction=instruction, instruction_field=instruction_field)

    def require_first_stage(self, why: str) -> np.ndarray:
        if not self.first_stage:
            raise ContextError(self.field, why)
        return self.first_stage[0]


def _score_arrays(first_stage, num_docs: int, field: str) -> tuple[np.ndarray, ...]:
    if first_stage is None:
        return ()
    if isinstance(first_stage, (str, bytes)) or not _is_sequence(first_stage):
        raise ContextError(field, f"expected a list of scores, got {type(first_stage).__name__}")
    rows = first_stage.tolist() if isinstance(first_stage, np.ndarray) else list(first_stage)
    nested = [_is_sequence(row) for row in rows]
    if rows and all(nested):  # several retrievers
        return tuple(_scores(row, num_docs, f"{field}[{i}]") for i, row in enumerate(rows))
    if any(nested):
        raise ContextError(field, "expected one score per document, or one list of scores per retriever")
    return (_scores(rows, num_docs, field),)


def _is_sequence(value) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))


def _scores(values, num_docs: int, field: str) -> np.ndarray:
    values = list(values)
    if len(values) != num_docs:
        raise ContextError(field, f"expected {num_docs} scores (one per document), got {len(values)}")
    out = np.empty(num_docs, dtype=np.float64)
    for i, value in enumerate(values):
        if not is_finite_number(value):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ContextError(f"{field}[{i}]", f"expected a finite number, got {shown}")
        out[i] = float(value)
    return out
