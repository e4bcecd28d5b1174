"""Run the sample batches of a forecast in the job's own executor and turn them into a :class:`Plan`.

The function runs where the job would run it (the same backend, workers and per-worker setup, built
by the caller's executor factory), one sample batch at a time (``run_isolated``), and each batch is
measured where it ran (:func:`batchmem.backends.worker.run_batch`: wall seconds, peak resident bytes
above the batch's start). Results are dropped: nothing is written to the job's output. The figures go
into the operation's history, so the next run starts warm and ``batchmem run`` can refuse a limit that
cannot hold the heaviest item (:mod:`batchmem.plan.guard`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import BatchTask, Executor
from ..backends.forking import usable_cpus
from ..errors import ConfigError
from ..heap.monitor import MemoryMonitor
from ..io.source_base import SourceBase
from ..optimizer.history import HistoryStore
from ..options import RunConfig
from ..weights import make_weigher
from .fit import CostModel, RunShape, batch_weight, fit_line, forecast_limits, predict
from .model import Plan
from .sample import QUANTILES, SampleBatch, choose, sample_size
from .weigh import Weighed, run_unit, weigh_source

__all__ = ["Measured", "make_plan"]

logger = logging.getLogger("batchmem")

#: A sample batch holds at most this share of the items (1/125): the sample batches stay a few percent
#: of the run (docs/plan.md, Accuracy), and the fitted lines carry the forecast to the run's batch sizes.
SAMPLE_SHARE = 125
#: Items a sample batch may hold whatever the share: lines fitted to batches of a few items are noise.
MIN_SAMPLE_ITEMS = 16


@dataclass(frozen=True)
class Measured:
    """One sample batch as measured: label, items, weight (units), cut and run seconds, peak bytes,
    and the process tree's baseline (bytes) after it."""

    label: str
    items: int
    weight: float
    cut_s: float
    run_s: float
    wall_s: float
    peak_bytes: int
    baseline_bytes: int
    output_bytes: int = 0
    retained_bytes: int = 0  # the tree's resident bytes after the batch, above baseline_bytes


def _run_one(
    executor: Executor, weighed: Weighed, batch: SampleBatch, monitor: MemoryMonitor, baseline: int
) -> tuple[Measured | None, str | None]:
    """Cut (fetch) and run one sample batch; its tree peak is the larger of the tree's RSS after it and
    the RSS before it plus the batch's own peak growth, less ``baseline`` (bytes before sampling)."""
    items, cut_s = weighed.fetch(batch.indices)
    weights = [float(weighed.weights[i]) for i in batch.indices]
    start = int(weighed.index[batch.indices[0]])
    task = BatchTask(0, start, items, weight=float(sum(weights)), weights=weights)
    before = monitor.rss_bytes()
    t1 = time.perf_counter()
    out = executor.run_isolated(task)
    wall = time.perf_counter() - t1
    if out.split or out.error is not None:
        why = out.split or f"{type(out.error[1]).__name__}: {out.error[1]}"
        return None, f"the {batch.label} sample batch ({len(task)} items from item {start}) failed ({why})"
    after = monitor.rss_bytes()
    peak = max(after, before + out.peak_bytes) - baseline
    m = Measured(batch.label, len(task), task.weight, cut_s, out.duration_s, wall, max(0, peak), baseline)
    return replace(m, output_bytes=len(out.payload), retained_bytes=max(0, after - baseline)), None


