"""The ``batchmem`` command line: run and validate job files; run reports, per-operation stats, memory.

Exit codes (also in ``batchmem --help`` and ``batchmem run --help``; :data:`batchmem.errors.EXIT_CODES`):

* 0 -- success;
* 1 -- the job ran but some items failed, or it stopped on an error raised by the user function or
  the source, or writing the output failed (disk full: ``OutputWriteError``; ``--resume`` continues once fixed);
* 2 -- a usage or job-file error (any :class:`~batchmem.errors.BatchmemError`), or a memory limit the
  job does not fit in, printed as one line ``error: <message>`` on stderr, never a traceback;
* 3 -- stopped before every item was committed (memory pressure, e.g. a leak): incomplete, resumable;
* 130 -- interrupted (Ctrl-C, SIGINT or SIGTERM; the checkpoint is written, ``--resume`` continues).

Subcommands are registered on the click group :data:`cli`; :func:`main` is the
console-script entry point and owns the mapping from exceptions to exit codes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .cli_summary import HELD_FOR_SUMMARY as _HELD
from .cli_summary import summary_lines as _summary_lines
from .errors import EXIT_CODES, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_STOPPED, BatchmemError, one_line
from .units import format_bytes

__all__ = ["cli", "main", "verbosity_options"]

logger = logging.getLogger("batchmem")

#: ``Exit codes: 0 success; 1 ...`` for the help texts.
EXIT_HELP = "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + "."

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- helpers


def _version() -> str:
    try:
        return importlib.metadata.version("batchmem")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _configure_logging(verbose: int, quiet: int) -> None:
    """Logger ``batchmem`` to stderr: DEBUG with -v, WARNING with -q, INFO otherwise."""
    level = logging.DEBUG if verbose > quiet else logging.WARNING if quiet > verbose else logging.INFO
    log = logging.getLogger("batchmem")
    log.setLevel(level)
    handler = next((h for h in log.handlers if getattr(h, "_batchmem_cli", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._batchmem_cli = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.addFilter(_HELD)
        log.addHandler(handler)
        log.propagate = False
    handler.setLevel(level)


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> int:
    store = ctx.ensure_object(dict)
    store[param.name] = value
    if not ctx.resilient_parsing:
        _configure_logging(store.get("verbose", 0), store.get("quiet", 0))
    return value


def verbosity_options(f: F) -> F:
    """``-v/--verbose`` and ``-q/--quiet`` for a command (use it on every subcommand)."""
    f = click.option(
        "-q",
        "--quiet",
        count=True,
        expose_value=False,
        callback=_set_verbosity,
        help="Less logging: warnings and errors only.",
    )(f)
    f = click.option(
        "-v",
        "--verbose",
        count=True,
        expose_value=False,
        callback=_set_verbosity,
        help="More logging (debug).",
    )(f)
    return f


_set_option = click.option(
    "--set",
    "overrides",
    metavar="KEY=VALUE",
    multiple=True,
    help="Override a job-file key by its dotted path, e.g. --set batching.memory_limit=1GiB "
    "--set execution.n_jobs=4 (value parsed as YAML). Repeatable.",
)


# --------------------------------------------------------------------------- group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_HELP,
)
@click.version_option(_version(), "--version", prog_name="batchmem", message="%(prog)s %(version)s")
@verbosity_options
def cli() -> None:
    """Run large batch jobs with bounded memory: adaptive batch sizes, leak analysis, streamed results.

    \b
    Examples:
      batchmem validate job.yaml
      batchmem plan job.yaml
      batchmem run job.yaml
      batchmem run job.yaml --set batching.memory_limit=1GiB --set execution.n_jobs=4
      batchmem run job.yaml --resume
      batchmem report out.jsonl.stats.json --html report.html
      batchmem stats
      batchmem memory --details
    """


# --------------------------------------------------------------------------- validate


@cli.command(short_help="Check a job file without running it.")
@click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option("--resume", is_flag=True, help="Accept an existing output (it would be continued by run --resume).")
@verbosity_options
def validate(job_file: Path, overrides: tuple[str, ...], resume: bool) -> int:
    """Check a job file without running it.

    Validates every key, checks the source file exists, the output folder is
    writable and the output does not exist yet (unless output.overwrite), that
    the extras the job needs are installed (matplotlib for report, pyarrow for
    Parquet, distributed for a scheduler), imports the function and setup, and
    checks that the process holding them fits under the memory limit. Prints "ok: <name> ..." and exits 0, or prints one
    line "error: <field>: <problem>; <fix>" and exits 2.

    \b
    Examples:
      batchmem validate job.yaml
      batchmem validate job.yaml --set output.path=/tmp/out.jsonl
    """
    from .job import load_job

    job = load_job(job_file, overrides, resume=resume)
    job.check_ready()  # the extras, the imports, and a memory limit the job fits in
    config = job.run_config()
    b, e = config.batching, config.execution
    limit = config.pressure.memory_limit
    limit_text = (
        "detected" if limit is None else f"{limit:.0%} of detected" if isinstance(limit, float) else format_bytes(limit)
    )
    batching = (
        f"auto batch size from {b.batch_size} in [{b.min_batch_size}, {b.max_batch_size}]"
        if b.auto_optimize
        else f"fixed batch size {b.batch_size}"
    )
    if e.scheduler_address:  # connect now: a run would fail the same way
        from .backends.dask_backend import describe_cluster

        click.echo(f"cluster: {e.scheduler_address}: {describe_cluster(e.scheduler_address, e.connect_timeout)}")
    click.echo(
        f"ok: {job.name}: {job.source.type} source {job.source.path} -> {job.function}"
        f"{' (batched)' if job.batched else ''} -> {job.output.format} {job.output.path}; "
        f"{batching}; memory limit {limit_text}; n_jobs {e.n_jobs}; on_error {job.on_error}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- run


@cli.command(short_help="Run a job file and stream its results to the output.", epilog=EXIT_HELP)
@click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option(
    "--no-progress", "no_progress", is_flag=True, help="No progress bar (default: the job file's progress key)."
)
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run: keep the committed output and skip those items."
)
@click.option("--restart", is_flag=True, help="Start over although the output holds an unfinished run of this job.")
@click.option("--plan", "with_plan", is_flag=True, help="Print the forecast first (batchmem plan), then run.")
@click.option(
    "--force-resume",
    "force_resume",
    is_flag=True,
    help="Resume even though the job changed (function, source or batched) since the output was written.",
)
@verbosity_options
def run(
    job_file: Path,
    overrides: tuple[str, ...],
    no_progress: bool,
    resume: bool,
    restart: bool,
    with_plan: bool,
    force_resume: bool,
) -> int:
    """Run a job file: read the source in batches, apply the function, stream results to the output.

    Prints a summary (items, failures, batch sizes, throughput, peak memory against the limit).
    Exits 0 when every item succeeded, 1 when some failed or the function or source stopped the
    run, 2 on a job-file error or a memory limit the job does not fit in, 3 when memory pressure
    stopped the run before every item was committed, 130 when interrupted. Running the same job
    again continues an unfinished run (--restart starts over); --resume also continues after a
    crash or a failed write and does nothing on a finished output; a changed function, source or
    batched setting is refused unless --force-resume.

    \b
    Examples:
      batchmem run job.yaml
      batchmem run job.yaml --set batching.memory_limit=512MiB --set output.overwrite=true
      batchmem run job.yaml --resume
      batchmem run job.yaml --plan
    """
    from .job import load_job, run_job
    from .signals import RunInterrupted

    if restart and (resume or force_resume):
        raise click.UsageError("--restart starts over; it cannot be combined with --resume or --force-resume")
    resume_mode: bool | str = "force" if force_resume else True if resume else False if restart else "auto"
    resume_command = shlex.join(["batchmem", "run", str(job_file), *_set_args(overrides), "--resume"])
    if restart:
        overrides = (*overrides, "output.overwrite=true")
    job = load_job(job_file, overrides, resume=resume_mode is not False)
    processor = None
    if with_plan:  # the run goes on in the workers the plan started
        from .cli_plan import echo_plan, plan_job

        processor = job.build_processor(progress=False if no_progress else None)
        echo_plan(job, plan_job(job, processor))
    decision = job.resume_decision(resume_mode)  # the one resume decision of this run
    if resume_mode == "auto" and decision.resume:
        committed = decision.committed.items
        click.echo(f"resuming: {committed:,} items already committed (--restart to start over)", err=True)
    _HELD.held.clear()
    try:
        result = run_job(job, resume=decision, progress=False if no_progress else None, processor=processor)
    except BaseException as exc:  # no summary will say what the run found: the log does
        _HELD.release(next((h for h in logger.handlers if getattr(h, "_batchmem_cli", False)), None))
        if isinstance(exc, (RunInterrupted, BatchmemError)):  # their "run again with" names this command
            exc.resume_command = resume_command
        if not isinstance(exc, Exception) or isinstance(exc, (RunInterrupted, BatchmemError, MemoryError)):
            raise
        # the user's function or source raised: one line, traceback only with -v
        logger.debug("run stopped", exc_info=True)
        what = type(exc).__name__ + (f": {one_line(exc)}" if str(exc).strip() else "")
        _error(f"{job.name}: stopped by {what}; run with -v for the traceback")
        return EXIT_FAILED
    return _after_run(job, result, resume_command)


def _after_run(job: Any, result: Any, resume_command: str) -> int:
    """Print what a finished (or stopped) run did, write its report, and return the exit code."""
    if result.already_complete:
        click.echo(f"already complete: {len(result):,} items in {result.path}")
        return EXIT_OK
    stats = result.stats
    if result.stop is not None:  # the stop's fix in CLI syntax, naming this very command
        result.stop.resume_command = resume_command
        stats.stop_reason = result.stop.cli_message()
    for line in _summary_lines(job, result, stats):
        click.echo(line)
    if job.report is not None and stats.stats_path:
        from .report import load_report, write_report

        try:
            write_report(load_report(stats.stats_path), job.report, "html")
        except BatchmemError as exc:  # e.g. matplotlib missing: the run's output stands, the report does not
            _error(f"report: {exc.cli_message()}")
            return EXIT_FAILED if stats.failed else exc.exit_code
        click.echo(f"report: {job.report}")
    failed = stats.failed or stats.output_failed  # the whole output's: failures of earlier parts count
    return EXIT_STOPPED if result.stop is not None else EXIT_FAILED if failed else EXIT_OK


def _set_args(overrides: tuple[str, ...]) -> list[str]:
    """``("a=1", "b=2")`` as ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for override in overrides for arg in ("--set", override)]


