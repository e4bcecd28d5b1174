"""Typed option groups of a run, validated on construction.

Every option of :class:`~batchmem.BatchProcessor` lives in exactly one
group, as a dataclass field with its default, unit and check. The groups
mirror the job file: ``batching:``, ``execution:``, ``errors:``,
``pressure:``, ``analysis:``, ``output:`` (see :mod:`batchmem.job`).

``BatchProcessor(n_jobs=2, on_error="skip")`` is sugar: :func:`group_options`
maps each flat keyword (and the Node.js option names in :data:`NODE_ALIASES`)
to its group, here and nowhere else. Invalid values raise
:class:`~batchmem.errors.ConfigError` naming the option and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from .errors import ConfigError
from .heap.monitor import PressureThresholds
from .optimizer.control import ControlConfig

__all__ = [
    "Analysis",
    "Batching",
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


def _one_of(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise ConfigError(f"{name}: {value!r} is not one of {listed}; pick one of them")


def _number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf, unit: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not low < value <= high:
        bound = f"in ({low}, {high}]" if math.isfinite(high) else f"> {low}"
        raise ConfigError(f"{name}: {value!r} must be a number {bound}{unit}")


@dataclass(frozen=True)
class Batching:
    """How batches are cut and sized (job file ``batching:``; ``batched`` is top-level there).

    Attributes:
        batch_size: first batch size (``auto_optimize=True``) or the fixed size, items.
        auto_optimize: let :class:`~batchmem.BatchOptimizer` resize batches after each one.
        batched: False: ``fn(item) -> result``; True: ``fn(list) -> list`` of the same length
            (a DataFrame chunk for pandas sources).
        min_batch_size, max_batch_size: the optimizer's bounds, items.
        target_batch_seconds: (low, high) wall time per batch the optimizer aims for, seconds.
        memory_target_fraction: share of the memory limit the batches in flight may fill, (0, 1].
        use_history: warm-start from, and record into, the per-operation history.
        weight: cost unit of an item: ``"auto"`` (its input size, see :mod:`batchmem.weights`),
            a callable ``item -> number >= 0``, or None to count items.
    """

    batch_size: int = 100
    auto_optimize: bool = True
    batched: bool = False
    min_batch_size: int = 1
    max_batch_size: int = 1_000_000
    target_batch_seconds: tuple[float, float] = (0.2, 2.0)
    memory_target_fraction: float = 0.6
    use_history: bool = True
    weight: str | Callable[[Any], float] | None = "auto"

    def __post_init__(self) -> None:
        self.control_config()  # ControlConfig checks sizes, band and fraction, naming the field
        if not (self.weight is None or self.weight == "auto" or callable(self.weight)):
            raise ConfigError(f"weight: {self.weight!r} is not 'auto', None or a callable item -> number")

    def control_config(self) -> ControlConfig:
        """The control law's tuning; ``batch_size`` is clamped into [min_batch_size, max_batch_size]."""
        size = self.batch_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = min(max(size, self.min_batch_size), self.max_batch_size)
        return ControlConfig(
            initial_batch_size=size,
            min_batch_size=self.min_batch_size,
            max_batch_size=self.max_batch_size,
            memory_target_fraction=self.memory_target_fraction,
            target_batch_seconds=tuple(self.target_batch_seconds),
        )


