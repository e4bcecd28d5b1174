"""Run reports: a real run -> stats JSON -> text / JSON / Markdown / HTML, figures checked against the run."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from batchmem import BatchOptimizer, BatchProcessor, RunStats
from batchmem.errors import ConfigError
from batchmem.report import (
    SHARED_FIGURES,
    batches_path_for,
    load_report,
    render_html,
    render_json,
    render_markdown,
    render_text,
    write_report,
)
from batchmem.units import format_bytes

N_ITEMS, BATCH = 1000, 100


def square_padded(x: int) -> dict:
    """A known function: a small dict per item."""
    return {"x": x, "y": x * x, "pad": "." * 64}


@pytest.fixture
def known_run(tmp_path):
    """1000 items in fixed batches of 100 (auto_optimize=False): exactly 10 batches of 100."""
    proc = BatchProcessor(batch_size=BATCH, auto_optimize=False, progress=False, process_name="known_op")
    result = proc.process(range(N_ITEMS), square_padded, output=tmp_path / "out.jsonl")
    return result


def test_batch_records_are_typed_and_complete(known_run):
    df = known_run.stats.to_dataframe()
    assert len(df) == 10
    assert list(df.columns[:11]) == [
        "index",
        "start_time",
        "items",
        "batch_size",
        "duration_s",
        "peak_bytes",
        "rss_after_bytes",
        "pressure",
        "failed",
        "gc_collections",
        "pid",
    ]
    assert isinstance(df["start_time"].dtype, pd.DatetimeTZDtype)
    assert df["items"].tolist() == [BATCH] * 10
    assert df["batch_size"].tolist() == [BATCH] * 10
    assert df["index"].tolist() == list(range(10))
    assert str(df["pressure"].dtype) == "category"
    assert (df["duration_s"] >= 0).all() and (df["rss_after_bytes"] > 0).all()
    assert df["start_time"].is_monotonic_increasing


def test_size_asked_is_kept_apart_from_items_cut(tmp_path):
    """The tail batch: asked for 300, only 100 left."""
    proc = BatchProcessor(batch_size=300, auto_optimize=False, progress=False)
    res = proc.process(range(700), square_padded, output=tmp_path / "o.jsonl")
    df = res.stats.to_dataframe()
    assert df["items"].tolist() == [300, 300, 100]
    assert df["batch_size"].tolist() == [300, 300, 300]


def test_figures_match_run_stats_and_optimizer_statistics(known_run):
    stats = RunStats.load(known_run.stats.stats_path)
    report = load_report(known_run.stats.stats_path)
    f = report.figures
    assert f["items"] == stats.items == N_ITEMS
    assert f["batches"] == stats.batches == 10
    assert f["learned_batch_size"] == stats.learned_batch_size == BATCH
    assert f["items_per_s"] == pytest.approx(stats.items / stats.duration_s)
    assert f["bytes_per_item"] == stats.bytes_per_item
    assert f["peak_rss_bytes"] == stats.peak_rss_bytes

    # The optimizer's per-operation statistics agree on every shared figure (one run in this history).
    ops = BatchOptimizer().get_batch_statistics("known_op")["operations"]
    hist = ops["known_op"]
    assert hist["runs"] == 1
    for key in SHARED_FIGURES:
        assert hist[key] == pytest.approx(f[key]), key
    assert report.history is not None and report.history["runs"] == 1


def test_shared_figures_agree_with_the_last_run_after_several_runs(tmp_path):
    proc = BatchProcessor(batch_size=BATCH, auto_optimize=False, progress=False, process_name="twice")
    proc.process(range(500), square_padded, output=tmp_path / "a.jsonl")
    res = proc.process(range(N_ITEMS), square_padded, output=tmp_path / "b.jsonl")
    report = load_report(res.stats.stats_path)
    hist = BatchOptimizer().get_batch_statistics("twice")["operations"]["twice"]
    last = hist["last_run"]
    for key in SHARED_FIGURES:
        assert last[key] == pytest.approx(report.figures[key]), key
    assert hist["runs"] == 2 and hist["items"] == 1500 and hist["batches"] == 15
    assert hist["items_per_s"] == pytest.approx(1500 / hist["duration_s"])


def test_auto_optimized_run_learned_size_matches_history(tmp_path):
    proc = BatchProcessor(batch_size=10, progress=False, process_name="auto_op")
    res = proc.process(range(5000), square_padded, output=tmp_path / "o.jsonl")
    report = load_report(res.stats.stats_path)
    hist = BatchOptimizer().get_batch_statistics("auto_op")["operations"]["auto_op"]
    assert report.figures["learned_batch_size"] == hist["learned_batch_size"] == res.stats.learned_batch_size
    assert report.figures["bytes_per_item"] == pytest.approx(hist["bytes_per_item"])


def test_text_json_markdown_renderings(known_run):
    report = load_report(known_run.stats.stats_path)
    text = render_text(report)
    assert "known_op" in text and "1,000" in text and "items/s" in text
    assert format_bytes(report.figures["peak_rss_bytes"]) in text

    data = json.loads(render_json(report))
    assert data["figures"]["items"] == N_ITEMS
    assert data["figures"]["batches"] == 10
    assert data["batches"]["records"] == 10
    assert data["history"]["runs"] == 1

    md = render_markdown(report)
    assert md.startswith("# batchmem run report: known_op")
    assert "| items | 1,000 |" in md


def test_html_is_self_contained_with_plots(known_run, tmp_path):
    report = load_report(known_run.stats.stats_path)
    page = render_html(report)
    assert "data:image/png;base64," in page or "<svg" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    assert "1,000" in page and "known_op" in page
    out = write_report(report, tmp_path / "r.html")
    assert out.read_text(encoding="utf-8") == page


def test_markdown_file_gets_plots_beside_it(known_run, tmp_path):
    report = load_report(known_run.stats.stats_path)
    write_report(report, tmp_path / "r.md")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in (tmp_path / "r.md").read_text() and "(r.png)" in (tmp_path / "r.md").read_text()


def test_issues_and_recommendations_are_escaped_in_html(known_run):
    path = known_run.stats.stats_path
    raw = json.loads(open(path).read())
    raw["issues"] = [
        {
            "kind": "leak",
            "severity": "warning",
            "message": "<script>alert(1)</script> grows",
            "evidence": {"slope_bytes_per_batch": 1024},
        }
    ]
    open(path, "w").write(json.dumps(raw))
    report = load_report(path)
    page = render_html(report, plots=False)
    assert "<script>" not in page
    assert "&lt;script&gt;" in page and "slope_bytes_per_batch=1024" in page
    assert "[warning] leak:" in render_text(report)


def test_missing_or_bad_stats_file_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_report(tmp_path / "nope.stats.json")
    bad = tmp_path / "bad.stats.json"
    bad.write_text('{"x": 1}')
    with pytest.raises(ConfigError, match="not a batchmem stats file"):
        load_report(bad)


def test_missing_matplotlib_names_the_extra(known_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    report = load_report(known_run.stats.stats_path)
    with pytest.raises(ConfigError, match=r'pip install "batchmem\[report\]"'):
        render_html(report)
    assert "known_op" in render_text(report)  # text needs no matplotlib


def test_batches_path_beside_stats():
    assert batches_path_for("/a/out.jsonl.stats.json").name == "out.jsonl.batches.jsonl"
