"""What a validated job does: import its function, build its source and processor, check its files, run.

:class:`JobActions` is mixed into :class:`batchmem.job.Job`, so these are
``Job`` methods; they read the job's fields and never change them. Every
problem a user can cause raises a one-line
:class:`~batchmem.errors.JobFileError` naming the job-file key.

:meth:`JobActions.run_config` hands the job's option groups (built from
:mod:`batchmem.options` when the job was validated) to
:class:`~batchmem.BatchProcessor` as they are.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends import check_backend, local_workers
from ..backends.worker_setup import accepts_state
from ..callables import import_callable
from ..errors import ConfigError, JobFileError, one_line
from ..io.checkpoint import fingerprint
from ..io.resume import ResumeDecision, decide_resume
from ..options import RunConfig

if TYPE_CHECKING:
    from .schema import Job

__all__ = ["JobActions", "run_job"]


def _import(ref: str, field: str, base_dir: Path) -> Any:
    """Import a job file's ``module:callable`` with its folder on sys.path; JobFileError naming ``field``."""
    return import_callable(ref, field=field, base_dir=base_dir, error=JobFileError)


class JobActions:
    """The behaviour of :class:`~batchmem.job.Job` (its fields are declared in :mod:`batchmem.job.schema`)."""

    @property
    def base_dir(self: Job) -> Path:
        """Folder of the job file: relative paths were resolved against it; it goes on sys.path for imports."""
        return self._base_dir

    def load_function(self: Job) -> Any:
        """Import ``function`` (job folder on sys.path) once and return the callable; JobFileError naming
        ``function``."""
        if self._function is None:
            self._function = _import(self.function, "function", self.base_dir)
        return self._function

    def build_source(self: Job) -> Any:
        """The items to process: a lazy pandas reader for csv/jsonl/parquet, the callable's return value for python."""
        src = self.source
        if src.type == "python":
            factory = _import(src.path, "source.path", self.base_dir)
            try:
                return factory(**src.options)
            except TypeError as exc:
                raise JobFileError(
                    f"source.options: calling {src.path} failed: {one_line(exc)}; match the options to its parameters"
                ) from exc
        from ..io import readers

        reader = {"csv": readers.read_csv, "jsonl": readers.read_jsonl, "parquet": readers.read_parquet}[src.type]
        try:
            return reader(src.path, **src.reader_kwargs())
        except TypeError as exc:
            raise JobFileError(
                f"source.options: the {src.type} reader rejected the options: {one_line(exc)}; "
                "remove or rename the option"
            ) from exc

    def run_config(self: Job, progress: bool | None = None) -> RunConfig:
        """The option groups of this job, checked when the job was validated.

        The ``module:callable`` references of ``batching.weight``, ``setup`` and ``teardown``
        are imported here (job folder on sys.path, errors naming the key); ``progress``
        overrides the file's ``progress``.
        """
        config = self._config
        batching, execution, output = config.batching, config.execution, config.output
        if isinstance(batching.weight, str) and batching.weight != "auto":
            batching = replace(batching, weight=_import(batching.weight, "batching.weight", self.base_dir))
        refs = {k: getattr(execution, k) for k in ("setup", "teardown")}
        execution = replace(execution, **{k: _import(v, k, self.base_dir) for k, v in refs.items() if v is not None})
        if progress is not None:
            output = replace(output, progress=progress)
        return replace(config, batching=batching, execution=execution, output=output)

    def build_processor(self: Job, progress: bool | None = None) -> Any:
        """A :class:`~batchmem.processor.BatchProcessor` configured from this job (``progress`` overrides the file)."""
        from ..processor import BatchProcessor

        try:
            return BatchProcessor(**self.run_config(progress).groups())
        except JobFileError:
            raise
        except ConfigError as exc:  # the processor names its own option; say it is about this job
            raise JobFileError(one_line(exc)) from exc

    def check_extras(self: Job) -> None:
        """The optional packages this job needs are installed: matplotlib for ``report``, pyarrow for
        Parquet, distributed for a dask scheduler. Raises JobFileError naming the key and the
        ``pip install`` command, before any work is done."""
        needs = []
        if self.report is not None:
            needs.append(("report", "matplotlib", "report", "plots"))
        if self.output.format == "parquet" or self.source.type == "parquet":
            key = "output.format" if self.output.format == "parquet" else "source.type"
            needs.append((key, "pyarrow", "parquet", "parquet files"))
        try:  # the backend's own check (dask: distributed installed)
            check_backend(self.execution.backend)
        except ConfigError as exc:
            raise JobFileError(f"execution.{one_line(exc)}") from None
        for key, module, extra, what in needs:
            try:
                __import__(module)
            except ImportError:
                raise JobFileError(
                    f'{key}: {what} need {module}, which is not installed; pip install "batchmem[{extra}]"'
                ) from None

    def check_ready(self: Job) -> None:
        """What ``batchmem validate`` checks beyond the file: the extras (:meth:`check_extras`), the
        function and setup import, and this process with them loaded fits under the memory limit
        (:meth:`~batchmem.processor.BatchProcessor.check_fits`, each worker process counted as holding
        as much; the setup is imported, not run). Raises JobFileError or
        :class:`~batchmem.errors.LimitTooSmallError`."""
        self.check_extras()
        self.load_function()
        processor = self.build_processor(progress=False)
        workers = local_workers(processor.config.execution)
        if workers is not None:  # a cluster's workers have limits of their own; fewer start when fewer fit
            strict = processor.config.execution.n_jobs_strict
            processor.check_fits(workers=workers if strict else min(workers, 1), run_setup=False)

    def fingerprint_fields(self: Job) -> dict[str, Any]:
        """The settings that decide what the output lines hold, for the resume check.

        ``batchmem run --resume`` refuses (unless ``--force-resume``) to continue an
        output whose checkpoint was written with different values: the function and
        setup references, ``batched``, the source (type, path, reader options and the
        file's size in bytes) and the output encoding (format, json_default). Batch
        sizes, memory limits, execution and ``on_error`` may change between runs.
        """
        src = self.source
        fields: dict[str, Any] = {"function": self.function, "setup": self.setup, "batched": self.batched}
        for key, value in src.model_dump(mode="json").items():
            fields[f"source.{key}"] = value
        if src.type != "python":
            try:
                fields["source.size_bytes"] = Path(src.path).stat().st_size
            except OSError:
                fields["source.size_bytes"] = None
        fields["output.format"] = self.output.format
        fields["output.json_default"] = self.output.json_default
        return fields

    # ----------------------------------------------------------------- checks

    def check_files(self: Job, *, resume: bool = False) -> None:
        """Check what validation cannot: the source file is readable, the output folders are writable,
        an existing output has ``overwrite: true`` (or ``resume``). Raises JobFileError naming the field."""
        src = self.source
        if src.type != "python":
            path = Path(src.path)
            if not path.exists():
                raise JobFileError(
                    f"source.path: file not found: {path}; fix the path "
                    f"(relative paths resolve against {self.base_dir})"
                )
            if not path.is_file():
                raise JobFileError(f"source.path: {path} is not a file; point source.path at a {src.type} file")
            if not os.access(path, os.R_OK):
                raise JobFileError(f"source.path: {path} is not readable; fix its permissions")
        _check_writable_folder(self.output.path, "output.path")
        if self.output.errors is not None:
            _check_writable_folder(self.output.errors, "output.errors")
        if self.report is not None:
            _check_writable_folder(self.report, "report")
        out = self.output.path
        if out.is_dir():
            raise JobFileError(f"output.path: {out} is a folder; name a file such as {out / 'results.jsonl'}")
        if not resume:
            self._check_output_free()

    def _check_output_free(self: Job) -> None:
        """An existing output needs ``overwrite: true`` (or a resume); JobFileError naming ``output.path``."""
        out = self.output.path
        if out.exists() and not self.output.overwrite:
            raise JobFileError(
                f"output.path: {out} already exists; run with --restart to replace it (or set output.overwrite: true), "
                "or with --resume to continue it"
            )

    def resume_decision(self: Job, resume: bool | str) -> ResumeDecision:
        """Whether this run continues the job's output (:func:`~batchmem.io.resume.decide_resume`, from the
        checkpoint loaded once and this job's fingerprint). ``"auto"`` that starts afresh over an existing
        output needs ``overwrite: true`` (JobFileError naming ``output.path`` otherwise)."""
        decision = decide_resume(self.output.path, fingerprint(self.fingerprint_fields()), resume)
        if resume == "auto" and not decision.resume:
            self._check_output_free()
        return decision

    def check_source(self: Job) -> None:
        """Open a csv/jsonl/parquet source and close it again (reads the header or footer only),
        so bad reader options (``usecols`` naming a missing column, ...) show up before a run."""
        if self.source.type == "python":
            return
        try:
            source = self.build_source()
        except JobFileError:
            raise
        except ConfigError as exc:
            message = one_line(exc)
            for key in self.source.options:  # the readers name options as source.<key>; say where they are set
                if message.startswith(f"source.{key}:"):
                    message = f"source.options.{key}:" + message[len(f"source.{key}:") :]
            raise JobFileError(message) from exc
        source.close()

    def check_imports(self: Job) -> None:
        """Import ``function`` (and a python source's callable) to prove they exist and are callable."""
        if self.source.type == "python":
            _import(self.source.path, "source.path", self.base_dir)
        fn = self.load_function()
        for key in ("setup", "teardown"):
            ref = getattr(self, key)
            if ref is not None:
                _import(ref, key, self.base_dir)
        if self.setup is not None and not accepts_state(fn):
            raise JobFileError(
                f"function: with setup, {self.function} must accept the keyword argument state "
                "(def fn(item, state): ...); add it or remove setup"
            )