def _sample(
    executor: Executor, weighed: Weighed, config: RunConfig, monitor: MemoryMonitor
) -> tuple[list[Measured], list[str]]:
    """Warm-up batch first, twice (the second run sizes the rest), then the heaviest item alone, light,
    heavy and median, lightest first.

    The windows the batches come from are chosen (and, for a file, read in one forward pass) once, at
    the largest sample size; each batch is the head of its window.
    """
    b = config.batching
    n = len(weighed.weights)
    k0 = max(1, min(b.batch_size, max(1, n // (10 * SAMPLE_SHARE)), b.max_batch_size))
    windows = {
        sb.label: sb
        for sb in choose(
            weighed.weights, max(k0, 2 * max(n // SAMPLE_SHARE, MIN_SAMPLE_ITEMS)), contiguous=weighed.contiguous
        )
    }
    if weighed.prefetch is not None:
        weighed.prefetch([sb.indices for sb in windows.values()])
    baseline = monitor.rss_bytes()
    warmup = _head(windows["warmup"], k0)
    warm = _run_one(executor, weighed, warmup, monitor, baseline)
    again = _run_one(executor, weighed, warmup, monitor, baseline)
    if warm[0] is None or again[0] is None:
        raise ConfigError(f"plan: {warm[1] or again[1]}; fix the function or the data, then plan again")
    most = min(max(n // SAMPLE_SHARE, MIN_SAMPLE_ITEMS), max(1, n // 4))
    # sized by the second run of the warm-up batch: the first pays one-time costs (a model's first call)
    k = sample_size(k0, again[0].run_s, b.control_config().aim_s, most, b.max_batch_size)
    heavy_q, mid = float(np.quantile(weighed.weights, 0.9)), max(weighed.median_weight, 1e-12)
    k_heavy = max(1, min(k, int(2 * k * mid / max(heavy_q, mid))))  # a heavy batch at most ~2x the median's weight
    # the median batch twice the others: weights apart even where items weigh alike, nearer the run's size
    sizes = {"light": k, "median": 2 * k, "heavy": k_heavy, "heaviest": 1}
    batches = [_head(windows[label], size) for label, size in sizes.items()]
    # lightest first: memory a batch leaves in the heap shows in the peaks of the batches after it
    batches.sort(key=lambda sb: float(weighed.weights[list(sb.indices)].sum()))
    done, notes = [warm[0], replace(again[0], label="warmup again")], []
    for batch in batches:
        measured, why = _run_one(executor, weighed, batch, monitor, baseline)
        if measured is None:
            notes.append(why)
        else:
            done.append(measured)
    return done, notes


def _at_run_size(
    executor: Executor,
    weighed: Weighed,
    config: RunConfig,
    monitor: MemoryMonitor,
    measured: list[Measured],
    weight: float,
) -> Measured | None:
    """One more sample batch, of the forecast's batch ``weight``: consecutive items whose weight is the
    median of such runs, as the run cuts its batches; when it holds no more items than a sample batch
    may (:data:`SAMPLE_SHARE`) and no timed batch is already within 1.5x of that weight. None otherwise.
    It runs twice and the second run counts: a run's batches follow batches of their own size, whose
    freed heap they reuse (:func:`batchmem.backends.worker.run_batch`), and the first here follows
    heavier ones."""
    n = len(weighed.weights)
    k = max(1, round(weight * n / max(1e-12, float(weighed.weights.sum()))))
    timed = [m.weight for m in measured if m.label in ("warmup again", *QUANTILES)]
    if k > max(n // SAMPLE_SHARE, MIN_SAMPLE_ITEMS) or any(weight / 1.5 <= w <= 1.5 * weight for w in timed):
        return None
    (batch,) = choose(weighed.weights, min(k, n), contiguous=True, labels=("median",))
    at_size = SampleBatch("run size", batch.indices)
    _run_one(executor, weighed, at_size, monitor, measured[0].baseline_bytes)  # after heavier batches
    return _run_one(executor, weighed, at_size, monitor, measured[0].baseline_bytes)[0]


def _head(batch: SampleBatch, k: int) -> SampleBatch:
    return SampleBatch(batch.label, batch.indices[:k])


def commit_seconds(
    folder: Path | None, fsync: bool, monitor: MemoryMonitor, nbytes: int, repeats: int = 2
) -> tuple[float, float]:
    """``(seconds, seconds per byte)`` a run spends committing one batch outside it, timed in a
    temporary folder in ``folder`` (removed after): append to a results file, replace a checkpoint,
    append a batch record (with ``fsync``: the results and the checkpoint forced to disk, as
    :mod:`batchmem.io.output` does), and take a memory sample; once with 4 KiB of results, once with
    ``nbytes`` (a sample batch's output, at least 1 MiB), the medians of ``repeats``, the difference
    per byte."""

    def once(tmp: Path, block: bytes) -> float:
        out, ckpt, record = tmp / "out", tmp / "ckpt", tmp / "batches"
        t0 = time.perf_counter()
        with open(out, "ab") as fh:
            fh.write(block)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        with open(ckpt.with_suffix(".tmp"), "wb") as fh:
            fh.write(b"{}")
            if fsync:
                os.fsync(fh.fileno())
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
        with open(record, "ab") as fh:
            fh.write(b"{}\n")
        monitor.sample()
        return time.perf_counter() - t0

    small, large = b"x" * 4096, b"x" * max(1 << 20, nbytes)  # a MiB at least: a difference above the noise
    with tempfile.TemporaryDirectory(prefix=".batchmem-plan-", dir=folder) as tmp:
        fixed = float(np.median([once(Path(tmp), small) for _ in range(repeats)]))
        full = float(np.median([once(Path(tmp), large) for _ in range(repeats)]))
    return fixed, max(0.0, full - fixed) / (len(large) - len(small))


def cold_cache_bytes(input_bytes: float) -> float:
    """Bytes this process tree read from storage (``/proc/<pid>/io`` ``read_bytes``: libraries, compiled
    modules, a model's files, the input) beyond the file pages it maps (counted in its resident bytes)
    and the input (counted apart): the page cache a run on a cold node adds to its cgroup's charge,
    since the kernel charges a page to the cgroup that reads it first (the kernel's memory cgroup v1
    docs, section 2.3). 0 where the cache was warm, or without ``/proc/<pid>/io``."""
    import psutil

    me = psutil.Process()
    read = mapped = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            read += proc.io_counters().read_bytes
            mapped += proc.memory_info().shared
        except (psutil.Error, AttributeError):  # gone, or no io counters on this platform
            continue
    return float(max(0.0, read - mapped - input_bytes))


def _confidence(model: CostModel, points: int) -> dict[str, Any]:
    worst = max(model.bytes.spread, model.seconds.spread)
    level = "high" if worst <= 0.25 and points >= 3 else "medium" if worst <= 0.6 else "low"
    return {
        "level": level,
        "bytes_r2": model.bytes.r2,
        "bytes_spread": model.bytes.spread,
        "seconds_r2": model.seconds.r2,
        "seconds_spread": model.seconds.spread,
        "sample_batches": points,
    }


def _model(
    measured: list[Measured], startup_s: float, commit: tuple[float, float], input_bytes: float, cold_bytes: float
) -> CostModel:
    """The lines through the sample: a batch's peak above the tree's resident bytes before sampling, its
    function's seconds and its round trip's, and the share of its peak the tree still held after the
    batch (median over the batches); ``commit``: :func:`commit_seconds`.

    The warm-up's first run is left out of every line (it pays one-time costs), its second run out of
    the peak line (the first run's memory is still there for it). The heaviest item alone is left out
    of the time lines: it is there for memory, and its seconds can be those of first touching fresh
    pages at its size, which the run's batches, reusing the heap, do not pay per unit; the warm-up's
    second run, at a small weight, anchors the time lines' intercept instead.
    """
    fit = [m for m in measured if not m.label.startswith("warmup")] or measured
    timed = [m for m in measured if m.label in ("warmup again", "run size", *QUANTILES)]
    if len(timed) < 2:
        timed = fit
    x, xt = [m.weight for m in fit], [m.weight for m in timed]
    kept = [min(1.0, m.retained_bytes / m.peak_bytes) for m in fit if m.peak_bytes > 0]
    return CostModel(
        retained_fraction=float(np.median(kept)) if kept else 0.0,
        output_per_unit=sum(m.output_bytes for m in fit) / max(1e-12, sum(x)),
        input_bytes=input_bytes,
        baseline_bytes=float(measured[0].baseline_bytes),
        bytes=fit_line(x, [m.peak_bytes for m in fit]),
        seconds=fit_line(xt, [m.run_s for m in timed]),
        wall=fit_line(xt, [m.wall_s for m in timed]),
        cut=fit_line(xt, [m.cut_s for m in timed]),
        timed=tuple((m.weight, m.wall_s) for m in timed),
        startup_s=startup_s,
        overhead_s=commit[0],
        write_s_per_byte=commit[1],
        cold_cache_bytes=cold_bytes,
    )


def _shape(weighed: Weighed, config: RunConfig) -> RunShape:
    b, p, control = config.batching, config.pressure, config.batching.control_config()
    count = weighed.items or len(weighed.weights)
    return RunShape(
        total_weight=weighed.total_weight,
        mean_weight=weighed.total_weight / max(1, count),
        max_weight=weighed.max_weight,
        median_weight=weighed.median_weight,
        items=weighed.items,
        aim_s=control.aim_s,
        memory_target_fraction=b.memory_target_fraction,
        terminate_fraction=p.terminate_fraction,
        max_batch_size=b.max_batch_size,
        min_batch_size=b.min_batch_size,
    )


def make_plan(
    config: RunConfig,
    monitor: MemoryMonitor,
    new_executor: Callable[[], Executor],
    items: Any,
    *,
    output_dir: Path | None = None,
    history: HistoryStore | None = None,
    release: Callable[[Executor], None] | None = None,
) -> Plan:
    """Weigh ``items``, run the sample batches in ``new_executor()``, fit, forecast.

    ``output_dir``: the folder the run will write to, where a batch's commit is timed in a temporary
    folder (:func:`commit_seconds`; default: the system's temporary folder). ``release``: what becomes
    of the executor after the sample (default: closed); it is closed anyway when the sample fails.

    Records the figures in ``history`` (default: the operation's history unless ``use_history`` is
    off). Raises :class:`~batchmem.errors.ConfigError` for an empty source or a failing warm-up batch.
    """
    b = config.batching
    weigher = make_weigher(b.weight) if b.auto_optimize else None
    frames = isinstance(items, SourceBase) and items.chunked and b.weight is not None and b.auto_optimize
    t0 = time.perf_counter()
    weighed = weigh_source(items, weigher, frames=frames)
    if not len(weighed.weights):
        weighed.close()
        raise ConfigError("plan: the source holds no items; point the job at a source with items")
    t_exec = time.perf_counter()
    try:
        executor = new_executor()
    except BaseException:
        weighed.close()
        raise
    kept = False
    try:
        plan, measured, notes = _measure(executor, weighed, config, monitor, items, output_dir, t_exec)
        if release is not None:
            release(executor)
            kept = True
    finally:
        weighed.close()
        if not kept:
            executor.close()
    plan.sample_seconds = time.perf_counter() - t0
    plan.notes = [weighed.how, *notes]
    if b.use_history:
        _record(history or HistoryStore(), config, plan, measured)
    return plan


def _measure(
    executor: Executor,
    weighed: Weighed,
    config: RunConfig,
    monitor: MemoryMonitor,
    items: Any,
    output_dir: Path | None,
    t_exec: float,
) -> tuple[Plan, list[Measured], list[str]]:
    """The sample batches, the costs around them and the forecast (again with a batch of the run's own
    size among the points, where one was run): ``(plan, measured, notes)``."""
    started = time.perf_counter()
    measured, notes = _sample(executor, weighed, config, monitor)
    # executor start: building it, what the warm-up batch waited for beyond its own run, and the
    # one-time costs inside its first run (its second run's seconds less)
    first, second = measured[0], measured[1]
    startup_s = started - t_exec + max(0.0, first.wall_s - first.run_s) + max(0.0, first.run_s - second.run_s)
    cold = cold_cache_bytes(weighed.file_bytes)  # while the workers live
    unit = run_unit(config.batching, items, bool(np.all(weighed.weights == 1)))
    commit = commit_seconds(output_dir, config.output.fsync, monitor, max(m.output_bytes for m in measured))
    costs = (startup_s, commit, cold)
    plan = _forecast(config, monitor, weighed, measured, costs, executor.in_flight, unit)
    at_size = _at_run_size(executor, weighed, config, monitor, measured, plan.batch_weight)
    if at_size is not None:
        measured.append(at_size)
        plan = _forecast(config, monitor, weighed, measured, costs, executor.in_flight, unit)
    return plan, measured, notes


def _forecast(
    config: RunConfig,
    monitor: MemoryMonitor,
    weighed: Weighed,
    measured: list[Measured],
    costs: tuple[float, tuple[float, float], float],
    jobs: int,
    unit: str,
) -> Plan:
    """The plan at the configured limit (the recommended one when none is set) for ``jobs`` in flight;
    ``costs``: the executor's start (s), :func:`commit_seconds`, :func:`cold_cache_bytes`."""
    model = _model(measured, costs[0], costs[1], weighed.file_bytes, costs[2])
    shape = _shape(weighed, config)
    recommended, minimum = forecast_limits(model, shape, jobs)
    configured = config.pressure.memory_limit is not None
    limit = monitor.limit.bytes if configured else recommended
    seconds, peak = predict(model, shape, limit, jobs)
    cores = max(1, usable_cpus())
    # each n_jobs at the configured limit, or at its own recommended one
    by_jobs = {
        n: predict(model, shape, limit if configured else forecast_limits(model, shape, n)[0], n)[0]
        for n in range(1, cores + 1)
    }
    heaviest_bytes = model.baseline_bytes + model.bytes.at(shape.max_weight)
    fits = heaviest_bytes <= config.pressure.terminate_fraction * monitor.limit.bytes
    return Plan(
        items=weighed.items,
        total_weight=weighed.total_weight,
        weight_unit=unit,
        sample_items=sum(m.items for m in measured),
        sample_seconds=0.0,
        predicted_seconds=seconds,
        predicted_seconds_by_n_jobs=by_jobs,
        predicted_peak_bytes=int(peak),
        recommended_memory_limit_bytes=recommended,
        min_memory_limit_bytes=minimum,
        heaviest_item={"index": int(weighed.heaviest), "bytes": int(model.bytes.at(shape.max_weight))},
        fits=bool(fits),
        confidence=_confidence(model, len(measured) - 1),
        memory_limit_bytes=monitor.limit.bytes,
        limit_source=monitor.limit.source,
        n_jobs=jobs,
        model=model,
        shape=shape,
        batch_weight=batch_weight(model, shape, limit, jobs),
    )


def _record(store: HistoryStore, config: RunConfig, plan: Plan, measured: list[Measured]) -> None:
    """The plan's figures as a history entry: the next run warm-starts from them, the guard reads the model."""
    model, shape = plan.model, plan.shape
    w = plan.batch_weight
    weighted = plan.weight_unit != "items"
    summary = {
        "kind": "plan",
        "items": 0,
        "batches": 0,
        "duration_s": 0.0,
        "weight_unit": plan.weight_unit,
        "learned_batch_size": max(1, int(w / shape.mean_weight)),
        **({"learned_budget": w} if weighted else {}),
        "ewma_bytes_per_item": model.bytes.at(w) / w,
        "seconds_per_item": model.seconds.at(w) / w,
        "memory_limit_bytes": plan.memory_limit_bytes,
        "plan": {
            "baseline_bytes": model.baseline_bytes,
            "bytes_intercept": model.bytes.intercept,
            "bytes_per_unit": model.bytes.slope,
            "seconds_intercept": model.seconds.intercept,
            "seconds_per_unit": model.seconds.slope,
            "max_weight": shape.max_weight,
            "min_memory_limit_bytes": plan.min_memory_limit_bytes,
            "recommended_memory_limit_bytes": plan.recommended_memory_limit_bytes,
            "sample": [asdict(m) for m in measured],
            "model": asdict(model),
            "shape": asdict(shape),
            "n_jobs": plan.n_jobs,
        },
    }
    try:
        store.record_run(config.process_name, summary)
    except OSError as exc:
        logger.warning("batchmem: could not save the plan in the history of %r (%s)", config.process_name, exc)
