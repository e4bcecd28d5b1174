"""How one option is declared and checked: :class:`Spec`, :func:`option` and :func:`check_option`.

Every option of :mod:`batchmem.options` is a dataclass field made by
:func:`option`; its :class:`Spec` (in the field's ``metadata["spec"]``) holds
what the user reads and what is checked: the description, the job-file key,
the type, the bounds and any custom check. The group's ``__post_init__`` runs
:func:`check_option` on every field, and :mod:`batchmem.job.derive` builds the
job-file models from the same specs, so Python and job files accept the same
values and name the same option.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from .callables import is_reference, short_repr
from .errors import ConfigError, OptionError
from .heap.levels import PressureThresholds
from .heap.limits import FRACTION_RE, parse_size

__all__ = ["OptionError", "SECTION", "Spec", "check_fields", "check_option", "fail", "job_section", "option", "spec_of"]


def fail(name: str, problem: str) -> OptionError:
    """The :class:`OptionError` for option ``name`` (raise it)."""
    return OptionError(name, problem)


@dataclass(frozen=True)
class Spec:
    """What an option is, for the checks, the job-file schema and the reference.

    Attributes:
        doc: the user's description, with the unit (items, seconds, bytes, a fraction).
        job: its dotted job-file key (``"batching.batch_size"``, ``"on_error"``); None: Python only.
        kind: ``int``, ``float``, ``bool`` or ``str`` for the generic type check; None: ``check`` decides.
        choices: the accepted values (a job file's enum).
        gt, ge, le: bounds of a number.
        none_ok: None is accepted (it means "not set": detect, never, off).
        unit: appended to a bound in messages (``" seconds"``).
        check: ``(name, value) -> value`` for what the generic checks cannot say; it may normalise
            (a size string to bytes) and raises :func:`fail`.
        job_type: the annotation in a job file when it is not the one ``kind`` gives
            (a ``module:callable`` string where Python takes a callable).
        from_job: turns a job file's spelling into the Python value (``"str"`` -> :class:`str`).
        label: the type as the job-file reference shows it, when the annotation does not say it.
    """

    doc: str
    job: str | None
    kind: type | None = None
    choices: tuple[Any, ...] = ()
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    none_ok: bool = False
    unit: str = ""
    check: Callable[[str, Any], Any] | None = None
    job_type: Any = None
    from_job: Callable[[Any], Any] | None = None
    label: str | None = None

    def bounds_text(self) -> str:
        """The bounds as a message shows them: ``" > 0"``, ``" in (0, 1]"``, ``" >= 0"``."""
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        if low is not None and self.le is not None:
            return f" in {low}, {self.le:g}]"
        if self.gt is not None:
            return f" > {self.gt:g}"
        if self.ge is not None:
            return f" >= {self.ge:g}"
        return f" <= {self.le:g}" if self.le is not None else ""


#: ``option(job=SECTION)`` (the default): the job-file key is ``<the group's section>.<the field's name>``.
SECTION = "<section>"


def option(
    default: Any = MISSING, doc: str = "", *, job: str | None = SECTION, factory: Any = MISSING, **spec: Any
) -> Any:
    """A dataclass field for an option: its default (or ``factory``) and its :class:`Spec`.

    ``job`` is the dotted job-file key: by default the group's section (:func:`job_section`) and the
    field's name; a key elsewhere (``"on_error"``, ``"batching.memory_limit"``); None: Python only.
    """
    meta = {"spec": Spec(doc=doc, job=job, **spec)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def job_section(section: str) -> Callable[[type], type]:
    """Class decorator of an option group (above ``@dataclass``): its fields' job keys default to
    ``section.<field name>``, so a job file's section and the group's fields cannot drift apart."""

    def decorate(cls: type) -> type:
        for f in fields(cls):
            spec = f.metadata.get("spec")
            if spec is not None and spec.job == SECTION:
                f.metadata = MappingProxyType({**f.metadata, "spec": replace(spec, job=f"{section}.{f.name}")})
        return cls

    return decorate


def spec_of(cls: type, name: str) -> Spec:
    """The :class:`Spec` of field ``name`` of the option group ``cls``."""
    return cls.__dataclass_fields__[name].metadata["spec"]


_KINDS: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: (
        "a number",
        lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    ),
    str: ("a string", lambda v: isinstance(v, str)),
}


def _in_bounds(value: float, spec: Spec) -> bool:
    return (
        (spec.gt is None or value > spec.gt)
        and (spec.ge is None or value >= spec.ge)
        and (spec.le is None or value <= spec.le)
    )


def check_option(name: str, value: Any, spec: Spec) -> Any:
    """Check ``value`` of option ``name`` against ``spec``; return it (normalised by ``spec.check``).

    Raises:
        OptionError: naming ``name``, the value and what is accepted.
    """
    if value is None and spec.none_ok:
        return None
    if spec.choices:
        if isinstance(value, (list, dict, set)) or value not in spec.choices:
            listed = ", ".join(str(c) for c in spec.choices)
            raise fail(name, f"{short_repr(value)} is not one of {listed}; pick one of them")
        return value
    if spec.kind is not None:
        what, ok = _KINDS[spec.kind]
        if not ok(value) or (spec.kind in (int, float) and not _in_bounds(value, spec)):
            raise fail(name, f"{short_repr(value)} must be {what}{spec.bounds_text()}{spec.unit}")
    return spec.check(name, value) if spec.check is not None else value


def check_fields(group: Any) -> None:
    """Check (and normalise, in place) every field of the frozen option group ``group``."""
    for f in fields(group):
        spec = f.metadata.get("spec")
        if spec is not None:
            value = getattr(group, f.name)
            checked = check_option(f.name, value, spec)
            if checked is not value:
                object.__setattr__(group, f.name, checked)


# --------------------------------------------------------------------------- checks that a kind cannot say


def band_check(name: str, value: Any) -> tuple[float, float]:
    """A (low, high) pair of seconds with 0 < low < high, as floats."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or not 0 < value[0] < value[1] < math.inf:
        raise fail(name, f"{short_repr(value)} must be [low, high] seconds with 0 < low < high, e.g. [0.2, 2.0]")
    return (float(value[0]), float(value[1]))


def weight_check(name: str, value: Any) -> Any:
    """``"auto"``, None (count items), a callable ``item -> number >= 0`` or its ``"module:callable"``."""
    if value is None or value == "auto" or callable(value) or is_reference(value):
        return value
    raise fail(name, f"{short_repr(value)} is not auto, none (None), a callable item -> number or 'module:callable'")


def n_jobs_check(name: str, value: Any) -> Any:
    """An integer other than 0 (-1: every CPU, joblib's convention) or ``"auto"``."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value != 0):
        return value
    raise fail(name, f"{short_repr(value)} cannot run anything; use 1 (serial), N workers, -1 (all cores) or 'auto'")


def backend_check(name: str, value: Any) -> Any:
    """None or the name of a registered backend (:data:`batchmem.backends.BACKENDS`, an installed
    ``batchmem.backends`` entry point, or from Python a backend registered with joblib)."""
    if value is None:
        return value
    from .backends import backend_names, joblib_backend

    if isinstance(value, str) and (value in (names := backend_names()) or joblib_backend(value)):
        return value
    raise fail(name, f"{short_repr(value)} is not a registered backend; use one of {', '.join(names)}")


def client_check(name: str, value: Any) -> Any:
    """None or an object with a ``submit`` method (a ``distributed.Client``)."""
    if value is None or callable(getattr(value, "submit", None)):
        return value
    raise fail(name, f"{short_repr(value)} is not a distributed.Client; pass one, or scheduler_address")


def callable_ref_check(name: str, value: Any) -> Any:
    """None, a callable or a ``"module:callable"`` reference (imported when the run starts)."""
    if isinstance(value, str) and not is_reference(value):
        raise fail(name, f"expected 'module:callable' such as 'transform:clean', got {short_repr(value)}")
    if not (value is None or isinstance(value, str) or callable(value)):
        raise fail(name, f"{short_repr(value)} is not callable; pass a function or 'module:callable'")
    return value


_LIMIT_FIX = (
    "use a size string like 512MB or 2GiB, an integer number of bytes, or a fraction 0 < f <= 1 of the detected limit"
)


def _limit_text(name: str, text: str) -> int | float:
    text = text.strip()
    if text.endswith("%") or FRACTION_RE.match(text):
        try:
            fraction = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise fail(name, f"{text!r} is not a percentage; {_LIMIT_FIX}") from None
        if not 0.0 < fraction <= 1.0:
            raise fail(name, f"{text!r} is not a fraction in (0, 100%]; {_LIMIT_FIX}")
        return fraction
    try:
        return parse_size(text)
    except ConfigError:
        raise fail(name, f"{text!r} is not a size; {_LIMIT_FIX}") from None


def memory_limit_check(name: str, value: Any) -> int | float:
    """None, int bytes (> 0), a fraction in (0, 1] or a size string / percentage -> bytes or a fraction."""
    if isinstance(value, str):
        return _limit_text(name, value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return value
    raise fail(name, f"{short_repr(value)} is not a memory limit; {_LIMIT_FIX}")


def thresholds_check(name: str, value: Any) -> PressureThresholds:
    """A :class:`PressureThresholds` or a mapping of its levels (which it checks), naming the level."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in fields(PressureThresholds)})
        if unknown:
            raise fail(f"{name}.{unknown[0]}", "not a threshold; use warning, critical and emergency")
        try:
            value = PressureThresholds(**value)
        except OptionError as exc:  # PressureThresholds.<level>: say it under this option
            raise fail(f"{name}.{exc.option.rpartition('.')[2]}", exc.problem) from None
    if not isinstance(value, PressureThresholds):
        raise fail(name, f"{short_repr(value)} is not a PressureThresholds or a mapping of warning/critical/emergency")
    return value


_ADAPTIVE_KEYS = ("warning_mb", "critical_mb", "emergency_mb")


def adaptive_check(name: str, value: Any) -> Any:
    """A flag, or a mapping of ``warning_mb``/``critical_mb``/``emergency_mb`` offsets (decimal MB)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping) and all(
        k in _ADAPTIVE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in value.items()
    ):
        return value
    raise fail(name, f"{short_repr(value)} is not true, false or a mapping of {', '.join(_ADAPTIVE_KEYS)} (MB)")


def analyzer_check(name: str, value: Any) -> Any:
    """A mapping of :class:`~batchmem.HeapAnalyzer` keyword arguments, naming an unknown one."""
    if not isinstance(value, Mapping):
        raise fail(name, f"{short_repr(value)} is not a mapping of HeapAnalyzer keyword arguments")
    from .heap.analyzer import HeapAnalyzer

    known = set(inspect.signature(HeapAnalyzer).parameters) - {"monitor", "trace_allocations", "gc_watch"}
    for key in value:
        if key not in known:
            raise fail(f"{name}.{key}", f"not an option of HeapAnalyzer; use one of {', '.join(sorted(known))}")
    return value


def json_default_check(name: str, value: Any) -> Any:
    """A callable that turns a result orjson cannot encode into one it can."""
    if callable(value):
        return value
    raise fail(name, f"{short_repr(value)} is not callable; pass a function such as str")


def thresholds_from_job(value: Any) -> Any:
    """A job file's ``pressure_thresholds`` model as the mapping :func:`thresholds_check` takes."""
    return value.model_dump() if hasattr(value, "model_dump") else value
