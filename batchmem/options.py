"""Typed option groups of a run; each option is defined once: default, unit, bounds, check, job-file key.

Every option of :class:`~batchmem.BatchProcessor` is a field, made by :func:`~batchmem.option_spec.option`,
of one group. The groups check themselves on construction and the job-file models are derived from the
same fields (:mod:`batchmem.job.derive`), so ``BatchProcessor(...)``, ``batchmem validate`` and ``batchmem
run`` accept the same values; errors name the keyword in Python, the dotted key in a job file. Flat keywords
and the Node.js names (:data:`NODE_ALIASES`) are mapped to their group by :func:`group_options`, only here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from . import option_spec as checks
from .errors import ConfigError
from .heap.levels import PressureThresholds
from .option_spec import check_fields, fail, job_section, option

if TYPE_CHECKING:
    from .optimizer.control import ControlConfig

__all__ = [
    "Analysis",
    "Batching",
    "DEFAULT_BATCH_SIZE",
    "ErrorPolicy",
    "Execution",
    "GROUPS",
    "NODE_ALIASES",
    "Output",
    "Pressure",
    "RunConfig",
    "group_options",
    "option_names",
]

#: The Node.js module's option names, accepted as keyword aliases.
NODE_ALIASES = MappingProxyType(
    {
        "batchSize": "batch_size",
        "autoOptimize": "auto_optimize",
        "memoryMonitoring": "memory_monitoring",
        "detectMemoryIssues": "detect_memory_issues",
        "processName": "process_name",
        "forceGCOnCompletion": "force_gc_on_completion",
    }
)

#: First batch size when ``batch_size`` is not given, items (clamped into the batch-size bounds).
DEFAULT_BATCH_SIZE = 100


# --------------------------------------------------------------------------- the groups


@job_section("batching")
@dataclass(frozen=True)
class Batching:
    """How batches are cut and sized: job-file ``batching:`` (``batched`` is top-level there).

    Each field's description, unit and bounds are its ``metadata["spec"]`` (docs/job-file.md lists them).
    """

    batch_size: int | None = option(
        None,
        "First batch size (or the fixed size without auto_optimize), items. "
        f"Default: {DEFAULT_BATCH_SIZE}, moved into [min_batch_size, max_batch_size].",
        kind=int,
        gt=0,
        none_ok=True,
    )
    auto_optimize: bool = option(
        True,
        "Let the optimizer resize batches from live measurements and history.",
        kind=bool,
    )
    batched: bool = option(
        False,
        "false: fn(item) -> result. true: fn(batch) -> results of the same length "
        "(a DataFrame chunk for pandas sources).",
        job="batched",
        kind=bool,
    )
    min_batch_size: int = option(1, "Smallest batch the optimizer may choose, items.", kind=int, gt=0)
    max_batch_size: int = option(1_000_000, "Largest batch the optimizer may choose, items.", kind=int, gt=0)
    target_batch_seconds: tuple[float, float] = option(
        (0.2, 2.0),
        "[low, high] wall time per batch the optimizer aims for, seconds, 0 < low < high "
        "(joblib's auto-batching band).",
        check=checks.band_check,
        job_type=list[float],
        label="[low, high] (numbers)",
    )
    memory_target_fraction: float = option(
        0.6,
        "Share of the free memory under the limit that batches in flight may fill (Dask's worker memory target).",
        kind=float,
        gt=0,
        le=1,
    )
    use_history: bool = option(
        True,
        "Warm-start from, and record into, the operation's run history (`batchmem stats`).",
        kind=bool,
    )
    weight: str | Callable[[Any], float] | None = option(
        "auto",
        "Cost unit of an item, so batches are budgeted in it: `auto` (its size: characters, bytes, file size; "
        "1 for numbers), `none` (count items), or `module:callable` returning a number >= 0 per item.",
        check=checks.weight_check,
        job_type=str,
        from_job=lambda v: None if v == "none" else v,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        low, high = self.min_batch_size, self.max_batch_size
        if low > high:
            raise fail(
                "min_batch_size",
                f"min_batch_size ({low}) is larger than max_batch_size ({high}); "
                "lower min_batch_size or raise max_batch_size",
            )
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", min(max(DEFAULT_BATCH_SIZE, low), high))
        elif not low <= self.batch_size <= high:
            raise fail(
                "batch_size",
                f"batch_size ({self.batch_size}) must lie between min_batch_size ({low}) "
                f"and max_batch_size ({high}); change one of them",
            )

    def control_config(self) -> ControlConfig:
        """The control law's tuning from these (checked) options."""
        from .optimizer.control import ControlConfig

        return ControlConfig(
            initial_batch_size=self.batch_size,
            min_batch_size=self.min_batch_size,
            max_batch_size=self.max_batch_size,
            memory_target_fraction=self.memory_target_fraction,
            target_batch_seconds=self.target_batch_seconds,
        )


