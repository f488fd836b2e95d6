"""The training config reference, written from the pydantic models of ``rerankit.config``.

A mkdocs hook (``hooks:`` in mkdocs.yml): every page that holds the marker line gets, in its
place, one table per config section with each key's type, limits, default and description.
A description is the field's pydantic ``description`` or, failing that, the comment block right
above the field in ``rerankit/config.py``, so the reference never drifts from the code.

``python docs/gen_config_reference.py`` prints the reference.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

MARKER = "<!-- config-reference -->"

_FIELD_LINE = re.compile(r"^(?P<indent>\s+)(?P<name>[A-Za-z_]\w*)\s*:")
_LIMITS = (
    (annotated_types.Ge, "ge", "≥"),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "≤"),
    (annotated_types.Lt, "lt", "<"),
)


def sections(root: type[BaseModel] | None = None) -> list[tuple[str, type[BaseModel]]]:
    """(dotted path, model) of the root and of every section inside it, depth first."""
    if root is None:
        from rerankit.config import TrainConfig

        root = TrainConfig
    found = [("", root)]
    for name, field in root.model_fields.items():
        model = _section_model(field.annotation)
        if model is not None:
            found += [(".".join(p for p in (name, sub) if p), m) for sub, m in sections(model)]
    return found


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment lines right above each field of the class body, joined into one sentence run."""
    lines = inspect.getsource(model).splitlines()
    comments: dict[str, str] = {}
    block: list[str] = []
    body_indent = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD_LINE.match(line)
        if match and (body_indent is None or match["indent"] == body_indent):
            body_indent = match["indent"]
            if match["name"] in model.model_fields and block:
                comments[match["name"]] = " ".join(block)
        block = []
    return comments


def type_text(annotation: Any) -> str:
    """A YAML reader's name for a field type: ``int``, ``"a" or "b"``, ``list of str``, ``null``."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if _section_model(annotation) is not None:
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def limits_text(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for kind, attribute, sign in _LIMITS:
            if isinstance(item, kind):
                parts.append(f"{sign} {_value(getattr(item, attribute))}")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{_value(value)}`"


def _value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:_}".replace("_", ",")
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    # a bare < would open an HTML tag (qwen3's <Instruct>), a bare | a new column
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", r"\|").replace("\n", " ")


def _anchor(path: str) -> str:
    return "config-" + (path.replace(".", "-").replace("_", "-") or "top-level")


def section_table(path: str, model: type[BaseModel]) -> str:
    comments = field_comments(model)
    doc = inspect.getdoc(model) if model.__doc__ else ""
    heading = f"`{path}`" if path else "top level"
    out = [f"### {heading} {{#{_anchor(path)}}}", ""]
    if doc:
        out += [" ".join(doc.split("\n\n")[0].split()), ""]
    out += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = ".".join(p for p in (path, name) if p)
        kind = type_text(field.annotation)
        limits = limits_text(field)
        if limits:
            kind = f"{kind}, {limits}"
        description = field.description or comments.get(name, "")
        nested = _section_model(field.annotation)
        if nested is not None:
            description = f"{description} See [`{key}`](#{_anchor(key)}).".strip()
        out.append(f"| `{key}` | {_cell(kind)} | {_cell(default_text(field))} | {_cell(description)} |")
    return "\n".join(out)


def render(root: type[BaseModel] | None = None) -> str:
    """The whole reference: one table per section, the top level first."""
    return "\n\n".join(section_table(path, model) for path, model in sections(root)) + "\n"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """mkdocs hook: replace the marker line with the reference."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())


if __name__ == "__main__":
    print(render(), end="")
