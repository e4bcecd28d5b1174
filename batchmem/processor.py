"""BatchProcessor: the pipeline loop.

source ──items──▶ batcher ──batch──▶ executor ──results──▶ sink (JSONL)
                    ▲ next size           │ measurement
                 BatchOptimizer ◀─────────┘ + MemoryMonitor sample

The batcher asks the optimizer for a size just before it cuts each batch;
finished batches are written in input order, then a checkpoint is replaced
atomically, so a crash leaves a valid prefix that ``resume=True`` continues.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson

from .io.checkpoint import Checkpoint, checkpoint_path
from .errors import ConfigError, ItemFailedError, OutputExistsError, OutputWriteError, ResumeMismatchError, WorkerDiedError
from .backends import BatchOutcome, BatchTask, RunOptions, make_executor
from .backends.worker_setup import make_worker_setup
from .heap.monitor import MemoryMonitor, PressureLevel, PressureThresholds, current_rss_bytes, resolve_memory_limit
from .heap.pressure import PressureCallbacks, RunGuard
from .optimizer import BatchOptimizer
from .optimizer.control import BatchMeasurement, ControlConfig
from .signals import RunInterrupted, StopOnSignals, signal_name
from .io.sinks import NULL_LINE, JsonlSink, encode_results, error_record, iter_jsonl, open_sink
from .io.sources import as_source
from .stats import BatchRecordWriter, RunStats, bytes_per_item, items_per_second, write_json_atomic

__all__ = ["BatchProcessor", "BatchResult", "NODE_ALIASES"]

logger = logging.getLogger("batchmem")

#: The Node module's option names, accepted as keyword aliases (the only place they are mapped).
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
_ON_ERROR = ("raise", "skip", "retry")
_RETRY_EXHAUSTED = ("skip", "raise")


def _accept_node_aliases(init: Callable[..., None]) -> Callable[..., None]:
    """Rename the Node option names in ``kwargs`` to their Python names before ``init`` sees them."""

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        for alias in NODE_ALIASES.keys() & kwargs.keys():
            name = NODE_ALIASES[alias]
            if name in kwargs:
                raise TypeError(f"BatchProcessor() got both {alias!r} and its alias {name!r}")
            kwargs[name] = kwargs.pop(alias)
        init(self, *args, **kwargs)

    return wrapper


def _sidecar(output: Path, suffix: str) -> Path:
    return output.with_name(output.name + suffix)


class BatchResult:
    """The outcome of :meth:`BatchProcessor.process`.

    ``path`` is the results file (one line per input item, in input order;
    ``null`` for items that failed under ``on_error="skip"``), ``stats`` the
    :class:`RunStats`, ``errors_path`` the error records (or None). Iterating
    reads the results back lazily from disk; ``len()`` is the number of items.
    """

    def __init__(self, path: Path, stats: RunStats, errors_path: Path | None, output_format: str = "jsonl"):
        self.path, self.stats, self.errors_path, self.output_format = path, stats, errors_path, output_format

    def __len__(self) -> int:
        return self.stats.items + self.stats.resumed_from

    def __iter__(self) -> Iterator[Any]:
        if self.output_format == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.path).iter_batches():
                yield from batch.to_pylist()
        else:
            yield from iter_jsonl(self.path)

    def errors(self) -> Iterator[dict[str, Any]]:
        """The error records (index, item repr, error type, message, traceback, attempts)."""
        if self.errors_path and self.errors_path.exists():
            yield from iter_jsonl(self.errors_path)

    def __repr__(self) -> str:
        return f"BatchResult(path={str(self.path)!r}, items={len(self)}, failed={self.stats.failed})"


class BatchProcessor:
    """Process a stream of items in batches sized from live memory use and past runs.

    Parameters (sizes in bytes or size strings, durations in seconds, counts in items):

    batch_size: first batch size (``auto_optimize=True``) or the fixed size.
    auto_optimize: let :class:`BatchOptimizer` resize batches after each one.
    memory_limit: bytes, a size string (``"2GB"``), a fraction of the detected
        limit (``0.5``) or None to detect it (cgroup, rlimit, physical RAM).
    memory_monitoring: sample process-tree RSS after every batch.
    detect_memory_issues: run the heap analyzer on the per-batch baselines.
    process_name: operation name, the key of history and stats.
    n_jobs, backend: joblib execution; ``n_jobs=1`` with no backend runs in
        process; backend None means joblib's :func:`~joblib.parallel_config`
        backend (loky unless configured).
    batched: False: ``fn(item) -> result``; True: ``fn(list) -> list`` of the
        same length (or DataFrame -> DataFrame for chunked pandas sources).
    on_error: ``"raise"`` stops at the first failing item (naming its index),
        ``"skip"`` writes an error record and a ``null`` line and goes on,
        ``"retry"`` retries ``max_retries`` times with exponential backoff (tenacity:
        0.05 s doubling, at most 2 s between attempts), then skips or raises as
        ``retry_exhausted`` (``"skip"``, the default, or ``"raise"``) says.
    progress: show a tqdm bar (batch size, RSS and pressure in its postfix).
    min_batch_size, max_batch_size, target_batch_seconds, memory_target_fraction:
        the optimizer's bounds and targets (see :mod:`batchmem.optimizer.control`).
    force_gc_on_completion: run ``gc.collect()`` once the run ends.
    use_history: warm-start from and record into the per-operation history.
    json_default: fallback for results orjson cannot encode (e.g. ``str``).
    fsync: ``os.fsync`` the output (and error file) after every batch, before the checkpoint
        is replaced (itself fsynced): committed batches survive a power cut, not only a
        ``kill -9``. Default True; costs about one or two disk syncs per batch.
    setup, teardown: per-worker setup, a callable or ``"module:callable"``. ``setup()`` runs
        once per worker process (loky, dask; once in this process for serial and threading
        runs) before that worker's first batch, outside the batch measurement, and its result
        reaches ``fn`` as the keyword argument ``state`` (``fn(item, state=...)``, batched too).
        ``teardown(state)`` runs when the state is released: end of a serial, threading or
        dask run; loky workers keep the state while they live and tear down at exit.
    trace_allocations: trace this process with :mod:`tracemalloc` so leak verdicts name
        the source lines that grew (costs time per allocation; see benchmarks/bench_leaks.py).
    pressure_thresholds: utilization fractions for warning/critical/emergency
        (default 0.80/0.90/0.95); ``adaptive_thresholds=True`` (or a dict of
        ``warning_mb``/``critical_mb``/``emergency_mb``) sets them at the baseline measured
        when the run starts + 50/70/90 MB instead. See :mod:`batchmem.heap.pressure`.
    pressure_max_wait_s: longest pause of dispatch at critical pressure (seconds);
        after it batches go on at ``min_batch_size``.
    gc_max_time_fraction: share of wall time garbage collection between batches may take.
    max_tasks_per_worker: replace the worker processes (loky, multiprocessing) after
        this many batches each; ``recycle_leaking_workers`` also replaces them when a
        leak is flagged in a worker.
    client, scheduler_address: for ``backend="dask"``: the ``distributed.Client`` to use, or
        a scheduler address (``"tcp://host:8786"``) to connect to; either implies
        ``backend="dask"``. Without both, the default client (``distributed.default_client()``)
        is used. Batches are planned against the smallest worker ``memory_limit`` the
        scheduler reports (limit source ``"dask_worker"``) unless ``memory_limit`` is set.

    The Node option names (``batchSize``, ``autoOptimize``, ``memoryMonitoring``,
    ``detectMemoryIssues``, ``processName``, ``forceGCOnCompletion``) are accepted too.

    Raises :class:`~batchmem.errors.ConfigError` for invalid options.
    """

    @_accept_node_aliases
    def __init__(
        self,
        batch_size: int = 100,
        *,
        auto_optimize: bool = True,
        memory_limit: int | str | float | None = None,
        memory_monitoring: bool = True,
        detect_memory_issues: bool = True,
        process_name: str = "default",
        n_jobs: int = 1,
        backend: str | None = None,
        batched: bool = False,
        on_error: str = "raise",
        max_retries: int = 3,
        retry_exhausted: str = "skip",
        progress: bool = True,
        min_batch_size: int = 1,
        max_batch_size: int = 1_000_000,
        target_batch_seconds: tuple[float, float] = (0.2, 2.0),
        memory_target_fraction: float = 0.6,
        force_gc_on_completion: bool = False,
        use_history: bool = True,
        json_default: Callable[[Any], Any] | None = None,
        fsync: bool = True,
        setup: Callable[[], Any] | str | None = None,
        teardown: Callable[[Any], Any] | str | None = None,
        client: Any = None,
        scheduler_address: str | None = None,
        trace_allocations: bool = False,
        pressure_thresholds: PressureThresholds | None = None,
        adaptive_thresholds: bool | dict[str, float] = False,
        pressure_max_wait_s: float = 10.0,
        gc_max_time_fraction: float = 0.05,
        max_tasks_per_worker: int | None = None,
        recycle_leaking_workers: bool = True,
    ):
        if on_error not in _ON_ERROR:
            raise ConfigError(f"on_error: {on_error!r} is not one of {', '.join(_ON_ERROR)}; pick one of them")
        if n_jobs == 0:
            raise ConfigError("n_jobs: 0 workers cannot run anything; use 1 (serial), N workers or -1 (all cores)")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries: {max_retries!r} must be an integer >= 0")
        if retry_exhausted not in _RETRY_EXHAUSTED:
            raise ConfigError(f"retry_exhausted: {retry_exhausted!r} is not one of skip, raise; pick one of them")
        self.control_config = ControlConfig(
            initial_batch_size=min(max(batch_size, min_batch_size), max_batch_size) if isinstance(batch_size, int) else batch_size,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            memory_target_fraction=memory_target_fraction,
            target_batch_seconds=tuple(target_batch_seconds),
        )
        self.batch_size = batch_size
        self.auto_optimize = auto_optimize
        self.memory_limit = memory_limit
        self.memory_monitoring = memory_monitoring
        self.detect_memory_issues = detect_memory_issues
        self.process_name = process_name
        self.n_jobs, self.backend = n_jobs, backend
        self.batched, self.on_error, self.max_retries = batched, on_error, max_retries
        self.retry_exhausted = retry_exhausted
        self.progress = progress
        self.force_gc_on_completion = force_gc_on_completion
        self.use_history = use_history
        self.json_default = json_default
        self.fsync = fsync
        if client is not None or scheduler_address is not None:
            if backend not in (None, "dask"):
                raise ConfigError(f"backend: {backend!r} cannot use a dask client or scheduler_address; use backend='dask'")
            self.backend = backend = "dask"
        if backend == "dask":
            from .backends.dask_backend import import_distributed

            import_distributed()  # fail now, naming the extra to install, if dask.distributed is missing
        self.client, self.scheduler_address = client, scheduler_address
        self.worker_setup = make_worker_setup(setup, teardown)
        self.monitor = MemoryMonitor(memory_limit, thresholds=pressure_thresholds or PressureThresholds())
        # heap analysis, pressure escalation, worker recycling (batchmem.heap.pressure.RunGuard)
        if max_tasks_per_worker is not None and (not isinstance(max_tasks_per_worker, int) or max_tasks_per_worker < 1):
            raise ConfigError(f"max_tasks_per_worker: {max_tasks_per_worker!r} must be an integer >= 1 (batches) or None")
        self.trace_allocations, self.adaptive_thresholds = trace_allocations, adaptive_thresholds
        self.pressure_max_wait_s, self.gc_max_time_fraction = pressure_max_wait_s, gc_max_time_fraction
        self.max_tasks_per_worker, self.recycle_leaking_workers = max_tasks_per_worker, recycle_leaking_workers
        self.pressure_callbacks = PressureCallbacks()
        self.optimizer = BatchOptimizer(
            memory_limit_bytes=self.monitor.limit.bytes,
            config=self.control_config,
            operation=process_name,
            use_history=use_history,
        )
        self._stop = threading.Event()

    # ------------------------------------------------------------------ helpers
    def stop(self) -> None:
        """Ask a running :meth:`process` to stop after the batches in flight (thread-safe)."""
        self._stop.set()

    def on_pressure(self, level: PressureLevel | str, callback: Callable[[], Any], *, cooldown_s: float = 10.0) -> None:
        """Call ``callback()`` after a batch when memory pressure is at ``level`` ("warning",
        "critical", "emergency") or above, at most once per ``cooldown_s`` seconds.

        Emergency callbacks are the cleanup hooks run before an emergency stop.
        See :mod:`batchmem.heap.pressure` for the whole escalation.
        """
        self.pressure_callbacks.register(level, callback, cooldown_s)

    def _fingerprint(self, fn: Callable[..., Any], given: str | Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The fingerprint of what produces the results, and the fields it hashes (to name a change).

        ``given``: a string (used as is) or a mapping of result-affecting settings
        (hashed; :meth:`batchmem.job.Job.fingerprint_fields` passes the job's). By
        default: the function's module:qualname, ``batched`` and ``process_name``.
        """
        if isinstance(given, str):
            return given, {}
        if given is None:
            given = {
                "function": f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', repr(fn))}",
                "batched": self.batched,
                "process_name": self.process_name,
            }
        fields = {str(k): v for k, v in given.items()}
        key = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS, default=str)
        return hashlib.sha256(key).hexdigest()[:16], orjson.loads(key)

    def _open_output(self, output: str | os.PathLike[str] | None, overwrite: bool, resume: bool) -> Path:
        """The output path (a temporary spool file when ``output`` is None), checked before anything is written."""
        if output is None:
            fd, name = tempfile.mkstemp(prefix=f"batchmem-{self.process_name}-", suffix=".jsonl")
            os.close(fd)
            return Path(name)
        path = Path(output)
        if not path.parent.is_dir():
            raise ConfigError(f"output: folder {str(path.parent)!r} does not exist; create it or choose another path")
        if path.exists() and not (overwrite or resume):
            raise OutputExistsError(f"output: {str(path)!r} exists; pass overwrite=True (overwrite: true) or resume")
        return path

    # ------------------------------------------------------------------ main loop
    def process(
        self,
        items: Iterable[Any],
        fn: Callable[..., Any],
        output: str | os.PathLike[str] | None = None,
        *,
        output_format: str | None = None,
        errors_output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        resume: bool | str = False,
        fingerprint: str | Mapping[str, Any] | None = None,
    ) -> BatchResult:
        """Run ``fn`` over ``items`` in adaptive batches and stream the results to ``output``.

        ``items`` is any iterable (consumed lazily) or a :class:`~batchmem.io.sources.BatchSource`
        such as :func:`batchmem.read_csv`. ``output`` is a path (``.jsonl``, or
        ``.parquet`` / ``output_format="parquet"``) or None for a temporary
        spool file. Stats go to ``<output>.stats.json``, per-batch records to
        ``<output>.batches.jsonl``, error records to ``errors_output``
        (default ``<output>.errors.jsonl``, created only when an item fails).

        ``resume=True`` continues an output written before (a crash, ``kill -9``,
        a signal, an error): every file is cut back to the checkpoint (``<output>.ckpt.json``),
        the committed items are skipped in ``items`` without being run again, and
        new results are appended, so the finished output holds one line per item.
        ``fingerprint`` (a string, or a mapping of the settings that affect the
        results, such as a job's function, source and ``batched``) is stored in
        the checkpoint; resuming with a different one raises
        :class:`~batchmem.errors.ResumeMismatchError` naming what changed, unless
        ``resume="force"``.

        On the main thread SIGINT/SIGTERM stop the run cleanly (see
        :mod:`batchmem.signals`): batches in flight are committed, stats say
        ``"interrupted"``, and :class:`~batchmem.signals.RunInterrupted` (a
        KeyboardInterrupt) is raised.

        Raises :class:`~batchmem.errors.OutputExistsError` if ``output`` exists
        and neither ``overwrite`` nor ``resume`` is set,
        :class:`~batchmem.errors.ItemFailedError` under ``on_error="raise"``,
        :class:`~batchmem.errors.SerializationError` for a result that cannot be
        encoded, :class:`~batchmem.errors.OutputWriteError` when a write fails
        (disk full). Whatever was committed before an error stays on disk with a
        matching checkpoint.
        """
        if resume not in (False, True, "force"):
            raise ConfigError(f"resume: {resume!r} must be False, True or 'force'")
        self._stop.clear()
        path = self._open_output(output, overwrite, resume)
        fmt = output_format or ("parquet" if path.suffix == ".parquet" else "jsonl")
        if fmt not in ("jsonl", "parquet"):
            raise ConfigError(f"output.format: {fmt!r} is not supported; use jsonl or parquet")
        errors_path = Path(errors_output) if errors_output else _sidecar(path, ".errors.jsonl")
        ckpt_path = checkpoint_path(path)
        fingerprint, fingerprint_fields = self._fingerprint(fn, fingerprint)
        source = as_source(items)

        opts = RunOptions(self.batched, self.on_error, self.max_retries, retry_exhausted=self.retry_exhausted,
                          encode=(fmt == "jsonl"), json_default=self.json_default,
                          setup=self.worker_setup, peak_by_sampling=self.n_jobs != 1 and self.backend == "threading")
        # The executor first: a cluster that cannot be reached must fail before any file is touched.
        dask_options = {"client": self.client, "scheduler_address": self.scheduler_address} if self.backend == "dask" else {}
        executor = make_executor(fn, opts, self.n_jobs, self.backend, **dask_options)

        try:
            ckpt = Checkpoint(fingerprint=fingerprint, fingerprint_fields=fingerprint_fields)
            mode = "wb"
            if resume and path.exists():
                ckpt = self._prepare_resume(path, errors_path, ckpt_path, ckpt, fmt, force=resume == "force")
                mode = "ab"
                if ckpt.source_position:
                    source.skip(ckpt.source_position)
            else:
                # A fresh output: replace any old checkpoint before the output is truncated,
                # so a crash right after cannot leave an old checkpoint describing a new file.
                _save_checkpoint(ckpt, ckpt_path, self.fsync)
            stats = RunStats(
                process_name=self.process_name,
                memory_limit_bytes=self.monitor.limit.bytes,
                limit_source=self.monitor.limit.source,
                n_jobs=self.n_jobs,
                backend=self.backend or ("serial" if self.n_jobs == 1 else "loky"),
                resumed_from=ckpt.items,
                output_path=str(path),
                stats_path=str(_sidecar(path, ".stats.json")),
                batches_path=str(_sidecar(path, ".batches.jsonl")),
                started_at=time.time(),
            )
            sink = open_sink(path, fmt, mode=mode, fsync=self.fsync)
            records = BatchRecordWriter(stats.batches_path, mode=mode)
            run = _Run(self, source, stats, ckpt, ckpt_path, sink, records, errors_path, opts, fn, executor)
        except BaseException:
            executor.close()  # e.g. a dask client made from scheduler_address
            raise
        with StopOnSignals(self.stop) as signals:
            try:
                run.loop()
                if signals.signum is not None:
                    stats.status, stats.stop_reason = "interrupted", f"{signal_name(signals.signum)} received; resume=True continues"
                else:
                    stats.status = "stopped" if run.stopped else "completed"
            except KeyboardInterrupt:
                stats.status = "interrupted"
                raise
            except BaseException:
                stats.status = "failed"
                raise
            finally:
                signals.finishing()
                run.finish()
        if signals.signum is not None:
            raise RunInterrupted(signals.signum, ckpt.items, str(path))
        return BatchResult(path, stats, errors_path if stats.failed or ckpt.failed else None, fmt)

    def _prepare_resume(self, path: Path, errors_path: Path, ckpt_path: Path, new: Checkpoint, fmt: str, *, force: bool = False) -> Checkpoint:
        """Load the checkpoint and cut every file back to it (torn tails are dropped).

        ``new`` carries this run's fingerprint. A different stored fingerprint raises
        :class:`ResumeMismatchError` naming the changed fields, unless ``force``. An output
        shorter than the checkpoint says (bytes lost without fsync) cannot be resumed.
        """
        if fmt == "parquet":
            raise ConfigError("resume: Parquet output cannot be resumed; use output.format jsonl or overwrite")
        ckpt = Checkpoint.load(ckpt_path) or Checkpoint(fingerprint=new.fingerprint, fingerprint_fields=new.fingerprint_fields)
        if ckpt.fingerprint and ckpt.fingerprint != new.fingerprint:
            old_f, new_f = ckpt.fingerprint_fields, new.fingerprint_fields
            changed = [k for k in sorted(old_f.keys() | new_f.keys()) if old_f.get(k) != new_f.get(k)]
            what = ", ".join(f"{k} ({old_f.get(k)!r} then, {new_f.get(k)!r} now)" for k in changed[:3]) or "function, source or batching"
            if not force:
                raise ResumeMismatchError(
                    f"resume: {str(path)!r} was written by a different job: changed {what}; resuming would mix "
                    "results; undo the change, set overwrite to start again, or force it (--force-resume, resume='force')"
                )
            logger.warning("resume forced although the job changed: %s", what)
        ckpt.fingerprint, ckpt.fingerprint_fields = new.fingerprint, new.fingerprint_fields
        if not ckpt.source_position and ckpt.items:  # a checkpoint written before source_position existed
            ckpt.source_position = ckpt.items
        size = _file_size(path)
        if size < ckpt.output_bytes:
            raise ConfigError(
                f"resume: {str(path)!r} holds {size} bytes but its checkpoint says {ckpt.output_bytes} were committed "
                "(written without fsync before a crash?); it cannot be resumed: set overwrite to start again"
            )
        for p, keep in ((path, ckpt.output_bytes), (errors_path, ckpt.errors_bytes), (_sidecar(path, ".batches.jsonl"), ckpt.batches_bytes)):
            if p.exists() and p.stat().st_size > keep:
                logger.info("resume: cutting %d bytes of torn or uncommitted tail from %s", p.stat().st_size - keep, p)
                os.truncate(p, keep)
        logger.info("resuming %s after %d committed items", path, ckpt.items)
        return ckpt


