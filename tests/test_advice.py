"""Advice from the run's own settings and figures: the rules alone, then real runs through the report and the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from batchmem import BatchProcessor
from batchmem.optimizer.advice import RunFigures, RunSettings, run_advice, trend_advice
from batchmem.report import (
    load_report,
    operation_statistics,
    plot_report,
    render_html,
    render_markdown,
    render_memory,
    render_operation_detail,
    render_operations_table,
    render_text,
)
from batchmem.report.memory import memory_status

BAND = (0.2, 2.0)
#: A decimal size such as "191MB", "1.07 GB" or "512 kB" (IEC sizes say KiB, MiB, GiB).
DECIMAL_SIZE = re.compile(r"\d\s?[kKMGT]B\b")


def short_run(**figures) -> RunFigures:
    """10 batches of 20 items that took 1 ms each: far below the 0.2 s band."""
    base = dict(
        items=200,
        batches=10,
        batch_size_median=20,
        batch_size_max=20,
        batch_s_median=0.001,
        memory_bound_batches=0,
        pressure_batches=0,
        memory_limit_bytes=2**30,
        limit_source="user",
    )
    return RunFigures(**{**base, **figures})


# --------------------------------------------------------------------------- the rules, synthetic figures


def test_a_batched_run_is_never_told_to_set_batched():
    at_max = RunSettings(batched=True, auto_optimize=True, max_batch_size=20, target_batch_seconds=BAND)
    recs = run_advice(short_run(), at_max)
    assert len(recs) == 1 and "a larger max_batch_size (now 20)" in recs[0]
    assert not any("batched" in r for r in recs)
    # Batched, optimizing and below max_batch_size: nothing to change, so nothing to say.
    below_max = RunSettings(batched=True, auto_optimize=True, max_batch_size=1000, target_batch_seconds=BAND)
    assert run_advice(short_run(), below_max) == []


def test_an_unbatched_run_is_told_to_batch_and_the_figure_is_quoted():
    recs = run_advice(
        short_run(), RunSettings(batched=False, auto_optimize=True, max_batch_size=1000, target_batch_seconds=BAND)
    )
    assert recs == [
        "batches are short in this run (median batch time 0.001 s, target 0.2-2 s): per-batch "
        "overhead is not amortised; use batched=True (batched: true in a job file; fn called once per batch)"
    ]


def test_fixed_size_runs_get_batch_size_not_max_batch_size():
    fixed = RunSettings(batched=True, auto_optimize=False, batch_size=20, max_batch_size=20, target_batch_seconds=BAND)
    (rec,) = run_advice(short_run(), fixed)
    assert "a larger batch_size (now 20; auto_optimize is off)" in rec and "max_batch_size" not in rec
    long = short_run(batch_s_median=3.5)
    (rec,) = run_advice(long, fixed)
    assert rec.startswith("batches are long in this run (median batch time 3.50 s, target 0.2-2 s)")
    assert "a smaller batch_size (now 20" in rec


def test_unknown_settings_give_no_option_advice():
    """An old stats file: no settings recorded, so no rule that would change one fires."""
    assert run_advice(short_run(), RunSettings()) == []
    assert run_advice(short_run(), RunSettings.from_dict(None)) == []
    assert run_advice(short_run(), RunSettings.from_dict({"batched": "yes", "target_batch_seconds": [1]})) == []


def test_the_run_band_is_the_one_used():
    """A run aiming at 0.0005-0.01 s batches has no short batches at 1 ms."""
    own_band = RunSettings(batched=False, auto_optimize=True, max_batch_size=20, target_batch_seconds=(0.0005, 0.01))
    assert run_advice(short_run(), own_band) == []


def test_memory_rules_check_n_jobs_max_batch_size_and_quote_iec_sizes():
    s = RunSettings(batched=True, max_batch_size=500, n_jobs=1, memory_target_fraction=0.6, target_batch_seconds=BAND)
    recs = run_advice(short_run(memory_bound_batches=8, bytes_per_item=150_000), s)
    assert len(recs) == 1
    assert "the memory target (60% of the limit) set the size of 8 of 10 batches" in recs[0]
    assert "(now 1.0GiB from user)" in recs[0] and "146.5KiB" in recs[0]
    pressure = run_advice(short_run(pressure_batches=3), s)[0]
    assert "after 3 of 10 batches" in pressure and "n_jobs" not in pressure  # n_jobs is already 1
    parallel = RunSettings(n_jobs=4, target_batch_seconds=BAND)
    assert "fewer n_jobs (now 4)" in run_advice(short_run(pressure_batches=3), parallel)[0]
    capped = run_advice(short_run(memory_errors=2, ceiling=250), s)[0]
    assert "2 MemoryError(s)" in capped and "capped at 250 items" in capped
    assert "set max_batch_size to 250 (now 500)" in capped
    alone = run_advice(short_run(memory_errors=1), s)[0]
    assert "did not fit on their own" in alone and "max_batch_size" not in alone
    assert not DECIMAL_SIZE.search(" ".join(recs + [capped, alone]))


def test_trends_quote_iec_sizes_and_the_report_throughput():
    runs = [{"bytes_per_item": b, "items_per_s": r} for b, r in [(1000, 500.0), (1100, 400.0), (2048, 300.0)]]
    grew, fell = trend_advice(runs)
    assert grew == (
        "bytes per item grew 105% over the last 3 runs (1000B -> 2.0KiB): inputs grew, or memory leaks across items"
    )
    assert fell == "throughput fell 40% over the last 3 runs (500.0 -> 300.0 items/s)"


# --------------------------------------------------------------------------- real runs


def triple(x: int) -> dict:
    return {"x": 3 * x}


def triple_batch(xs: list) -> list:
    return [{"x": 3 * x} for x in xs]


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("BATCHMEM_HOME", str(h))
    return h


def _runs(tmp_path, batched: bool):
    """3,000 cheap items in batches capped at 30: every batch far below 0.2 s."""
    fn = triple_batch if batched else triple
    proc = BatchProcessor(
        batch_size=30,
        max_batch_size=30,
        batched=batched,
        progress=False,
        process_name=f"cheap_{'batched' if batched else 'items'}",
    )
    return proc.process(range(3000), fn, output=tmp_path / f"{batched}.jsonl")


def _figure_row(text: str, label: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith(label)]
    return line.strip()[len(label) :].strip()


@pytest.mark.parametrize("batched", [True, False])
def test_real_run_advice_checks_batched_and_quotes_the_report_figure(home, tmp_path, batched):
    result = _runs(tmp_path, batched)
    assert result.stats.settings["batched"] is batched and result.stats.settings["max_batch_size"] == 30
    report = load_report(result.stats.stats_path)
    text = render_text(report)
    shown = _figure_row(text, "median batch time (fn only)")
    (short,) = [r for r in report.recommendations if r.startswith("batches are short")]
    assert f"(median batch time {shown}, target 0.2-2 s)" in short
    assert "a larger max_batch_size (now 30)" in short
    assert ("batched=True" in short) is (not batched)
    # batchmem stats (the history) shows and quotes the same figure.
    fig = operation_statistics(report.operation)["operations"][report.operation]
    detail = render_operation_detail(report.operation, fig)
    assert _figure_row(detail, "median batch time, last run") == shown
    (stored,) = [r for r in fig["recommendations"] if r.startswith("batches are short")]
    assert f"(median batch time {shown}, target 0.2-2 s)" in stored
    assert ("batched=True" in stored) is (not batched)


def test_cli_report_of_a_batched_run_has_no_batched_advice(home, tmp_path):
    result = _runs(tmp_path, batched=True)
    env = dict(os.environ, BATCHMEM_HOME=str(home))
    out = subprocess.run(
        [sys.executable, "-m", "batchmem.cli", "report", result.stats.stats_path],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    shown = _figure_row(out.stdout, "median batch time (fn only)")
    assert f"(median batch time {shown}, target 0.2-2 s)" in out.stdout
    assert "batched=True" not in out.stdout


def test_no_decimal_sizes_in_reports_stats_memory_and_plot_axes(home, tmp_path):
    result = _runs(tmp_path, batched=True)
    report = load_report(result.stats.stats_path)
    stats = operation_statistics()
    texts = {
        "text": render_text(report),
        "markdown": render_markdown(report),
        "html": render_html(report, plots=False),
        "stats table": render_operations_table(stats),
        "stats detail": render_operation_detail(report.operation, stats["operations"][report.operation]),
        "memory": render_memory(memory_status(verbose=True)),
    }
    for name, text in texts.items():
        assert not DECIMAL_SIZE.search(text), (name, DECIMAL_SIZE.search(text))
    assert "iB" in texts["text"] and "iB" in texts["memory"]

    fig = plot_report(report)
    ax_mem = fig.axes[0]
    locs = [v for v in ax_mem.yaxis.get_major_locator()() if v >= 0]
    labels = ax_mem.yaxis.get_major_formatter().format_ticks(locs)
    assert labels and all(re.fullmatch(r"\d+(\.\d+)?(B|KiB|MiB|GiB|TiB)", t) for t in labels), labels
    legend = " ".join(t.get_text() for t in ax_mem.get_legend().get_texts())
    assert "iB" in legend and not DECIMAL_SIZE.search(legend)
