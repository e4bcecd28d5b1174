"""The job file reference: a Markdown table of every key, generated from the pydantic models.

``python -c "from batchmem.job import job_reference_markdown as r; print(r())"``
prints the table of docs/job-file.md, so the reference stays in step with the schema
(itself derived from :mod:`batchmem.options`).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ..errors import one_line
from .schema import Job, unwrap_model

__all__ = ["job_reference_markdown", "type_label"]


def type_label(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "type_label" in extra:
        return str(extra["type_label"])
    return _annotation_label(field.annotation)


def _annotation_label(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_annotation_label(a) for a in args)
    if origin is list:
        return f"list of {_annotation_label(args[0])}" if args else "list"
    if origin is tuple:
        return f"[{', '.join(_annotation_label(a) for a in args)}]"
    if origin is dict:
        return f"mapping {_annotation_label(args[0])} -> {_annotation_label(args[1])}" if args else "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "mapping"
        if issubclass(annotation, Path):
            return "path"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default_label(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see below"
        return f"`{value!r}`" if value != {} else "`{}`"
    value = field.default
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`[{', '.join(str(v) for v in value)}]`"
    if isinstance(value, int) and value >= 10_000:
        return f"`{value}`"
    return f"`{value}`"


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _range(field: FieldInfo) -> str:
    """The field's bounds as a sentence (`` Range: > 0, <= 1.``), from its pydantic constraints."""
    parts = [f"{sign} {getattr(m, name)}" for m in field.metadata for name, sign in _BOUNDS if hasattr(m, name)]
    return f" Range: {', '.join(parts)}." if parts else ""


def job_reference_markdown() -> str:
    """The job file reference as a Markdown table: every key (dotted), type, default and description.

    Generated from the pydantic models, so the README stays in step with the schema.
    """
    rows = ["| key | type | default | description |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            desc = one_line((field.description or "") + _range(field)).replace("|", "\\|")
            kind = type_label(field).replace("|", "\\|")
            rows.append(f"| `{key}` | {kind} | {_default_label(field)} | {desc} |")
            inner = unwrap_model(field.annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{key}.")

    walk(Job, "")
    return "\n".join(rows) + "\n"
