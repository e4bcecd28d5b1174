"""BatchProcessor: the public face of a run.

It holds the options (:mod:`batchmem.options`), the memory monitor and the
optimizer, and builds each run: the output files (:mod:`batchmem.io.output`),
the executor (:mod:`batchmem.backends`) and the run loop (:mod:`batchmem.run`),
which cuts batches, runs them and commits them in input order.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .backends import Executor, Planning, RunOptions, check_backend, make_executor
from .backends.fit import fit_workers
from .backends.worker_setup import make_worker_setup
from .errors import RESUME_COMMAND, RunStopped
from .heap.fit import check_fits
from .heap.monitor import MemoryMonitor, PressureLevel, current_rss_bytes
from .heap.pressure import PressureCallbacks
from .io.checkpoint import fingerprint
from .io.formats import OutputFormat, resolve_format
from .io.output import OutputLock, RunFiles, check_output, sidecar
from .io.resume import ResumeDecision, check_resume_mode, decide_resume, prepare_resume
from .io.sources import as_source
from .optimizer import BatchOptimizer
from .options import NODE_ALIASES, Analysis, Batching, ErrorPolicy, Execution, Output, Pressure, group_options
from .result import BatchResult
from .run import Run
from .signals import RunInterrupted, StopOnSignals, signal_name
from .stats import RunStats

__all__ = ["BatchProcessor", "BatchResult", "NODE_ALIASES"]

logger = logging.getLogger("batchmem")


class BatchProcessor:
    """Process a stream of items in batches sized from live memory use and past runs.

    Options come in typed groups (:mod:`batchmem.options`), each documented there with its
    units: :class:`~batchmem.options.Batching`, :class:`~batchmem.options.Execution`,
    :class:`~batchmem.options.ErrorPolicy`, :class:`~batchmem.options.Pressure`,
    :class:`~batchmem.options.Analysis`, :class:`~batchmem.options.Output`. Any of their fields
    can also be passed as a flat keyword (``BatchProcessor(n_jobs=2, on_error="skip")``), and the
    Node.js names (``batchSize``, ``autoOptimize``, ``memoryMonitoring``, ``detectMemoryIssues``,
    ``processName``, ``forceGCOnCompletion``) are accepted too.

    ``batch_size`` (items) is the first batch size, or the fixed size with ``auto_optimize=False``;
    ``process_name`` names the operation (the key of history and stats).

    Raises :class:`~batchmem.errors.ConfigError` for invalid options, :class:`TypeError` for an
    unknown keyword.
    """

    def __init__(
        self,
        batch_size: int | None = None,
        *,
        process_name: str = "default",
        batching: Batching | None = None,
        execution: Execution | None = None,
        errors: ErrorPolicy | None = None,
        pressure: Pressure | None = None,
        analysis: Analysis | None = None,
        output: Output | None = None,
        **options: Any,
    ):
        if batch_size is not None:
            options["batch_size"] = batch_size
        groups = {
            "batching": batching,
            "execution": execution,
            "errors": errors,
            "pressure": pressure,
            "analysis": analysis,
            "output": output,
        }
        self.config = group_options(groups, options, process_name=process_name)
        check_backend(self.config.execution.backend)  # e.g. dask: fail now, naming the extra, if it is missing
        ex = self.config.execution
        self.worker_setup = make_worker_setup(ex.setup, ex.teardown)
        p = self.config.pressure
        self.monitor = MemoryMonitor(p.memory_limit, thresholds=p.pressure_thresholds)
        self.pressure_callbacks = PressureCallbacks()
        b = self.config.batching
        self.optimizer = BatchOptimizer(
            memory_limit_bytes=self.monitor.limit.bytes,
            config=b.control_config(),
            operation=self.config.process_name,
            use_history=b.use_history,
        )
        self._stop = threading.Event()
        self._run: Run | None = None
        self._kept: tuple[Callable[..., Any], bool, Executor] | None = None  # plan(keep_workers=True)

    @property
    def process_name(self) -> str:
        """The operation name: the key of history and stats."""
        return self.config.process_name

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

    def _fingerprint(
        self, fn: Callable[..., Any], given: str | Mapping[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
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
                "batched": self.config.batching.batched,
                "process_name": self.process_name,
            }
        return fingerprint(dict(given))

    def plan(
        self,
        items: Iterable[Any],
        fn: Callable[..., Any],
        output: str | os.PathLike[str] | None = None,
        *,
        output_format: str | None = None,
        keep_workers: bool = False,
    ) -> Any:
        """Forecast a run of ``fn`` over ``items`` before it runs: a :class:`batchmem.plan.Plan` (time,
        peak bytes, recommended and minimum memory limits, whether the heaviest item fits).

        Runs ``fn`` on a few sample batches in this processor's backend and setup, writes no output and
        records the figures in the operation's history (unless ``use_history=False``). A generator is
        consumed to weigh it (the plan's notes say so). ``output``/``output_format``: where and how the
        run will write (a batch's commit is timed in a temporary folder beside it; the output itself is
        not touched). ``keep_workers``: the executor the sample ran in (its workers started, their setup
        done) is kept for the next :meth:`process` of the same ``fn``, which then does not start its own
        (``batchmem run --plan`` does this). See :mod:`batchmem.plan`.
        """
        from .plan import make_plan

        folder = Path(output).parent if output is not None and Path(output).parent.is_dir() else None
        encode = resolve_format(Path(output), output_format).encodes if output is not None else True
        self._release_kept()

        def keep(executor: Executor) -> None:
            self._kept = (fn, encode, executor)

        return make_plan(
            self.config,
            self.monitor,
            lambda: self._executor(fn, encode=encode),
            items,
            output_dir=folder,
            release=keep if keep_workers else None,
        )

    def _take_kept(self, fn: Callable[..., Any], encode: bool) -> Executor | None:
        """The executor a :meth:`plan` kept, if it ran this ``fn`` with this encoding (else it is closed)."""
        kept, self._kept = self._kept, None
        if kept is not None and kept[0] is fn and kept[1] == encode:
            return kept[2]
        if kept is not None:
            kept[2].close()
        return None

    def _release_kept(self) -> None:
        if self._kept is not None:
            self._kept[2].close()
            self._kept = None

    def _spool(self) -> Path:
        """A private temporary folder for a run without ``output`` (see :class:`BatchResult`)."""
        return Path(tempfile.mkdtemp(prefix=f"batchmem-{self.process_name}-"))

    def process(
        self,
        items: Iterable[Any],
        fn: Callable[..., Any],
        output: str | os.PathLike[str] | None = None,
        *,
        output_format: str | None = None,
        errors_output: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        resume: bool | str | ResumeDecision = False,
        fingerprint: str | Mapping[str, Any] | None = None,
    ) -> BatchResult:
        """Run ``fn`` over ``items`` in adaptive batches and stream the results to ``output``.

        ``items``: any iterable (consumed lazily) or a :class:`~batchmem.io.sources.BatchSource` such as
        :func:`batchmem.read_csv`. ``output``: a path (folders are created), or None for a temporary spool
        (see :class:`BatchResult`); ``output_format`` names a format of :mod:`batchmem.io.formats`, else the
        suffix chooses (``.parquet``/``.pq``: Parquet; otherwise JSONL). Beside it: ``<output>.stats.json``,
        ``<output>.batches.jsonl`` and, when an item fails, ``errors_output`` (``<output>.errors.jsonl``).

        ``resume``: True continues an output written before (files cut back to ``<output>.ckpt.json``,
        committed items skipped); on a finished output it touches nothing (``result.already_complete``);
        ``"auto"`` continues only an unfinished run of the same ``fingerprint`` (the settings that decide
        the results); a different fingerprint raises :class:`~batchmem.errors.ResumeMismatchError` unless
        ``"force"``. A :class:`~batchmem.io.resume.ResumeDecision` made for this output
        (:func:`~batchmem.io.resume.decide_resume`) is used as it is, ``fingerprint`` then unused.
        SIGINT/SIGTERM on the main thread stop cleanly (:mod:`batchmem.signals`) and raise
        :class:`~batchmem.signals.RunInterrupted`.

        Raises :class:`~batchmem.errors.OutputExistsError` (output exists, no ``overwrite``/``resume``),
        :class:`~batchmem.errors.OutputLockedError` (another run writes it),
        :class:`~batchmem.errors.ItemFailedError` (``on_error="raise"``),
        :class:`~batchmem.errors.SerializationError`, :class:`~batchmem.errors.OutputWriteError`; what was
        committed stays on disk with a matching checkpoint (a run without ``output`` removes its spool).
        """
        if not isinstance(resume, ResumeDecision):
            check_resume_mode(resume)  # before a spool folder is made
        self._stop.clear()
        spool = self._spool() if output is None else None
        try:
            return self._process_into(
                spool, items, fn, output, output_format, errors_output, overwrite, resume, fingerprint
            )
        except BaseException:
            self._release_kept()  # e.g. refused before it started: the plan's workers go too
            if spool is not None:  # a run without output that failed: nothing can reach its spool any more
                shutil.rmtree(spool, ignore_errors=True)
            raise

    def _process_into(
        self,
        spool: Path | None,
        items: Iterable[Any],
        fn: Callable[..., Any],
        output: str | os.PathLike[str] | None,
        output_format: str | None,
        errors_output: str | os.PathLike[str] | None,
        overwrite: bool,
        resume: bool | str | ResumeDecision,
        fingerprint: str | Mapping[str, Any] | None,
    ) -> BatchResult:
        """:meth:`process` once its arguments are checked and its spool folder (if any) made."""
        path = spool / "results.jsonl" if spool else Path(output)
        fmt = resolve_format(path, output_format)
        errors_path = Path(errors_output) if errors_output else sidecar(path, ".errors.jsonl")
        if not isinstance(resume, ResumeDecision):
            resume = decide_resume(path, self._fingerprint(fn, fingerprint), resume)
        if resume.complete:
            return self._complete_result(path, errors_path, fmt)
        check_output(path, overwrite=overwrite, resume=bool(resume.resume))
        from .plan.guard import refuse_if_unfit

        refuse_if_unfit(self.config, self.monitor.limit, items)  # no batch runs if history says it cannot fit
        run = self._start(as_source(items), fn, (path, errors_path, fmt), resume)
        self._execute(run)
        failed = run.stats.failed or run.files.ckpt.failed
        result = BatchResult(path, run.stats, errors_path if failed else None, fmt, spool=spool)
        result.stop = run.stop
        return result

    def _start(
        self,
        source: Any,
        fn: Callable[..., Any],
        spec: tuple[Path, Path, OutputFormat],
        decision: ResumeDecision,
    ) -> Run:
        """The executor, the output lock, the files (cut back to the checkpoint on resume) and the run loop.

        The executor comes first: a cluster that cannot be reached fails before any file is touched.
        """
        path, errors_path, fmt = spec
        executor = self._take_kept(fn, fmt.encodes) or self._executor(fn, encode=fmt.encodes)
        lock = None
        try:
            if executor.local_memory:  # dask workers have limits of their own
                self._fit(source, executor)
            lock = OutputLock(path)
            append = bool(decision.resume) and path.exists()
            ckpt = decision.fresh_checkpoint()
            if append:
                ckpt = prepare_resume(path, errors_path, decision, fmt)
                if ckpt.source_position:
                    source.skip(ckpt.source_position)
            files = RunFiles(path, errors_path, fmt, ckpt, append=append, fsync=self.config.output.fsync, lock=lock)
            return Run(
                self.config,
                source=source,
                executor=executor,
                files=files,
                stats=self._new_stats(files, executor),
                optimizer=self.optimizer,
                monitor=self.monitor,
                callbacks=self.pressure_callbacks,
                stop_requested=self._stop.is_set,
                request_stop=self.stop,
            )
        except BaseException:
            executor.close()  # e.g. a dask client made from scheduler_address
            if lock is not None:
                lock.release()
            raise

    def _fit(self, source: Any, executor: Any) -> None:
        """The up-front checks: the run fits with one worker process (or in this process) at all, then
        no more workers start than fit once each one's measured baseline is paid (:mod:`.backends.fit`)."""
        processes = executor.processes
        strict = self.config.execution.n_jobs_strict
        self.check_fits(source, workers=1 if processes else 0)  # more workers: measured below
        if processes and executor.in_flight > 1:
            c = self.config
            executor.fit_note = (
                fit_workers(
                    executor,
                    limit_bytes=self.monitor.limit.bytes,
                    target_fraction=c.batching.memory_target_fraction,
                    aim_s=c.batching.control_config().aim_s,
                    batched=c.batching.batched,
                    strict=strict,
                )
                or ""
            )

    def check_fits(self, source: Any = None, *, workers: int = 0, run_setup: bool = True) -> None:
        """Before anything is dispatched or written: raise
        :class:`~batchmem.errors.LimitTooSmallError` when this process, holding the function, the setup's
        state (in-process runs: ``workers=0``, unless not ``run_setup``) and the first item of ``source``,
        leaves the batches no room under the memory target (:func:`batchmem.heap.fit.check_fits`;
        ``workers`` worker processes are counted as holding as much each)."""
        if run_setup and not workers and self.worker_setup is not None:
            self.worker_setup.state()  # the setup runs now (once per process), so its state is counted
        if source is not None:
            source.peek()
        limit = self.monitor.limit
        check_fits(
            current_rss_bytes(),
            workers,
            limit.bytes,
            self.config.batching.memory_target_fraction,
            limit_source=limit.source,
        )

    def _execute(self, run: Run) -> None:
        """Run the loop under SIGINT/SIGTERM handling; the stats get their status; finish always runs.

        Raises :class:`~batchmem.signals.RunInterrupted` after a signal (the checkpoint stands).
        """
        stats = run.stats
        with StopOnSignals(self._stop_from_signal(run)) as signals:
            try:
                run.loop()
                if signals.signum is not None:
                    stats.status = "interrupted"
                    stats.stop_reason = (
                        f"{signal_name(signals.signum)} received; continue with resume=True ({RESUME_COMMAND})"
                    )
                elif run.stopped:
                    run.stop = _stopped(run)
                else:
                    stats.status = "completed"
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
            raise RunInterrupted(signals.signum, run.files.ckpt.items, str(run.files.path))

    def _complete_result(self, path: Path, errors_path: Path, fmt: OutputFormat) -> BatchResult:
        """The result of a finished output, from its stats file, touching no file."""
        stats_path = sidecar(path, ".stats.json")
        stats = RunStats.load(stats_path) if stats_path.exists() else RunStats(process_name=self.process_name)
        return BatchResult(path, stats, errors_path if errors_path.exists() else None, fmt, already_complete=True)

    def _stop_from_signal(self, run: Run) -> Callable[[], None]:
        def stop() -> None:
            self.stop()
            run.stop_with_grace()

        return stop

    def _executor(self, fn: Callable[..., Any], *, encode: bool) -> Executor:
        c = self.config
        opts = RunOptions(
            c.batching.batched,
            c.errors.on_error,
            c.errors.max_retries,
            retry_exhausted=c.errors.retry_exhausted,
            encode=encode,
            json_default=c.output.json_default,
            setup=self.worker_setup,
            item_timeout=c.execution.item_timeout,
        )
        target = c.batching.memory_target_fraction * self.monitor.limit.bytes
        planning = Planning(
            memory_room=lambda: target - self.monitor.used_bytes(),
            aim_s=c.batching.control_config().aim_s,
            last_workers=lambda: (self.optimizer.last_run(self.process_name) or {}).get("auto_workers"),
        )
        return make_executor(fn, opts, c.execution, planning)

    def _new_stats(self, files: RunFiles, executor: Executor) -> RunStats:
        info = executor.describe()
        return RunStats(
            process_name=self.process_name,
            memory_limit_bytes=self.monitor.limit.bytes,
            limit_source=self.monitor.limit.source,
            n_jobs=info.n_jobs,
            backend=info.backend,
            resumed_from=files.ckpt.items,
            parts=_earlier_parts(files),
            output_path=str(files.path),
            stats_path=str(files.stats_path),
            batches_path=str(files.batches_path),
            started_at=time.time(),
        )


def _earlier_parts(files: RunFiles) -> list[dict[str, Any]]:
    """The parts of a resumed output before this run, from its stats file. Items the checkpoint holds
    beyond them (a run that died before writing its stats) make one part of status "unrecorded"."""
    ckpt = files.ckpt
    if not ckpt.items:
        return []
    try:
        old = RunStats.load(files.stats_path)
    except (OSError, ValueError, TypeError):
        old = None
    parts = (list(old.parts) or [old.part_record()]) if old is not None else []
    items, failed = sum(p["items"] for p in parts), sum(p["failed"] for p in parts)
    if items > ckpt.items or failed > ckpt.failed:  # not this output's stats (e.g. of a run it replaced)
        parts, items, failed = [], 0, 0
    if ckpt.items > items:
        gap = {"items": ckpt.items - items, "failed": ckpt.failed - failed, "batches": None, "duration_s": None}
        parts.append({**gap, "status": "unrecorded", "started_at": None})
    return parts


def _stopped(run: Run) -> RunStopped:
    """Mark ``run``'s stats stopped with how many items remain; the stop as an error carrying the way
    to continue in both syntaxes (the stats keep the Python one)."""
    stats, total = run.stats, run.source.total
    stats.status = "stopped"
    stats.remaining = total - run.files.ckpt.items if total is not None else None
    left = f"{stats.remaining:,} items remain" if stats.remaining is not None else "the rest of the source remains"
    why = stats.stop_reason or "stop() was called"
    stop = RunStopped(
        f"{why}; {left}",
        python_fix="; continue with process(..., resume=True)",
        cli_fix=f"; continue with {RESUME_COMMAND}",
    )
    stats.stop_reason = str(stop)
    return stop