@job_section("execution")
@dataclass(frozen=True)
class Execution:
    """Where batches run: job-file ``execution:`` (``setup``/``teardown`` are top-level there)."""

    n_jobs: int | str = option(
        1,
        "Batches run at once: 1 runs in-process; -1 uses every CPU (joblib convention); `auto` runs in-process "
        "until an item costs more than shipping it to a worker, then uses as many workers as fit. Not 0.",
        check=checks.n_jobs_check,
        job_type=int | Literal["auto"],
    )
    backend: str | None = option(
        None,
        "loky, multiprocessing or threading (batchmem's own worker pools), dask, sequential, or a backend "
        "registered with register_backend or an installed package's entry point (see docs/extending.md). "
        "Default: in-process for n_jobs 1, else joblib's configured backend, loky unless set "
        "(dask when scheduler_address is set).",
        kind=str,
        none_ok=True,
        check=checks.backend_check,
    )
    client: Any = option(
        None,
        "A distributed.Client to run batches on; implies backend dask.",
        job=None,
        check=checks.client_check,
        none_ok=True,
    )
    scheduler_address: str | None = option(
        None,
        "Address of a dask scheduler (`tcp://host:8786`) to connect to; implies backend dask. "
        "Default: none (dask's default client).",
        kind=str,
        none_ok=True,
    )
    connect_timeout: float = option(
        10.0,
        "Seconds to wait for a scheduler address that does not answer (refused fails at once).",
        kind=float,
        gt=0,
        unit=" seconds",
    )
    setup: Callable[[], Any] | str | None = option(
        None,
        "`module:callable` (in Python also a callable) run once per worker process before its first batch; its "
        "return value reaches the function as the keyword argument `state` (`def fn(item, state): ...`). "
        "Default: none.",
        job="setup",
        check=checks.callable_ref_check,
        none_ok=True,
        job_type=str | None,
    )
    teardown: Callable[[Any], Any] | str | None = option(
        None,
        "`module:callable` called with the setup's state when a worker is done with it. Needs `setup`. Default: none.",
        job="teardown",
        check=checks.callable_ref_check,
        none_ok=True,
        job_type=str | None,
    )
    max_tasks_per_worker: int | None = option(
        None,
        "Replace the worker processes after this many batches each. Default: never.",
        kind=int,
        ge=1,
        none_ok=True,
        unit=" (batches)",
    )
    n_jobs_strict: bool = option(
        False,
        "Fail (exit 2) instead of starting fewer worker processes than n_jobs when only fewer fit under the "
        "memory target once each one's baseline is paid. Default: run the ones that fit, and say so.",
        kind=bool,
    )
    recycle_leaking_workers: bool = option(
        True,
        "Replace the worker processes when the heap analyzer flags a leak in one.",
        kind=bool,
    )
    stop_grace_seconds: float = option(
        30.0,
        "After SIGINT/SIGTERM, seconds the batches in flight may take before they are cancelled.",
        kind=float,
        ge=0,
        unit=" seconds",
    )
    worker_cgroups: bool = option(
        True,
        "Inside a memory cgroup with a limit, where the hierarchy is writable (cgroup v1, root), give each "
        "worker process a child cgroup with its share of the limit, so the kernel stops a runaway worker, "
        "not the run, and batches are charged exactly. false keeps the workers in the run's cgroup.",
        kind=bool,
    )
    item_timeout: float | None = option(
        None,
        "Seconds one item may run. An item past it fails as `TimeoutError: item i ran past item_timeout=...s` "
        "under on_error: Python code is interrupted in place; code stuck inside C only in worker processes, "
        "which are killed at the batch's deadline (item_timeout x items + 1 s), or on dask, whose task is "
        "cancelled and worker restarted (in-process, use n_jobs 1 with backend loky for that). Default: no limit.",
        kind=float,
        gt=0,
        none_ok=True,
        unit=" seconds",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.teardown is not None and self.setup is None:
            raise fail(
                "teardown", "there is no setup to tear down (teardown needs a setup); add setup or remove teardown"
            )
        if self.client is not None or self.scheduler_address is not None:
            if self.backend not in (None, "dask"):
                raise fail(
                    "backend", f"{self.backend!r} cannot use a dask client or scheduler_address; use backend dask"
                )
            object.__setattr__(self, "backend", "dask")


@dataclass(frozen=True)
class ErrorPolicy:
    """What a failing item does (job file: the top-level ``on_error``, ``max_retries``, ``retry_exhausted``)."""

    on_error: str = option(
        "raise",
        "raise: stop at the first failing item (naming its index); skip: record it in the errors file, write a "
        "null line and go on; retry: retry max_retries times with exponential backoff, then do what "
        "retry_exhausted says.",
        job="on_error",
        choices=("raise", "skip", "retry"),
    )
    max_retries: int = option(
        3,
        "Attempts after the first one with on_error: retry (exponential backoff from 0.05 s, at most 2 s apart).",
        job="max_retries",
        kind=int,
        ge=0,
    )
    retry_exhausted: str = option(
        "skip",
        "With on_error: retry, an item still failing after max_retries retries is skipped "
        "(error record, null line) or stops the run (raise).",
        job="retry_exhausted",
        choices=("skip", "raise"),
    )

    __post_init__ = check_fields  # every field checked (and normalised) on construction


@job_section("pressure")
@dataclass(frozen=True)
class Pressure:
    """The memory limit and what happens as usage nears it: job-file ``pressure:``
    (``memory_limit`` is under ``batching:`` there)."""

    memory_limit: int | str | float | None = option(
        None,
        "Memory the run may use: a size string (`512MiB`, `2GiB`; decimal `MB`/`GB` too), an integer of bytes, "
        "or a fraction 0<f<=1 (or `50%`) of the detected limit. Default: the detected limit "
        "(cgroup, rlimit or physical RAM).",
        job="batching.memory_limit",
        check=checks.memory_limit_check,
        none_ok=True,
        job_type=Any,
        label="size string | int (bytes) | float (fraction) | null",
    )
    memory_monitoring: bool = option(True, "Sample the process tree's RSS after every batch.", kind=bool)
    pressure_thresholds: PressureThresholds = option(
        doc="Utilization of the limit at which pressure escalates: warning (shrink batches, collect garbage), "
        "critical (pause dispatch), emergency (cleanup callbacks, stop cleanly); 0 < warning < critical < "
        "emergency <= 1.",
        factory=PressureThresholds,
        check=checks.thresholds_check,
        from_job=checks.thresholds_from_job,
    )
    adaptive_thresholds: bool | Mapping[str, float] = option(
        False,
        "true (or a mapping of warning_mb/critical_mb/emergency_mb) puts the levels at the run's starting "
        "RSS + 50/70/90 MB instead.",
        check=checks.adaptive_check,
        job_type=bool | dict[str, float],
    )
    pressure_max_wait_s: float = option(
        10.0,
        "Longest pause of dispatch at critical pressure, seconds; then batches go on at min_batch_size.",
        kind=float,
        ge=0,
        unit=" seconds",
    )
    terminate_fraction: float = option(
        0.95,
        "Share of the limit at which the OOM watchdog kills the worker process holding the most memory "
        "(process backends; Dask's distributed.worker.memory.terminate).",
        kind=float,
        gt=0,
        le=1,
    )

    def __post_init__(self) -> None:
        if self.pressure_thresholds is None:
            object.__setattr__(self, "pressure_thresholds", PressureThresholds())
        check_fields(self)


@job_section("analysis")
@dataclass(frozen=True)
class Analysis:
    """Heap analysis and garbage collection: job-file ``analysis:`` (``detect_memory_issues`` is top-level)."""

    detect_memory_issues: bool = option(
        True,
        "Run the heap analyzer (leaks, GC trouble, pressure) during the run.",
        job="detect_memory_issues",
        kind=bool,
    )
    trace_allocations: bool = option(
        False,
        "Trace allocations (tracemalloc) so leak verdicts name source lines; 3-5x slower (benchmarks/bench_leaks.py).",
        kind=bool,
    )
    gc_max_time_fraction: float = option(
        0.05,
        "Share of wall time garbage collection between batches may take.",
        kind=float,
        gt=0,
        le=1,
    )
    force_gc_on_completion: bool = option(False, "Run gc.collect() once the run ends.", kind=bool)
    analyzer: Mapping[str, Any] = option(
        doc="Keyword arguments of the heap analyzer (window, min_batches, min_confidence, ...).",
        factory=dict,
        check=checks.analyzer_check,
        job_type=dict[str, Any],
    )

    __post_init__ = check_fields  # every field checked (and normalised) on construction


@job_section("output")
@dataclass(frozen=True)
class Output:
    """How results are written: job-file ``output:`` (``progress`` is top-level there)."""

    fsync: bool = option(
        True,
        "Force each batch to disk (fsync) before the checkpoint is replaced: committed batches survive a "
        "power cut, not only a kill -9. false saves about one disk sync per batch.",
        kind=bool,
    )
    json_default: Callable[[Any], Any] | None = option(
        None,
        "Fallback for results orjson cannot encode: `str` writes `str(value)` (in Python: any callable). "
        "Default: none (such a result stops the run with an error naming its type and item index).",
        check=checks.json_default_check,
        none_ok=True,
        job_type=Literal["str"] | None,
        from_job=lambda v: str if v == "str" else v,
    )
    progress: bool = option(
        True, "Show a progress bar on the terminal (`--no-progress` turns it off).", job="progress", kind=bool
    )

    __post_init__ = check_fields  # every field checked (and normalised) on construction


#: The option groups by their section name in :class:`RunConfig`.
GROUPS: Mapping[str, type] = MappingProxyType(
    {
        "batching": Batching,
        "execution": Execution,
        "errors": ErrorPolicy,
        "pressure": Pressure,
        "analysis": Analysis,
        "output": Output,
    }
)
#: Flat keyword -> the group (section name) that holds it.
_FLAT = MappingProxyType({f.name: section for section, cls in GROUPS.items() for f in fields(cls)})


@dataclass(frozen=True)
class RunConfig:
    """All option groups of one processor, plus the operation name (the key of history and stats)."""

    process_name: str = "default"
    batching: Batching = field(default_factory=Batching)
    execution: Execution = field(default_factory=Execution)
    errors: ErrorPolicy = field(default_factory=ErrorPolicy)
    pressure: Pressure = field(default_factory=Pressure)
    analysis: Analysis = field(default_factory=Analysis)
    output: Output = field(default_factory=Output)

    def groups(self) -> dict[str, Any]:
        """The groups as keyword arguments of :class:`~batchmem.BatchProcessor` (``process_name`` too)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def option_names() -> frozenset[str]:
    """Every option's flat keyword name (the fields of all groups)."""
    return frozenset(_FLAT)


def group_options(groups: Mapping[str, Any], flat: Mapping[str, Any], *, process_name: str = "default") -> RunConfig:
    """Build a :class:`RunConfig` from option groups and flat keywords (Node aliases included).

    ``groups`` maps section names to group instances (or None); a flat keyword overrides the
    same field of its group. Raises :class:`TypeError` for an unknown keyword (as Python does
    for a bad argument) and :class:`~batchmem.errors.ConfigError` for a bad value.
    """
    flat = dict(flat)
    for alias in NODE_ALIASES.keys() & flat.keys():
        name = NODE_ALIASES[alias]
        if name in flat:
            raise TypeError(f"BatchProcessor() got both {alias!r} and its alias {name!r}")
        flat[name] = flat.pop(alias)
    process_name = flat.pop("process_name", process_name)
    unknown = sorted(flat.keys() - _FLAT.keys())
    if unknown:
        raise TypeError(f"BatchProcessor() got an unexpected keyword argument {unknown[0]!r}")
    built: dict[str, Any] = {}
    for section, cls in GROUPS.items():
        group = groups.get(section)
        if group is not None and not isinstance(group, cls):
            raise ConfigError(f"{section}: expected a batchmem.options.{cls.__name__}, got {type(group).__name__}")
        changes = {k: v for k, v in flat.items() if _FLAT[k] == section}
        if group is None:
            built[section] = cls(**changes)
        else:
            built[section] = dataclasses.replace(group, **changes) if changes else group
    return RunConfig(process_name=process_name, **built)