class _Run:
    """State of one :meth:`BatchProcessor.process` call (kept off the processor so it can be reused)."""

    def __init__(self, proc: BatchProcessor, source: Any, stats: RunStats, ckpt: Checkpoint, ckpt_path: Path,
                 sink: Any, records: BatchRecordWriter, errors_path: Path, opts: RunOptions, fn: Callable[..., Any],
                 executor: Any):
        self.proc, self.source, self.stats, self.ckpt, self.ckpt_path = proc, source, stats, ckpt, ckpt_path
        self.sink, self.records, self.errors_path, self.opts, self.fn = sink, records, errors_path, opts, fn
        self.error_sink: JsonlSink | None = None
        self.lock = threading.Lock()
        self.stopped = False
        self.executor = executor
        self.optimizer = proc.optimizer
        if self.executor.memory_limit is not None:  # dask: plan against the workers' limit, not this machine's
            limit = resolve_memory_limit(proc.memory_limit, detected=self.executor.memory_limit)
            self.optimizer.memory_limit_bytes = limit.bytes
            stats.memory_limit_bytes, stats.limit_source = limit.bytes, limit.source
        if proc.backend == "dask":
            stats.n_jobs = self.executor.in_flight  # worker threads of the cluster
        self.last_sample = proc.monitor.sample()
        self.executor.max_tasks_per_worker = proc.max_tasks_per_worker  # worker recycling (process backends)
        self.guard = RunGuard.from_processor(proc, self.executor, stats, self.last_sample)
        baseline, _, in_flight = self.executor.memory_plan(None, self.last_sample.rss_bytes, self.last_sample.pressure, proc.monitor.thresholds)
        self.optimizer.start_run(proc.process_name, baseline_bytes=baseline, in_flight=in_flight)
        self.fixed_size = None if proc.auto_optimize else proc.batch_size
        self.asked: dict[int, int] = {}  # input index of a batch's first item -> size asked when it was cut (items)
        self.peak_bytes_sum = 0
        self.t0 = time.perf_counter()
        self.bar = self._progress_bar()

    def _progress_bar(self) -> Any:
        from tqdm.auto import tqdm

        total = self.source.total
        if total is not None:
            total -= self.stats.resumed_from
        return tqdm(total=total, disable=not self.proc.progress, unit="item", desc=self.proc.process_name, dynamic_ncols=True)

    def _next_size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        with self.lock:
            return self.optimizer.next_batch_size()

    def _balanced(self, size: int, start: int) -> int:
        """Cap ``size`` so the tail of a sized source is shared by every worker.

        With ``W`` batches in flight and ``R`` items left, no batch takes more than
        ``ceil(R / (2 W))`` items, so the last batches shrink geometrically instead of
        one worker running a full-size last batch while the others idle (measured in
        benchmarks/bench_core.py parallel: speedup 1.71 -> 1.81). Serial runs, fixed
        batch sizes (``auto_optimize=False``) and sources of unknown length are not capped.
        """
        total, width = self.source.total, self.executor.in_flight
        if total is None or width <= 1 or self.fixed_size is not None:
            return size
        left = total - start
        return max(1, min(size, -(-left // (2 * width))))

    def tasks(self) -> Iterator[BatchTask]:
        """Cut batches lazily, asking the optimizer for each size just before the cut."""
        index = self.ckpt.batches
        start = self.ckpt.items
        while not self.proc._stop.is_set():
            asked = self.guard.before_dispatch(self._balanced(self._next_size(), start))  # waits while pressure is critical
            if self.proc._stop.is_set():
                return
            batch = self.source.take(asked)
            if batch is None or len(batch) == 0:
                return
            self.asked[start] = asked
            yield BatchTask(index, start, batch)
            index += 1
            start += len(batch)

    def loop(self) -> None:
        pending: dict[int, BatchTask] = {}

        def remember(tasks: Iterator[BatchTask]) -> Iterator[BatchTask]:
            for t in tasks:
                pending[t.start] = t
                yield t

        for outcome in self.executor.map(remember(self.tasks())):
            task = pending.pop(outcome.start)
            for final in self._resolve(task, outcome):
                self._commit(final)
        self.stopped = self.proc._stop.is_set()

    def _resolve(self, task: BatchTask, outcome: BatchOutcome) -> Iterator[BatchOutcome]:
        """Yield final outcomes in order, halving batches that hit MemoryError (or a failing batched call)."""
        if not outcome.split:
            yield outcome
            return
        if outcome.split == "memory":
            self.stats.memory_errors += 1
            with self.lock:
                self.optimizer.on_memory_error(len(task))
            logger.warning("MemoryError in a batch of %d items (items %d..); retrying it in halves", len(task), task.start)
        elif outcome.split == "worker_died":
            if "SIGKILL" in outcome.worker_exit:  # most likely the kernel's OOM killer: plan smaller batches
                with self.lock:
                    self.optimizer.on_memory_error(len(task))
            if len(task) > 1:
                logger.warning("worker died (%s) running a batch of %d items (items %d..); retrying it in halves in fresh workers",
                               outcome.worker_exit, len(task), task.start)
        if len(task) == 1:  # a single item that raises MemoryError (or kills its worker) on its own: it fails
            if outcome.split == "worker_died":
                err: BaseException = WorkerDiedError(
                    f"worker died ({outcome.worker_exit.replace(' (alone)', '')}) while running item {task.start} on its own "
                    "(os._exit, a signal such as the OOM killer's SIGKILL, or a crash in a C extension)"
                )
                logger.warning("item %d killed its worker on its own (%s); recorded as failed", task.start, outcome.worker_exit)
            else:
                err = MemoryError(f"item {task.start} raised MemoryError on its own")
            out = BatchOutcome(task.index, task.start, 1, duration_s=outcome.duration_s)
            if self.opts.on_error == "raise":
                out.error = (task.start, err)
            else:
                out.failed, out.payload = 1, NULL_LINE
                out.results = [None]
                out.error_records.append(error_record(task.start, task.items[0], err, 1))
            yield out
            return
        halves = task.halves()
        isolated = getattr(self.executor, "run_isolated", None)
        if outcome.split == "worker_died" and isolated is not None:  # each half alone in a worker: a death names its half
            subs = [isolated(h) for h in halves]
        else:
            subs = self.executor.run_now(list(halves))
        for half, sub in zip(halves, subs):
            yield from self._resolve(half, sub)

    def _commit(self, o: BatchOutcome) -> None:
        """Write one finished batch, then the checkpoint; feed the measurement back."""
        if o.error is not None:
            index, exc = o.error
            if self.opts.on_error == "retry":
                policy = (f" after {1 + self.opts.max_retries} attempts; on_error='retry' with retry_exhausted='raise' stops the run "
                          "(use retry_exhausted='skip' to record failures and go on)")
            else:
                policy = "; on_error='raise' stops the run (use on_error='skip' to record failures and go on)"
            raise ItemFailedError(f"item {index} failed: {type(exc).__name__}: {exc}{policy}", index) from exc
        with _writing("output", self.sink.path):
            if self.opts.encode:
                self.sink.write(o.payload)
            else:
                self.sink.write_batch(o.results, o.start)
            self.sink.flush()
        # Drop the written results now: the loop variable keeps this outcome alive while the
        # next batch runs, which held two batches of results at once (streaming benchmark).
        o.payload, o.results = b"", None
        if o.error_records:
            with _writing("errors", self.errors_path):
                if self.error_sink is None:
                    self.error_sink = JsonlSink(self.errors_path, mode="ab" if self.ckpt.errors_bytes else "wb", fsync=self.proc.fsync)
                self.error_sink.write(encode_results(o.error_records, o.start, str))
                self.error_sink.flush()
        sample = self.proc.monitor.sample() if self.proc.memory_monitoring else None
        rss_now = sample.rss_bytes if sample else current_rss_bytes()
        pressure = sample.pressure if sample else PressureLevel.NORMAL
        st = self.stats
        self.records.write({
            "index": st.batches, "start_time": time.time() - o.duration_s, "items": o.size,
            "batch_size": self.asked.pop(o.start, o.size), "duration_s": o.duration_s, "peak_bytes": o.peak_bytes,
            "rss_after_bytes": rss_now, "pressure": pressure.label, "failed": o.failed,
            "gc_collections": o.gc_collections, "pid": o.pid,
        })
        with _writing("batch records", self.records.path):
            self.records.flush()
        ck = self.ckpt
        ck.items += o.size
        ck.source_position = o.start + o.size
        ck.batches += 1
        ck.failed += o.failed
        ck.output_bytes = self.sink.size_bytes if self.opts.encode else 0
        ck.errors_bytes = self.error_sink.size_bytes if self.error_sink else ck.errors_bytes
        ck.batches_bytes = _file_size(self.records.path)
        _save_checkpoint(ck, self.ckpt_path, self.proc.fsync)

        st.items += o.size
        st.failed += o.failed
        st.batches += 1
        st.batch_sizes.append(o.size)
        st.gc_collections += o.gc_collections
        self.peak_bytes_sum += o.peak_bytes
        base = self.last_sample.rss_bytes if self.last_sample else o.start_rss_bytes
        st.peak_rss_bytes = max(st.peak_rss_bytes, base + o.peak_bytes, rss_now)
        if sample:
            self.last_sample = sample
        plan_bytes, plan_pressure, plan_in_flight = self.executor.memory_plan(o, rss_now, pressure, self.proc.monitor.thresholds)
        with self.lock:
            self.optimizer.observe(
                BatchMeasurement(size=o.size, duration_s=o.duration_s, peak_bytes=o.peak_bytes, failed=o.failed),
                baseline_bytes=plan_bytes,
                pressure=plan_pressure,
                in_flight=plan_in_flight,
            )
        self.guard.after_batch(o, sample, rss_now)  # leak analysis, GC, pressure escalation (may stop the run)
        self.bar.update(o.size)
        if self.proc.progress:
            from tqdm import tqdm

            self.bar.set_postfix_str(
                f"batch={o.size} rss={tqdm.format_sizeof(rss_now, 'B', 1024)} {pressure.label}", refresh=False
            )

    def finish(self) -> None:
        """Close files, write stats (also after an error) and record the run in history."""
        st = self.stats
        self.bar.close()
        self.executor.close()
        st.worker_deaths = getattr(self.executor, "worker_deaths", 0)
        for f in (self.sink, self.records, self.error_sink):
            if f is not None:
                try:
                    f.close()
                except OSError as exc:  # after a failed write: the checkpoint already stands; do not hide the first error
                    logger.debug("closing %s failed: %s (the checkpoint still matches what was committed)", getattr(f, "path", f), exc)
        st.duration_s = time.perf_counter() - self.t0
        st.finished_at = time.time()
        st.items_per_s = items_per_second(st.items, st.duration_s)
        st.bytes_per_item = bytes_per_item(self.peak_bytes_sum, st.items)
        if st.batches:
            st.learned_batch_size = self.fixed_size if self.fixed_size is not None else self.optimizer.learned_batch_size()
        if st.failed or self.ckpt.failed:
            st.errors_path = str(self.errors_path)
        if st.status == "completed":
            self.ckpt.complete = True
            _save_checkpoint(self.ckpt, self.ckpt_path, self.proc.fsync)
        if self.proc.force_gc_on_completion:
            gc.collect()
        self.guard.finish()  # issues + GC figures into the stats; GC hooks and tracing removed
        try:
            write_json_atomic(st.stats_path, st.to_dict())
        except OSError as exc:  # e.g. the disk is full: the run's own error (if any) is the one to report
            logger.warning("writing the stats %s failed: %s", st.stats_path, exc)
        if self.proc.use_history and st.items:  # fixed-size runs are recorded too: their costs are measured
            self.optimizer.finish_run({
                "learned_batch_size": st.learned_batch_size,
                "items": st.items, "duration_s": st.duration_s, "items_per_s": st.items_per_s,
                "peak_rss_bytes": st.peak_rss_bytes, "bytes_per_item": st.bytes_per_item,
                "batches": st.batches, "failed": st.failed, "leaks": sum(1 for i in st.issues if i.get("kind") == "leak"),
                "finished_at": st.finished_at,
            })


@contextlib.contextmanager
def _writing(what: str, path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``what`` (output, errors, ...) into a one-line :class:`OutputWriteError`."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
        reason = f"{exc.strerror or exc}" + (f" ({code})" if code else "")
        raise OutputWriteError(
            f"{what}: writing {path} failed: {reason}; the checkpoint still matches the committed output: "
            "free space (or fix the device) and run again with resume (batchmem run --resume)",
            exc.errno,
        ) from exc


def _save_checkpoint(ckpt: Checkpoint, path: Path, fsync: bool) -> None:
    """Replace the checkpoint atomically; a failure is an :class:`OutputWriteError` (the old checkpoint stays)."""
    with _writing("checkpoint", path):
        ckpt.save(path, fsync=fsync)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
