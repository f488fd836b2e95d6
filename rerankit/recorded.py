"""What a run folder's manifest (``run.json``) or an export's record (``rerankit_export.json``)
says about scoring, validated as a whole at load.

Both files are written by rerankit, but a folder can come from anywhere: a damaged or edited
field must stop the load with the file and the field named, never crash at the first request or
serve wrong scores. The settings a user may override at load (``long_documents``, ``prompt``)
are merged into what the folder recorded, field by field (``merged_settings``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from rerankit.calibration import Calibration
from rerankit.config import LongDocumentsConfig
from rerankit.ensemble import Ensemble
from rerankit.errors import ConfigError, ModelLoadError
from rerankit.fusion import LearnedFusion
from rerankit.prompts import PromptTemplate
from rerankit.score_injection import ScoreInjection

# The shortest window a pair can have (as config.model.max_length allows).
MIN_MAX_LENGTH = 8


def _object(value: Any, parse):
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"expected an object, got {type(value).__name__}")
    try:
        return parse(value)
    except (TypeError, KeyError) as exc:
        raise ValueError(str(exc)) from None


class _Recorded(BaseModel):
    """The fields both records share. Unknown keys are kept for information (dates, versions)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, arbitrary_types_allowed=True)

    max_length: int | None = Field(None, ge=MIN_MAX_LENGTH, strict=True)
    long_documents: LongDocumentsConfig | None = None
    prompt: PromptTemplate | None = None
    fusion: LearnedFusion | None = None
    score_injection: ScoreInjection | None = None
    ensemble: Ensemble | None = None
    calibration: Calibration | None = None
    # the CPU graphs written beside the model and their measured gate (rerankit.graph_export)
    accuracy_gate: dict | None = None

    @field_validator("calibration", "ensemble", "prompt", "fusion", "score_injection", mode="before")
    @classmethod
    def _parsed(cls, value, info: ValidationInfo):
        """Each recorded object read by its own type's parser (which checks its values)."""
        return _object(value, PARSERS[info.field_name])


# How each recorded object is read from its JSON form.
PARSERS = {
    "calibration": Calibration.from_dict,
    "ensemble": Ensemble.from_dict,
    "prompt": PromptTemplate.from_dict,
    "fusion": LearnedFusion.from_dict,
    "score_injection": ScoreInjection.from_dict,
}


class RunManifest(_Recorded):
    """``run.json``: how a finished run loads."""

    model_dir: str = Field(min_length=1)
    adapter: StrictBool
    base_model: str = Field(min_length=1)
    base_revision: str | None = None
    trust_remote_code: StrictBool = False
    max_length: int = Field(ge=MIN_MAX_LENGTH, strict=True)


class ExportRecord(_Recorded):
    """``rerankit_export.json``: what an export carries beside its weights. Its calibration is
    applied at load only when it could not be folded into the exported head."""

    calibration_folded: bool = True

    @classmethod
    def parse(cls, source: Path, record: Mapping) -> ExportRecord:
        calibration = record.get("calibration")
        folded = calibration.get("folded", True) if isinstance(calibration, Mapping) else True
        if not isinstance(folded, bool):
            raise ModelLoadError(f"{source}: calibration.folded: expected true or false, got {folded!r}")
        if folded and calibration and record.get("ensemble"):
            raise ModelLoadError(
                f"{source}: calibration.folded: a calibration of the ensemble's score cannot be in the head"
            )
        return parse_record(cls, source, {**record, "calibration_folded": folded})


def parse_record(kind: type[_Recorded], source: Path, record: Mapping):
    """``record`` validated as ``kind``, or ModelLoadError naming the file and the field."""
    try:
        return kind.model_validate(dict(record))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "record"
        shown = repr(error.get("input"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        message = error["msg"].removeprefix("Value error, ")
        raise ModelLoadError(f"{source}: {key}: {message} (got {shown})") from None


def merged_settings(recorded: LongDocumentsConfig | None, override) -> LongDocumentsConfig:
    """The long-document setting a load uses: the recorded one with a partial override's
    fields replaced (``{"aggregate": "mean"}`` keeps the recorded mode); a whole
    ``LongDocumentsConfig`` replaces it."""
    if isinstance(override, LongDocumentsConfig):
        return override
    base = recorded.model_dump() if recorded is not None else {}
    try:
        return LongDocumentsConfig.model_validate({**base, **dict(override or {})})
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"long_documents.{key}: {error['msg']} (got {error.get('input')!r})") from None


def merged_prompt(recorded: PromptTemplate | None, override):
    """The prompt a load uses: a mapping without ``template`` changes fields of the recorded
    template (``{"instruction": ...}``); a preset name, a mapping naming a ``template`` or a
    ``PromptTemplate`` replaces it; None keeps it."""
    if override is None or recorded is None:
        return override if override is not None else recorded
    if isinstance(override, Mapping) and "template" not in override:
        fields = {f.name for f in dataclasses.fields(PromptTemplate)}
        unknown = sorted(set(override) - fields)
        if unknown:
            raise ConfigError(f"prompt: unknown field(s) {unknown}; expected some of {sorted(fields)}")
        changes = {k: str(v) for k, v in override.items() if v is not None}
        try:
            return dataclasses.replace(recorded, **changes)
        except ValueError as exc:
            raise ConfigError(f"prompt: {exc}") from None
    return override


def position_limit(hf_config) -> int | None:
    """The longest input the model's position embeddings allow (None: not bounded by them).
    RoBERTa-style models start their positions after the padding index."""
    limit = getattr(hf_config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(hf_config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"):
        limit -= (getattr(hf_config, "pad_token_id", 1) or 1) + 1
    return limit


def check_max_length(max_length: int, hf_config, source: str) -> None:
    """ConfigError when ``max_length`` is below the smallest window or beyond the positions the
    model has: such a model would fail (or score garbage) at the first long document."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < MIN_MAX_LENGTH:
        raise ConfigError(f"max_length: expected an integer of at least {MIN_MAX_LENGTH}, got {max_length!r}")
    limit = position_limit(hf_config)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"max_length: {max_length} tokens is more than {source} has positions for ({limit})"
        )
