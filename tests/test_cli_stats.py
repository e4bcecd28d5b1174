"""`batchmem stats`, `report` and `memory` run as real subprocesses (python -m batchmem.cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from batchmem import BatchProcessor


def record(x: int) -> dict:
    return {"x": x, "pad": "." * 32}


def batchmem(home, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, BATCHMEM_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "batchmem.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A BATCHMEM_HOME shared by this process (the runs) and the subprocesses (the CLI)."""
    h = tmp_path / "home"
    monkeypatch.setenv("BATCHMEM_HOME", str(h))
    return h


@pytest.fixture
def two_ops(home, tmp_path):
    """Two operations in the history: "alpha" (1000 items in 10 fixed batches of 100, twice) and "beta"."""
    alpha = BatchProcessor(batch_size=100, auto_optimize=False, progress=False, process_name="alpha")
    alpha.process(range(1000), record, output=tmp_path / "a1.jsonl")
    res = alpha.process(range(1000), record, output=tmp_path / "a2.jsonl")
    BatchProcessor(progress=False, process_name="beta").process(range(300), record, output=tmp_path / "b.jsonl")
    return res


def test_stats_table_lists_every_operation(home, two_ops):
    out = batchmem(home, "stats")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["operation", "runs", "items"]
    for header in ("items/s", "bytes/item", "learned batch", "peak RSS", "leaks", "last run"):
        assert header in lines[0]
    alpha = next(line for line in lines if line.startswith("alpha"))
    assert alpha.split()[1:3] == ["2", "2,000"]
    assert any(line.startswith("beta") for line in lines)


def test_stats_json_matches_the_optimizer(home, two_ops):
    from batchmem import BatchOptimizer

    out = batchmem(home, "stats", "alpha", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    fig = data["operations"]["alpha"]
    expected = BatchOptimizer().get_batch_statistics("alpha")["operations"]["alpha"]
    for key in ("runs", "items", "batches", "items_per_s", "bytes_per_item", "learned_batch_size", "peak_rss_bytes"):
        assert fig[key] == pytest.approx(expected[key]), key
    assert fig["runs"] == 2 and fig["items"] == 2000 and fig["batches"] == 20 and fig["learned_batch_size"] == 100
    assert fig["last_run"]["items_per_s"] == pytest.approx(two_ops.stats.items_per_s)
    assert fig["last_run"]["bytes_per_item"] == pytest.approx(two_ops.stats.bytes_per_item)


def test_stats_one_operation_and_unknown_operation(home, two_ops):
    out = batchmem(home, "stats", "alpha")
    assert out.returncode == 0, out.stderr
    assert "operation 'alpha'" in out.stdout and "learned batch size (items)" in out.stdout
    missing = batchmem(home, "stats", "nope")
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: OPERATION: no history for 'nope'")
    assert "Traceback" not in missing.stderr


def test_stats_clear_forgets_one_operation(home, two_ops):
    out = batchmem(home, "stats", "--clear", "alpha")
    assert out.returncode == 0, out.stderr
    assert "cleared the history of 'alpha' (2 runs)" in out.stdout
    table = batchmem(home, "stats").stdout
    assert "alpha" not in table and "beta" in table
    again = batchmem(home, "stats", "--clear", "alpha")
    assert again.returncode == 0 and "nothing to clear" in again.stdout
    assert batchmem(home, "stats", "--clear").returncode == 2


def test_stats_with_empty_history(home):
    out = batchmem(home, "stats")
    assert out.returncode == 0 and "no operations" in out.stdout


def test_report_text_json_html_markdown(home, two_ops, tmp_path):
    stats_path = two_ops.stats.stats_path
    text = batchmem(home, "report", stats_path)
    assert text.returncode == 0, text.stderr
    assert "batchmem run report: alpha" in text.stdout and "1,000" in text.stdout

    js = batchmem(home, "report", stats_path, "--json")
    assert js.returncode == 0, js.stderr
    data = json.loads(js.stdout)
    assert data["figures"]["items"] == 1000 and data["figures"]["batches"] == 10
    assert data["figures"]["items_per_s"] == pytest.approx(two_ops.stats.items_per_s)

    html_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    out = batchmem(home, "report", stats_path, "--html", str(html_path), "--markdown", str(md_path))
    assert out.returncode == 0, out.stderr
    page = html_path.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "https://" not in page and "http://" not in page
    assert md_path.read_text().startswith("# batchmem run report: alpha")
    assert (tmp_path / "r.png").exists()

    missing = batchmem(home, "report", str(tmp_path / "none.stats.json"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: STATS_JSON:")


def test_memory_and_memory_verbose(home):
    out = batchmem(home, "memory")
    assert out.returncode == 0, out.stderr
    for word in ("rss:", "available:", "limit:", "pressure:"):
        assert word in out.stdout
    assert "gc:" not in out.stdout
    verbose = batchmem(home, "memory", "--details")
    assert verbose.returncode == 0, verbose.stderr
    assert "gc:" in verbose.stdout and "threshold" in verbose.stdout and "tracemalloc" in verbose.stdout
    js = json.loads(batchmem(home, "memory", "--json").stdout)
    assert (
        js["limit_bytes"] > 0
        and js["limit_source"]
        and js["pressure"] in ("normal", "warning", "critical", "emergency")
    )


def test_job_file_report_key_writes_the_html_report(home, tmp_path):
    (tmp_path / "fns.py").write_text("def double(row):\n    return {'y': 2 * row['x']}\n")
    (tmp_path / "items.jsonl").write_text("".join(f'{{"x": {i}}}\n' for i in range(500)))
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: reported_job\n"
        "source: {type: jsonl, path: items.jsonl}\n"
        "function: fns:double\n"
        "batching: {auto_optimize: false, batch_size: 100}\n"
        "output: {path: out.jsonl}\n"
        "progress: false\n"
        "report: report.html\n"
    )
    out = batchmem(home, "run", str(job))
    assert out.returncode == 0, out.stderr
    assert f"report: {tmp_path / 'report.html'}" in out.stdout
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "batchmem run report: reported_job" in page and "data:image/png;base64," in page
    assert "500" in page