@dataclass(frozen=True)
class Execution:
    """Where batches run (job file ``execution:``; ``setup``/``teardown`` are top-level there).

    Attributes:
        n_jobs: batches at once; 1 runs in this process unless a backend is named; -1: every CPU;
            ``"auto"``: in-process until measurements show that worker processes pay, then as many as
            the cores and the memory target allow (:mod:`batchmem.backends.auto`).
        backend: a name from :data:`batchmem.backends.BACKENDS` or any joblib backend; None: in-process
            for ``n_jobs=1``, else joblib's configured backend (loky).
        client, scheduler_address: ``backend="dask"``: a ``distributed.Client`` or a scheduler address;
            either implies dask.
        connect_timeout: seconds to wait for a silent scheduler address.
        setup, teardown: per-worker setup, a callable or ``"module:callable"``: ``setup()`` runs once
            per worker process before its first batch and its result reaches ``fn`` as ``state=``;
            ``teardown(state)`` runs when the worker is done with it.
        max_tasks_per_worker: replace the worker processes after this many batches each (None: never).
        n_jobs_strict: fail (exit 2) instead of starting fewer worker processes than ``n_jobs`` when
            only fewer fit under the memory target once each one's baseline is paid
            (:mod:`batchmem.backends.fit`). Default: run the ones that fit, and say so.
        recycle_leaking_workers: replace the worker processes when a leak is flagged in one.
        stop_grace_seconds: after SIGINT/SIGTERM, how long the batches in flight may take to finish
            before they are cancelled, seconds.
        worker_cgroups: inside a memory cgroup with a limit whose (v1) hierarchy this process can write,
            give each worker process a child cgroup of its own with its share of the limit, so that the
            kernel stops a runaway worker, not the run, and batches are charged exactly
            (:mod:`batchmem.backends.worker_cgroups`). False keeps the workers in the run's cgroup.
    """

    n_jobs: int | str = 1
    backend: str | None = None
    client: Any = None
    scheduler_address: str | None = None
    connect_timeout: float = 10.0
    setup: Callable[[], Any] | str | None = None
    teardown: Callable[[Any], Any] | str | None = None
    max_tasks_per_worker: int | None = None
    n_jobs_strict: bool = False
    recycle_leaking_workers: bool = True
    stop_grace_seconds: float = 30.0
    worker_cgroups: bool = True

    def __post_init__(self) -> None:
        auto = self.n_jobs == "auto"
        if not auto and (self.n_jobs == 0 or not isinstance(self.n_jobs, int) or isinstance(self.n_jobs, bool)):
            raise ConfigError(
                f"n_jobs: {self.n_jobs!r} cannot run anything; use 1 (serial), N workers, -1 (all cores) or 'auto'"
            )
        if self.client is not None or self.scheduler_address is not None:
            if self.backend not in (None, "dask"):
                raise ConfigError(
                    f"backend: {self.backend!r} cannot use a dask client or scheduler_address; use backend='dask'"
                )
            object.__setattr__(self, "backend", "dask")
        mt = self.max_tasks_per_worker
        if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
            raise ConfigError(f"max_tasks_per_worker: {mt!r} must be an integer >= 1 (batches) or None")
        _number("connect_timeout", self.connect_timeout, unit=" seconds")
        _number("stop_grace_seconds", self.stop_grace_seconds, low=-1e-12, unit=" seconds")


@dataclass(frozen=True)
class ErrorPolicy:
    """What a failing item does (job file: the top-level ``on_error``, ``max_retries``, ``retry_exhausted``).

    Attributes:
        on_error: ``"raise"`` stops at the first failing item (naming its index); ``"skip"`` writes an
            error record and a ``null`` line and goes on; ``"retry"`` retries ``max_retries`` times with
            exponential backoff (tenacity: 0.05 s doubling, at most 2 s apart), then does what
            ``retry_exhausted`` says (``"skip"`` or ``"raise"``).
    """

    on_error: str = "raise"
    max_retries: int = 3
    retry_exhausted: str = "skip"

    def __post_init__(self) -> None:
        _one_of("on_error", self.on_error, ("raise", "skip", "retry"))
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError(f"max_retries: {self.max_retries!r} must be an integer >= 0")
        _one_of("retry_exhausted", self.retry_exhausted, ("skip", "raise"))


