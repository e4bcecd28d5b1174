"""Loading a job file: YAML read with :func:`yaml.safe_load`, ``--set`` overrides, one-line errors.

:func:`load_job` reads the file, applies ``dotted.key=value`` overrides to
the raw mapping, validates it against :class:`~batchmem.job.schema.Job` and
checks what validation cannot see (files, imports). Every problem a user can
cause is one :class:`~batchmem.errors.JobFileError` whose message is a
single line naming the field as a dotted path (``batching.min_batch_size``)
and the fix; an unknown key gets the closest valid one
(:func:`difflib.get_close_matches`).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from ..callables import short_repr
from ..errors import JobFileError, one_line
from .reference import type_label
from .schema import FieldError, Job, unwrap_model

__all__ = ["load_job"]


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"job file {path}: not found; check the path") from None
    except IsADirectoryError:
        raise JobFileError(f"job file {path}: is a folder; pass the path of a .yaml job file") from None
    except UnicodeDecodeError as exc:
        raise JobFileError(f"job file {path}: not UTF-8 text ({one_line(exc.reason)}); save it as UTF-8") from None
    except OSError as exc:
        raise JobFileError(f"job file {path}: cannot read it ({exc.strerror or exc}); check its permissions") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "syntax error"
        raise JobFileError(f"job file {path}: invalid YAML{at}: {one_line(problem)}; fix the syntax there") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"job file {path}: invalid YAML: {one_line(exc)}; fix the syntax") from None
    if data is None:
        raise JobFileError(
            f"job file {path}: is empty; it needs at least source, function and output (see `batchmem validate --help`)"
        )
    if not isinstance(data, dict):
        raise JobFileError(
            f"job file {path}: the top level must be a mapping of keys (name, source, function, output, ...), "
            f"got a {type(data).__name__}; write one key: value per line"
        )
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override to the raw job dict (value parsed as YAML)."""
    where = f"--set {item}"
    key, sep, raw_value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise JobFileError(f"{where}: expected KEY=VALUE such as batching.memory_limit=1GiB")
    parts = key.split(".")
    if any(not p for p in parts):
        raise JobFileError(f"{where}: {key!r} is not a dotted key; write it like batching.memory_limit")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        problem = one_line(getattr(exc, "problem", exc))
        raise JobFileError(f"{where}: the value is not valid YAML ({problem}); quote it") from None
    model: Any = Job
    node = data
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if model is None:  # beneath a free mapping (source.options, source.dtype): anything goes
            pass
        elif isinstance(model, type) and issubclass(model, BaseModel):
            if part not in model.model_fields:
                valid = sorted(model.model_fields)
                close = difflib.get_close_matches(part, valid, n=1, cutoff=0.5)
                hint = f"did you mean {'.'.join(parts[:i] + [close[0]])!r}?" if close else "remove it"
                raise JobFileError(f"{where}: unknown key {dotted!r}; {hint} (valid keys here: {', '.join(valid)})")
            annotation = model.model_fields[part].annotation
            inner = unwrap_model(annotation)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
            elif _is_mapping_type(annotation):
                model = None
            elif not last:
                raise JobFileError(f"{where}: {dotted!r} is a single value, not a mapping; set {dotted}=VALUE")
            else:
                model = None
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def _is_mapping_type(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (dict, Mapping):
        return True
    if origin in (Union, types.UnionType):
        return any(_is_mapping_type(a) for a in typing.get_args(annotation))
    return False


def _model_at(path: Sequence[str]) -> type[BaseModel] | None:
    """The model class that holds the keys at ``path`` (``()`` -> Job), or None past a leaf."""
    model: Any = Job
    for part in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = unwrap_model(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_path(loc: Sequence[Any]) -> tuple[list[str], str]:
    """Split a pydantic ``loc`` into (field names, suffix such as ``[1]`` or ``.colname``).

    Union-member tags that pydantic inserts (``'dict[str,str]'``, ``'function-after[...]'``) are dropped.
    """
    names: list[str] = []
    model: Any = Job
    rest = list(loc)
    while rest:
        part = rest[0]
        if (
            isinstance(model, type)
            and issubclass(model, BaseModel)
            and isinstance(part, str)
            and (part in model.model_fields or (model.model_config.get("extra") == "forbid"))
        ):
            names.append(part)
            rest.pop(0)
            model = unwrap_model(model.model_fields[part].annotation) if part in model.model_fields else None
            continue
        break
    suffix = ""
    for part in rest:
        if isinstance(part, int):
            suffix += f"[{part}]"
            break
    return names, suffix


def _expected(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    return type_label(field)


def _one_line_validation_error(exc: ValidationError, where: str) -> JobFileError:
    """The first error of ``exc`` as one JobFileError line naming the dotted field, plus "(and N more)"."""
    # An unknown key is usually a misspelt known one, which then also shows up as
    # "missing": report the unknown key (with its suggestion) first.
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    seen: list[str] = []
    first_msg = ""
    for err in errors:
        names, suffix = _field_path(err["loc"])
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, FieldError):
            names = names + [ctx_err.field]
        dotted = ".".join(names) + suffix or "(top level)"
        if dotted in seen:
            continue
        seen.append(dotted)
        if first_msg:
            continue
        first_msg = _describe(err, names, dotted)
    more = f" (and {len(seen) - 1} more)" if len(seen) > 1 else ""
    return JobFileError(one_line(f"{where}{first_msg}{more}"))


_SELF_EXPLAINING = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "literal_error",
    "too_short",
    "too_long",
    "string_pattern_mismatch",
}


def _describe(err: Mapping[str, Any], names: list[str], dotted: str) -> str:
    kind = err["type"]
    parent = _model_at(names[:-1]) if names else Job
    field = parent.model_fields.get(names[-1]) if parent is not None and names else None
    if kind == "extra_forbidden":
        valid = sorted(parent.model_fields) if parent is not None else []
        close = difflib.get_close_matches(names[-1], valid, n=1, cutoff=0.5) if names else []
        hint = f"did you mean {close[0]!r}?" if close else "remove it"
        return f"{dotted}: unknown key; {hint} (valid keys here: {', '.join(valid)})"
    if kind == "missing" and isinstance(err["loc"][-1], int):  # a tuple given too few values
        base = dotted.split("[")[0]
        return f"{base}: too few values; expected {_expected(field)}"
    if kind == "missing":
        what = (field.description or "").split(". ")[0].rstrip(".") if field is not None else ""
        return f"{dotted}: required key is missing; add it" + (f" ({what})" if what else "")
    ctx_err = (err.get("ctx") or {}).get("error")
    if ctx_err is not None and kind == "value_error":
        return f"{dotted}: {ctx_err}"
    msg = err["msg"]
    got = f", got {short_repr(err.get('input'))}" if "input" in err else ""
    # Constraint and choice messages already say what is allowed; type errors get the expected type.
    expected = "" if kind in _SELF_EXPLAINING else _expected(field)
    fix = f"; expected {expected}" if expected else ""
    return f"{dotted}: {msg}{got}{fix}"


def load_job(
    path: str | os.PathLike[str],
    overrides: Iterable[str] = (),
    *,
    resume: bool = False,
    check: bool = True,
) -> Job:
    """Read, override, validate and check a job file; return the :class:`Job` with every path absolute.

    ``overrides`` are ``"dotted.key=value"`` strings (``--set`` on the command
    line) applied to the raw mapping before validation; values are parsed
    with :func:`yaml.safe_load` so ``execution.n_jobs=2`` sets an int.
    With ``check`` (the default) the source file (opened; its header read),
    the output folders, an existing output (refused without
    ``overwrite: true`` unless ``resume``) and the imports of ``function``
    are checked too.
    Every problem raises a one-line :class:`~batchmem.errors.JobFileError`.
    """
    job_path = Path(path)
    data = _read_yaml(job_path)
    for item in overrides:
        _apply_override(data, item)
    base_dir = job_path.resolve().parent
    default_name = re.sub(r"[^\w.-]", "_", job_path.name.split(".")[0]) or "default"
    try:
        job = Job.model_validate(data, context={"base_dir": base_dir, "default_name": default_name})
    except ValidationError as exc:
        raise _one_line_validation_error(exc, f"{job_path}: ") from None
    if check:
        try:
            job.check_files(resume=resume)
            job.check_source()
            job.check_imports()
        except JobFileError as exc:
            raise JobFileError(f"{job_path}: {exc}") from exc.__cause__
    return job
