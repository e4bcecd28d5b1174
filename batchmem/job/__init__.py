"""Job files: a YAML document that describes one batch run, validated into a :class:`Job`.

A job file names a source of items, a function to apply, how to batch and
execute, and where the results go::

    name: flights_clean                 # operation name: history + stats key
    source:
      type: csv                         # jsonl | csv | parquet | python
      path: data/flights.csv.zip        # relative to this file's folder
      usecols: [year, month, day, dep_time, carrier]
    function: transform:clean           # module:callable, imported with this folder on sys.path
    batched: true                       # fn(DataFrame chunk) -> DataFrame | list
    batching:
      memory_limit: 2GiB                # size string, int bytes, or a fraction 0<f<=1 of the detected limit
    output:
      path: out/flights.jsonl

The package has one module per step:

- :mod:`~batchmem.job.schema`: the pydantic models (unknown keys are errors);
- :mod:`~batchmem.job.load`: :func:`load_job` (``yaml.safe_load``, ``--set``
  overrides, one-line :class:`~batchmem.errors.JobFileError` messages naming the
  field as a dotted path such as ``batching.min_batch_size``);
- :mod:`~batchmem.job.actions`: what a job does (its function, source and
  processor, file checks) and :func:`run_job`;
- :mod:`~batchmem.job.reference`: :func:`job_reference_markdown`, the key table
  of the README.
"""

from __future__ import annotations

from ..callables import import_callable
from .actions import run_job
from .load import load_job
from .reference import job_reference_markdown
from .schema import BatchingConfig, ExecutionConfig, Job, OutputConfig, SourceConfig

__all__ = [
    "BatchingConfig",
    "ExecutionConfig",
    "Job",
    "OutputConfig",
    "SourceConfig",
    "import_callable",
    "job_reference_markdown",
    "load_job",
    "run_job",
]
