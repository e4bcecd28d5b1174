"""The job file's option keys, derived from the option groups of :mod:`batchmem.options`.

Every option whose :class:`~batchmem.option_spec.Spec` names a job-file key
becomes a pydantic field of that section's model (:func:`section_fields`):
its annotation (the job file's spelling), default, description and bounds
come from the spec, and an after-validator runs the option's own check, so
a job file and ``BatchProcessor(...)`` accept the same values. The checks
between options (``min_batch_size <= max_batch_size``, ``teardown`` needs
``setup``) run when :func:`run_config` builds the groups from a validated
job, while the job is validated; their errors name the job-file key.
"""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from dataclasses import Field as Field_
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, create_model

from ..heap.levels import PressureThresholds
from ..option_spec import SECTION, OptionError, Spec, check_option
from ..options import GROUPS, RunConfig

__all__ = ["FieldError", "job_key", "run_config", "section_fields", "thresholds_model"]

_ANNOTATIONS = {int: int, float: float, bool: bool, str: str}


class FieldError(ValueError):
    """A validation error naming the (dotted) sub-field it is about, below the location pydantic knows.

    pydantic keeps the original exception in the error's ``ctx``, so the loader
    (:mod:`batchmem.job.load`) extends the location with ``field``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _job_options() -> typing.Iterator[tuple[Field_, Spec]]:
    """(dataclass field, spec) of every option a job file holds."""
    for cls in GROUPS.values():
        for f in fields(cls):
            spec = f.metadata.get("spec")
            if spec is not None and spec.job == SECTION:  # a programming error: fail at import
                raise TypeError(f"{cls.__name__}.{f.name}: give job= or decorate the group with @job_section")
            if spec is not None and spec.job is not None:
                yield f, spec


def job_key(option: str) -> str:
    """The job-file key of a Python option (``"min_batch_size"`` -> ``"batching.min_batch_size"``);
    a dotted sub-key (``"analyzer.windw"``) keeps its tail."""
    head, dot, tail = option.partition(".")
    for f, spec in _job_options():
        if f.name == head:
            return f"{spec.job}{dot}{tail}"
    return option


def _annotation(spec: Spec) -> Any:
    if spec.job_type is not None:
        return spec.job_type
    if spec.choices:
        annotation: Any = Literal[spec.choices]  # type: ignore[valid-type]
    else:
        annotation = _ANNOTATIONS[spec.kind]  # type: ignore[index]
    return annotation | None if spec.none_ok else annotation


def _from_job(spec: Spec, value: Any) -> Any:
    """A job file's spelling of a value as Python's (``json_default: str`` -> :class:`str`)."""
    return spec.from_job(value) if spec.from_job is not None and value is not None else value


def _checker(name: str, spec: Spec) -> AfterValidator:
    """Run the option's own check on a job value; the value keeps its job spelling unless normalised."""

    def check(value: Any) -> Any:
        try:
            checked = check_option(name, _from_job(spec, value), spec)
        except OptionError as exc:
            _, dot, tail = exc.option.partition(".")
            raise FieldError(tail, exc.problem) if dot else ValueError(exc.problem) from None
        return value if spec.from_job is not None else checked

    return AfterValidator(check)


def _field(name: str, spec: Spec, default: Any, factory: Any) -> tuple[Any, Any]:
    extra = {"type_label": spec.label} if spec.label else None
    bounds = {"gt": spec.gt, "ge": spec.ge, "le": spec.le} if spec.kind in (int, float) else {}
    if factory is not MISSING:
        info = Field(default_factory=factory, description=spec.doc, json_schema_extra=extra)
    else:
        info = Field(default, description=spec.doc, json_schema_extra=extra, **bounds)
    return Annotated[_annotation(spec), _checker(name, spec)], info


def section_fields(section: str, nested: dict[str, type[BaseModel]] | None = None) -> dict[str, Any]:
    """The pydantic fields of the options whose job key lies in ``section`` (``""``: the top level).

    ``nested`` maps an option to the model that stands for it in a job file (its default is that
    model's defaults).
    """
    out: dict[str, Any] = {}
    for f, spec in _job_options():
        where, _, key = spec.job.rpartition(".")
        if where != section:
            continue
        if nested and f.name in nested:
            model = nested[f.name]
            out[key] = (Annotated[model, _checker(f.name, spec)], Field(default_factory=model, description=spec.doc))
        else:
            out[key] = _field(f.name, spec, f.default, f.default_factory)
    return out


def thresholds_model(base: type[BaseModel]) -> type[BaseModel]:
    """``pressure.pressure_thresholds`` as a model: the fields and defaults of
    :class:`~batchmem.heap.levels.PressureThresholds`, which checks them."""
    defs = {
        f.name: (float, Field(f.default, description=f.metadata.get("doc", ""))) for f in fields(PressureThresholds)
    }
    return create_model("ThresholdsConfig", __base__=base, __doc__="``pressure.pressure_thresholds``", **defs)


def _value_at(job: Any, key: str) -> Any:
    node = job
    for part in key.split("."):
        node = getattr(node, part)
    return node


def run_config(job: Any) -> RunConfig:
    """The option groups of a validated job (its references still ``module:callable`` strings).

    Raises:
        FieldError: the job-file key of the option a check between options rejected.
    """
    built: dict[str, Any] = {}
    for section, cls in GROUPS.items():
        values: dict[str, Any] = {}
        for f in fields(cls):
            spec = f.metadata.get("spec")
            if spec is not None and spec.job is not None:
                values[f.name] = _from_job(spec, _value_at(job, spec.job))
        try:
            built[section] = cls(**values)
        except OptionError as exc:
            raise FieldError(job_key(exc.option), exc.problem) from None
    return RunConfig(process_name=job.name, **built)
