"""A loky worker that shuts down cleanly runs every atexit handler, then skips the interpreter's teardown.

The run is a script in a subprocess, so that its loky worker exits the way it does at the end of a
real run (the parent's exit shuts the pool down). The worker's module registers what a library
loaded there would: an atexit handler, a logging file handler with a buffered record, and a module
global whose ``__del__`` only the interpreter's teardown (freeing each module's objects) would call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

WORKER_MODULE = """
import atexit, logging, os

LOG = os.environ["EXIT_LOG"]


def note(event):
    with open(LOG, "a") as f:
        f.write(f"{event} {os.getpid()}\\n")


class FreedAtTeardown:
    def __del__(self, open=open, pid=os.getpid):  # bound now: the teardown clears builtins and modules
        with open(LOG, "a") as f:
            f.write(f"module-teardown {pid()}\\n")


def setup():
    global held
    held = FreedAtTeardown()
    atexit.register(note, "atexit")
    handler = logging.FileHandler(LOG + ".logging", delay=True)
    logging.getLogger("exit_check").addHandler(handler)
    return {"factor": 2}


def teardown(state):
    note("teardown")
    logging.getLogger("exit_check").warning("logged by %d", os.getpid())


def double(x, state=None):
    return x * state["factor"]
"""

SCRIPT = """
import exit_fns
from batchmem import BatchProcessor

proc = BatchProcessor(n_jobs=1, backend="loky", batch_size=10, auto_optimize=False, progress=False,
                      use_history=False, setup=exit_fns.setup, teardown=exit_fns.teardown)
result = proc.process(range(50), exit_fns.double)
assert list(result) == [2 * x for x in range(50)]
print(sorted(set(result.stats.to_dataframe()["pid"])))
"""


def test_clean_worker_exit_runs_atexit_and_teardown_but_not_the_module_teardown(tmp_path: Path) -> None:
    (tmp_path / "exit_fns.py").write_text(WORKER_MODULE)
    log = tmp_path / "exit.log"
    env = {**os.environ, "EXIT_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    (worker,) = eval(done.stdout.strip().splitlines()[-1])
    assert worker != os.getpid()
    events = [line.split() for line in log.read_text().splitlines()]
    # The setup's teardown and the module's own atexit handler ran in the worker, the logging
    # handler was flushed to its file, and the module's objects were not freed one by one.
    assert sorted(events) == sorted([["teardown", str(worker)], ["atexit", str(worker)]])
    assert (tmp_path / "exit.log.logging").read_text() == f"logged by {worker}\n"
