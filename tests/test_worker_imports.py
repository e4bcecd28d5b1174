"""What a worker process imports to run a batch: not the processor, the heap analyzer or numpy."""

from __future__ import annotations

import subprocess
import sys


def test_a_worker_imports_neither_the_analyzer_nor_numpy():
    code = (
        "import sys, batchmem.backends.worker\n"
        "heavy = ['numpy', 'pandas', 'pydantic', 'importlib.metadata', 'batchmem.heap.analyzer',\n"
        "         'batchmem.processor', 'batchmem.run']\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == []


def test_the_package_names_still_resolve():
    import batchmem
    import batchmem.heap

    for name in batchmem.__all__:
        assert getattr(batchmem, name) is not None, name
    for name in batchmem.heap.__all__:
        assert getattr(batchmem.heap, name) is not None, name
    assert set(batchmem.__all__) <= set(dir(batchmem))