@dataclass(frozen=True)
class Pressure:
    """The memory limit and what happens as usage nears it (job file ``pressure:``;
    ``memory_limit`` is under ``batching:`` there).

    Attributes:
        memory_limit: bytes, a size string (``"2GiB"``), a fraction of the detected limit (``0.5``) or
            None to detect it (cgroup, rlimit, physical RAM).
        memory_monitoring: sample the process tree's resident set size (RSS) after every batch.
        pressure_thresholds: utilization fractions for warning/critical/emergency (0.80/0.90/0.95).
        adaptive_thresholds: True (or a dict of ``warning_mb``/``critical_mb``/``emergency_mb``) sets the
            thresholds at the baseline measured when the run starts + 50/70/90 MB instead.
        pressure_max_wait_s: longest pause of dispatch at critical pressure, seconds; after it batches
            go on at ``min_batch_size``.
        terminate_fraction: utilization of the limit at which the OOM watchdog kills the worker process
            holding the most memory (process backends), (0, 1]; Dask's
            ``distributed.worker.memory.terminate`` (0.95).
    """

    memory_limit: int | str | float | None = None
    memory_monitoring: bool = True
    pressure_thresholds: PressureThresholds = field(default_factory=PressureThresholds)
    adaptive_thresholds: bool | Mapping[str, float] = False
    pressure_max_wait_s: float = 10.0
    terminate_fraction: float = 0.95

    def __post_init__(self) -> None:
        if self.pressure_thresholds is None:
            object.__setattr__(self, "pressure_thresholds", PressureThresholds())
        elif isinstance(self.pressure_thresholds, Mapping):
            object.__setattr__(self, "pressure_thresholds", PressureThresholds(**self.pressure_thresholds))
        if not isinstance(self.pressure_thresholds, PressureThresholds):
            raise ConfigError(
                f"pressure_thresholds: {self.pressure_thresholds!r} is not a PressureThresholds or a mapping "
                "of warning/critical/emergency fractions"
            )
        _number("pressure_max_wait_s", self.pressure_max_wait_s, low=-1e-12, unit=" seconds")
        _number("terminate_fraction", self.terminate_fraction, high=1.0, unit=" (fraction of the limit)")


@dataclass(frozen=True)
class Analysis:
    """Heap analysis and garbage collection (job file ``analysis:``; ``detect_memory_issues`` is top-level).

    Attributes:
        detect_memory_issues: run the :class:`~batchmem.HeapAnalyzer` on per-batch baselines.
        trace_allocations: trace this process with :mod:`tracemalloc` so leak verdicts name the source
            lines that grew (3-5x slower; benchmarks/bench_leaks.py).
        gc_max_time_fraction: share of wall time garbage collection between batches may take, (0, 1].
        force_gc_on_completion: run ``gc.collect()`` once the run ends.
        analyzer: keyword arguments of :class:`~batchmem.HeapAnalyzer` (its windows and thresholds).
    """

    detect_memory_issues: bool = True
    trace_allocations: bool = False
    gc_max_time_fraction: float = 0.05
    force_gc_on_completion: bool = False
    analyzer: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _number("gc_max_time_fraction", self.gc_max_time_fraction, high=1.0)
        if not isinstance(self.analyzer, Mapping):
            raise ConfigError(f"analyzer: {self.analyzer!r} is not a mapping of HeapAnalyzer keyword arguments")
        import inspect

        from .heap.analyzer import HeapAnalyzer

        known = set(inspect.signature(HeapAnalyzer).parameters) - {"monitor", "trace_allocations", "gc_watch"}
        for key in self.analyzer:
            if key not in known:
                listed = ", ".join(sorted(known))
                raise ConfigError(f"analyzer.{key}: not an option of HeapAnalyzer; use one of {listed}")


@dataclass(frozen=True)
class Output:
    """How results are written (job file ``output:``; ``progress`` is top-level there).

    Attributes:
        fsync: ``os.fsync`` the output (and error file) after every batch, before the checkpoint is
            replaced (itself fsynced): committed batches survive a power cut, not only a ``kill -9``.
        json_default: fallback for results orjson cannot encode (e.g. ``str``).
        progress: show a tqdm bar (batch size, RSS and pressure in its postfix).
    """

    fsync: bool = True
    json_default: Callable[[Any], Any] | None = None
    progress: bool = True


#: The option groups by their job-file section name.
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
        group = group or cls()
        built[section] = dataclasses.replace(group, **changes) if changes else group
    return RunConfig(process_name=process_name, **built)