# --------------------------------------------------------------------------- stats, report, memory


@cli.command(short_help="Per-operation figures from the run history.")
@click.argument("operation", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON (for machines).")
@click.option("--clear", is_flag=True, help="Forget OPERATION's history (its learned batch size and figures).")
@verbosity_options
def stats(operation: str | None, as_json: bool, clear: bool) -> int:
    """Per-operation figures from the history: runs, items, items/s, bytes per item,
    learned batch size, peak RSS, leaks flagged, last run.

    Without OPERATION: a table with a row per operation. With OPERATION: its
    figures and recommendations. History lives in $BATCHMEM_HOME/history
    (default: the user cache folder).

    \b
    Examples:
      batchmem stats
      batchmem stats flights_etl --json
      batchmem stats --clear flights_etl
    """
    from .optimizer import HistoryStore
    from .report import operation_statistics, render_operation_detail, render_operations_table

    store = HistoryStore()
    if clear:
        if not operation:
            raise click.UsageError("--clear needs the OPERATION to forget, e.g. batchmem stats --clear flights_etl")
        record = store.load(operation)
        if store.clear(operation):
            runs = int((record or {}).get("runs") or 0)
            click.echo(
                f"cleared the history of {operation!r} ({runs} run{'s' if runs != 1 else ''}); "
                "its next run starts from the initial batch size"
            )
        else:
            click.echo(f"no history for {operation!r}: nothing to clear")
        return EXIT_OK
    data = operation_statistics(operation, history=store)
    if as_json:
        import orjson

        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
    elif operation:
        click.echo(render_operation_detail(operation, data["operations"][operation]), nl=False)
    else:
        click.echo(render_operations_table(data), nl=False)
    return EXIT_OK


@cli.command(short_help="Report one run (text, JSON, Markdown or HTML).")
@click.argument("stats_json", metavar="STATS_JSON", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a self-contained HTML report (plots embedded) here.",
)
@click.option(
    "--markdown",
    "markdown_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a Markdown report here (plots as a PNG beside it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
@verbosity_options
def report(stats_json: Path, html_path: Path | None, markdown_path: Path | None, as_json: bool) -> int:
    """Report one run from its <output>.stats.json (and the .batches.jsonl beside it).

    Prints a text report (or JSON with --json); --html and --markdown write
    files instead. The HTML page shows RSS against the memory limit with the
    pressure bands, batch size and throughput over time, the run's figures,
    the heap analyzer's issues and the recommendations. Plots need
    pip install "batchmem[report]".

    \b
    Examples:
      batchmem report out.jsonl.stats.json
      batchmem report out.jsonl.stats.json --html report.html
    """
    from .report import load_report, render_json, render_text, write_report

    rep = load_report(stats_json)
    for path, fmt in ((html_path, "html"), (markdown_path, "markdown")):
        if path is not None:
            write_report(rep, path, fmt)
            click.echo(f"report: wrote {path}", err=True)
    if as_json:
        click.echo(render_json(rep))
    elif html_path is None and markdown_path is None:
        click.echo(render_text(rep), nl=False)
    return EXIT_OK


@cli.command(short_help="Memory now: RSS, cgroup charge, the limit, pressure.")
@click.option("--json", "as_json", is_flag=True, help="Print the readings as JSON.")
@click.option("--details", is_flag=True, help="Also the garbage collector and heap details.")
@verbosity_options
def memory(as_json: bool, details: bool) -> int:
    """Memory now: RSS, available memory, the limit and where it came from, pressure level.

    Also the memory cgroup: its usage, working set (usage minus inactive file cache), tmpfs and
    shared memory, memory.high, the pressure stall, and which of RSS or the working set is counted.

    With --details also the garbage collector (counts, thresholds, per-generation
    stats) and heap details (tracemalloc, uss/pss/swap where available).

    \b
    Examples:
      batchmem memory
      batchmem memory --details --json
    """
    from .report import memory_status, render_memory

    status = memory_status(details)
    if as_json:
        import orjson

        click.echo(orjson.dumps(status, option=orjson.OPT_INDENT_2, default=str).decode())
    else:
        click.echo(render_memory(status), nl=False)
    return EXIT_OK


# --------------------------------------------------------------------------- entry point


def _error(message: str) -> None:
    """One line ``error: ...`` on stderr (newlines in the message are folded)."""
    click.echo("error: " + one_line(message), err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run :data:`cli`; an error's own ``exit_code`` is the exit status."""
    try:
        rv = cli.main(args=argv, prog_name="batchmem", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt/EOF into Abort
        _interrupted(exc.__cause__ or exc.__context__)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except click.UsageError as exc:  # the usage line, then the error in batchmem's one style
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} -h' for help.", err=True)
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _error(exc.format_message())
        sys.exit(exc.exit_code)
    except BatchmemError as exc:
        logger.debug("batchmem error", exc_info=True)
        _error(exc.cli_message())
        sys.exit(exc.exit_code)
    except MemoryError:
        _error("out of memory; lower batching.memory_limit or batching.max_batch_size, or use fewer execution.n_jobs")
        sys.exit(EXIT_FAILED)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _interrupted(exc: BaseException | None) -> None:
    """Exit 130 with the interrupted run's message (how to continue it), or plain ``interrupted``."""
    from .signals import RunInterrupted

    if isinstance(exc, RunInterrupted):
        click.echo(exc.cli_message(), err=True)
        sys.exit(exc.exit_code)
    click.echo("interrupted", err=True)
    sys.exit(EXIT_INTERRUPTED)


from .cli_plan import add_plan_command  # noqa: E402 (the group and its shared options are defined above)

add_plan_command(cli, _set_option, verbosity_options)

if __name__ == "__main__":
    main()
