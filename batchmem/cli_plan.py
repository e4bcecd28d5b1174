"""``batchmem plan``: forecast a job's time, peak memory and the memory limit to ask for, before it runs.

:func:`add_plan_command` registers it on the :data:`batchmem.cli.cli` group (this module does not import
:mod:`batchmem.cli`, so ``python -m batchmem.cli`` registers it on the group it runs); the forecast itself
is :mod:`batchmem.plan`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .io.source_base import SourceBase

__all__ = ["add_plan_command", "echo_plan", "plan_job"]

KEYS_HELP = """\b
JSON keys (--json; bytes and seconds are numbers):
  items                          items in the source (null: unknown)
  total_weight, weight_unit      the source's weight, in the unit batches are budgeted in
  sample_items, sample_seconds   items the sample batches held; seconds the plan took (weighing
                                 the source, starting the workers, running the sample; imports
                                 excluded); run --plan goes on in the workers the plan started
  predicted_seconds              wall seconds of the run at the job's n_jobs
  predicted_seconds_by_n_jobs    {"1": s, "2": s, ...} up to the usable cores
  predicted_peak_bytes           peak bytes charged to the job's memory (cgroup) at its memory_limit,
                                 or at the recommended limit when none is set: the process tree's
                                 resident bytes plus the page cache of the input read, the output
                                 written and the files read from storage at start (a cold node),
                                 which counts only up to the limit
  recommended_memory_limit_bytes smallest limit at which batches still reach the time band
  min_memory_limit_bytes         smallest limit the run completes under: the baseline plus the
                                 heaviest item alone, over terminate_fraction
  heaviest_item                  {"index": input index, "bytes": its predicted peak bytes}
  fits                           whether the configured or detected limit holds the heaviest item
  confidence                     {"level": high|medium|low, "bytes_r2", "bytes_spread",
                                 "seconds_r2", "seconds_spread", "sample_batches"}; spread = the
                                 largest relative miss of the fitted line on the sample
"""


def plan_job(job: Any, processor: Any = None) -> Any:
    """The :class:`~batchmem.plan.Plan` of a loaded job: its function, source, backend and setup,
    on sample batches; writes nothing to ``output.path``. Given the run's ``processor``, the plan's
    workers are kept for its run (``batchmem run --plan``: the run does not start them again)."""
    fn = job.load_function()
    keep = processor is not None
    processor = processor or job.build_processor(progress=False)
    source = job.build_source()
    try:
        return processor.plan(source, fn, output=job.output.path, output_format=job.output.format, keep_workers=keep)
    finally:
        if isinstance(source, SourceBase):  # a job's python source may be any iterable
            source.close()


def echo_plan(job: Any, forecast: Any) -> None:
    """The human table of ``forecast`` for ``job``, then the ready lines."""
    click.echo(f"plan: {job.name}: {job.source.type} source -> {job.function}")
    for line in forecast.lines():
        click.echo(line)


def plan(job_file: Path, overrides: tuple[str, ...], as_json: bool) -> int:
    """Forecast a job before it runs: wall time, peak memory, the memory limit to ask for.

    Weighs the whole source cheaply (len() of a list, byte offsets of CSV/JSONL rows, Parquet
    row groups; a generator is consumed once, and the plan says so), runs the job's own function
    in its own backend and setup on a few sample batches (light, median, heavy, the heaviest item
    alone), fits a baseline plus bytes and seconds per weight unit, and prints the forecast with
    ready lines for SLURM, Kubernetes, docker and the job file. Writes nothing to the job's output;
    the measurements go into the history, so the next run starts warm.

    \b
    Examples:
      batchmem plan job.yaml
      batchmem plan job.yaml --json
      batchmem plan job.yaml --set execution.n_jobs=2
    """
    from .job import load_job

    job = load_job(job_file, overrides, resume=True)  # an existing output is fine: plan never touches it
    forecast = plan_job(job)
    if as_json:
        import orjson

        click.echo(orjson.dumps(forecast.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        echo_plan(job, forecast)
    return 0


def add_plan_command(group: click.Group, set_option: Any, verbosity_options: Any) -> None:
    """Register ``plan`` on ``group`` with the CLI's shared ``--set`` and ``-v/-q`` options."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print the forecast as one JSON object (keys below)."
    )(plan)
    command = verbosity_options(set_option(command))
    command = click.argument("job_file", metavar="JOB", type=click.Path(dir_okay=False, path_type=Path))(command)
    group.command("plan", short_help="Forecast a job's time, peak memory and memory limit.", epilog=KEYS_HELP)(command)
