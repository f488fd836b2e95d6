"""Which models a server holds: ``--model NAME=PATH`` options or a ``--models`` YAML file.

    models:
      - name: support
        path: outputs/support-run
      - name: legal
        path: outputs/legal-run
        dtype: float32          # optional per-model overrides of the serve options
        ensemble: none

A name routes requests (the Cohere ``model`` field, TEI's ``?model=``), appears in URLs
(``/v1/models/NAME/reload``) and labels metrics, so it is short and URL-safe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rerankit import safe_yaml
from rerankit.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)


class ModelSpec(BaseModel):
    """One served model: its name, its folder (or HF id) and what it overrides of the serve
    options (None: the server's own setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(min_length=1)
    dtype: str | None = None
    device: str | None = None
    backend: Literal["auto", "torch", "openvino", "onnx"] | None = None
    ensemble: Literal["auto", "none"] | None = None
    prompt: str | None = None
    long_documents: dict | None = None
    max_batch_tokens: int | None = Field(default=None, ge=1)

    def overrides(self) -> dict:
        """The ServerSettings fields this model sets for itself."""
        fields = ("dtype", "device", "backend", "ensemble", "prompt", "long_documents", "max_batch_tokens")
        return {key: getattr(self, key) for key in fields if getattr(self, key) is not None}


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        return unique_names(models)


def unique_names(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    seen: set[str] = set()
    for spec in models:
        if spec.name in seen:
            raise ValueError(f"the name {spec.name!r} is given twice")
        seen.add(spec.name)
    return list(models)


def parse_model_options(values: Sequence[str]) -> list[ModelSpec] | None:
    """``--model`` values: ``NAME=PATH`` each, or one bare ``PATH`` (None: serve that one
    model as before, answering to any name). A value that is an existing path is a path even
    when it holds ``=``."""
    if len(values) == 1 and not _named(values[0]):
        return None
    specs = []
    for value in values:
        if not _named(value):
            raise ConfigError(
                f"--model {value!r}: with several models each needs a name, as NAME=PATH "
                "(a name: letters, digits, '.', '_' or '-')"
            )
        name, _, path = value.partition("=")
        specs.append(ModelSpec(name=name, path=path))
    try:
        return unique_names(specs)
    except ValueError as exc:
        raise ConfigError(f"--model: {exc}") from None


def _named(value: str) -> bool:
    name, sep, path = value.partition("=")
    return bool(sep and path and _NAME.match(name)) and not Path(value).exists()


def read_models_file(path: str | Path) -> list[ModelSpec]:
    """The models a ``--models`` YAML file lists; ConfigError naming the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the models file: {exc}") from None
    try:
        raw = safe_yaml.load(text)
    except (yaml.YAMLError, safe_yaml.YAMLTooLargeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'models' list, got {type(raw).__name__}")
    try:
        return ModelsFile.model_validate(raw).models
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "models"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {key}: {message} (got {error.get('input')!r:.80})") from None