def _check_writable_folder(path: Path, field: str) -> None:
    """The folder of ``path`` (or its nearest existing parent: missing folders are created) must be writable."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise JobFileError(f"{field}: {folder} is not a folder; change {field}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise JobFileError(f"{field}: folder {folder} is not writable; fix its permissions or change {field}")


def run_job(
    job: Job, resume: bool | str | ResumeDecision = False, *, progress: bool | None = None, processor: Any = None
) -> Any:
    """Run ``job`` (loaded and checked by :func:`~batchmem.job.load_job`) and return the processor's BatchResult.

    Decides the resume once (:meth:`JobActions.resume_decision`, unless given a decision), imports the
    function, builds the source and the processor, and calls ``processor.process(source, fn, output=...,
    output_format=..., errors_output=..., overwrite=..., resume=decision)``; the decision carries
    :meth:`Job.fingerprint_fields`, so resuming a changed job is refused unless ``resume="force"``.
    ``processor``: one built by :meth:`JobActions.build_processor` already (``run --plan`` keeps the
    plan's workers in it). Errors the user can cause raise :class:`~batchmem.errors.BatchmemError`
    subclasses; an item failing under ``on_error: raise`` raises :class:`~batchmem.errors.ItemFailedError`.
    """
    decision = resume if isinstance(resume, ResumeDecision) else job.resume_decision(resume)
    job.check_extras()  # a missing package fails now, not after the work
    fn = job.load_function()
    processor = processor or job.build_processor(progress=progress)
    source = job.build_source()
    return processor.process(
        source,
        fn,
        output=job.output.path,
        output_format=job.output.format,
        errors_output=job.output.errors,
        overwrite=job.output.overwrite,
        resume=decision,
    )
