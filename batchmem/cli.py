"""The ``batchmem`` command line: run and validate job files.

Exit codes (also in ``batchmem --help``):

* 0 -- success;
* 1 -- the job ran but some items failed, or it stopped on an error raised by the user function;
* 2 -- a usage or job-file error (any :class:`~batchmem.errors.BatchmemError`), printed as one
  line ``error: <message>`` on stderr, never a traceback;
* 130 -- interrupted (Ctrl-C).

Subcommands are registered on the click group :data:`cli`; :func:`main` is the
console-script entry point and owns the mapping from exceptions to exit codes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import BatchFunctionError, BatchmemError, ItemFailedError

__all__ = ["cli", "main", "verbosity_options", "human_size"]

logger = logging.getLogger("batchmem")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- helpers


def human_size(n: int | float | None) -> str:
    """Bytes as a binary human size (``"1.5GiB"``) via :meth:`pydantic.ByteSize.human_readable`."""
    if n is None:
        return "?"
    from pydantic import ByteSize

    return ByteSize(int(n)).human_readable()


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
        "-q", "--quiet", count=True, expose_value=False, callback=_set_verbosity,
        help="Less logging: warnings and errors only.",
    )(f)
    f = click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
        help="More logging (debug).",
    )(f)
    return f


_set_option = click.option(
    "--set", "overrides", metavar="KEY=VALUE", multiple=True,
    help="Override a job-file key by its dotted path, e.g. --set batching.memory_limit=1GB "
    "--set execution.n_jobs=4 (value parsed as YAML). Repeatable.",
)


# --------------------------------------------------------------------------- group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 success; 1 some items failed or the function stopped the run; "
    "2 usage or job-file error; 130 interrupted.",
)
@click.version_option(_version(), "--version", prog_name="batchmem", message="%(prog)s %(version)s")
@verbosity_options
def cli() -> None:
    """Run large batch jobs with bounded memory: adaptive batch sizes, leak analysis, streamed results.

    \b
    Examples:
      batchmem validate job.yaml
      batchmem run job.yaml
      batchmem run job.yaml --set batching.memory_limit=1GB --set execution.n_jobs=4
      batchmem run job.yaml --resume
    """


# --------------------------------------------------------------------------- validate


@cli.command()
@click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option("--resume", is_flag=True, help="Accept an existing output (it would be continued by run --resume).")
@verbosity_options
def validate(job_file: Path, overrides: tuple[str, ...], resume: bool) -> int:
    """Check a job file without running it.

    Validates every key, checks the source file exists, the output folder is
    writable and the output does not exist yet (unless output.overwrite), and
    imports the function. Prints "ok: <name> ..." and exits 0, or prints one
    line "error: <field>: <problem>; <fix>" and exits 2.

    \b
    Examples:
      batchmem validate job.yaml
      batchmem validate job.yaml --set output.path=/tmp/out.jsonl
    """
    from .job import load_job

    job = load_job(job_file, overrides, resume=resume)
    b, e = job.batching, job.execution
    limit = b.memory_limit
    limit_text = "detected" if limit is None else f"{limit:.0%} of detected" if isinstance(limit, float) else human_size(limit)
    batching = (
        f"auto batch size from {b.batch_size} in [{b.min_batch_size}, {b.max_batch_size}]"
        if b.auto_optimize
        else f"fixed batch size {b.batch_size}"
    )
    click.echo(
        f"ok: {job.name}: {job.source.type} source {job.source.path} -> {job.function}"
        f"{' (batched)' if job.batched else ''} -> {job.output.format} {job.output.path}; "
        f"{batching}; memory limit {limit_text}; n_jobs {e.n_jobs}; on_error {job.on_error}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- run


@cli.command()
@click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False, path_type=Path))
@_set_option
@click.option("--no-progress", "no_progress", is_flag=True, help="No progress bar (default: the job file's progress key).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run: keep the committed output and skip those items.")
@verbosity_options
def run(job_file: Path, overrides: tuple[str, ...], no_progress: bool, resume: bool) -> int:
    """Run a job file: read the source in batches, apply the function, stream results to the output.

    Prints a summary when done (items, failures, batch sizes, throughput,
    peak memory against the limit, where the output and stats are). Exits 0
    when every item succeeded, 1 when some failed (see output.errors) or the
    function stopped the run, 2 on a job-file error, 130 when interrupted.

    \b
    Examples:
      batchmem run job.yaml
      batchmem run job.yaml --no-progress -q
      batchmem run job.yaml --set batching.memory_limit=512MB --set output.overwrite=true
      batchmem run job.yaml --resume
    """
    from .job import load_job, run_job

    job = load_job(job_file, overrides, resume=resume)
    try:
        result = run_job(job, resume=resume, progress=False if no_progress else None)
    except (ItemFailedError, BatchFunctionError) as exc:
        _error(str(exc))
        return EXIT_FAILED
    except BatchmemError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # the user's function or source raised: one line, traceback only with -v
        logger.debug("run stopped", exc_info=True)
        _error(f"{job.name}: stopped by {type(exc).__name__}: {exc} (run with -v for the traceback)")
        return EXIT_FAILED
    stats = getattr(result, "stats", None)
    for line in _summary_lines(job, result, stats):
        click.echo(line)
    failed = int(getattr(stats, "failed", 0) or 0)
    return EXIT_FAILED if failed else EXIT_OK


def _summary_lines(job: Any, result: Any, stats: Any) -> list[str]:
    """The end-of-run summary: a few plain lines for the terminal."""
    get = lambda name, default=None: getattr(stats, name, default) if stats is not None else default  # noqa: E731
    items = int(get("items", 0) or 0)
    failed = int(get("failed", 0) or 0)
    batches = int(get("batches", 0) or 0)
    sizes = list(get("batch_sizes", []) or [])
    size_range = "-" if not sizes else f"{min(sizes):,}" if min(sizes) == max(sizes) else f"{min(sizes):,}–{max(sizes):,}"
    duration = float(get("duration_s", 0.0) or 0.0)
    rate = float(get("items_per_s", 0.0) or 0.0)
    peak = get("peak_rss_bytes")
    limit = get("memory_limit_bytes")
    source = get("limit_source")
    limit_text = f" of {human_size(limit)} limit" + (f" ({source})" if source else "") if limit else ""
    share = f", {peak / limit:.0%}" if peak and limit else ""
    lines = [
        f"done: {job.name}: {items:,} items, {failed:,} failed, {batches:,} batch{'' if batches == 1 else 'es'} "
        f"(size {size_range}), {rate:,.0f} items/s in {duration:.1f}s",
        f"memory: peak RSS {human_size(peak)}{limit_text}{share}",
        f"output: {getattr(result, 'path', job.output.path)}",
    ]
    stats_path = get("stats_path")
    if stats_path:
        lines.append(f"stats:  {stats_path}")
    errors_path = getattr(result, "errors_path", None)
    if failed and errors_path:
        lines.append(f"errors: {errors_path}")
    return lines


# --------------------------------------------------------------------------- entry point


def _error(message: str) -> None:
    """One line ``error: ...`` on stderr (newlines in the message are folded)."""
    click.echo("error: " + " ".join(str(message).split()), err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run :data:`cli` and turn its outcome into the exit code."""
    try:
        rv = cli.main(args=argv, prog_name="batchmem", standalone_mode=False)
    except click.exceptions.Abort:  # click turns KeyboardInterrupt/EOF into Abort
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:  # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except BatchmemError as exc:
        logger.debug("batchmem error", exc_info=True)
        _error(str(exc))
        sys.exit(EXIT_USAGE)
    except MemoryError:
        _error("out of memory; lower batching.memory_limit or batching.max_batch_size, or use fewer execution.n_jobs")
        sys.exit(EXIT_FAILED)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


if __name__ == "__main__":
    main()
