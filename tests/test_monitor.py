"""Tests of batchmem.heap.monitor against real memory, real processes and real rlimits."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import pickle
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest

from batchmem.errors import BatchmemError, ConfigError
from batchmem.heap import (
    MemoryLimit,
    MemoryMonitor,
    MemorySample,
    PeakMemoryTracker,
    PressureLevel,
    PressureThresholds,
    current_rss_bytes,
    detect_memory_limit,
    parse_size,
    resolve_memory_limit,
)
from batchmem.heap import monitor as monitor_mod

MiB = 2**20
ALLOC = 200 * MiB  # bytes allocated and touched by the allocation tests
CHILD_ALLOC = 100 * MiB
REPO = Path(__file__).resolve().parents[1]

LINUX_PROCFS = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")


def _clear_refs_writable() -> bool:
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, b"5")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _touched(nbytes: int) -> np.ndarray:
    """An array of ``nbytes`` filled with ones, so every page is resident."""
    a = np.ones(nbytes // 8, dtype=np.float64)
    assert a.sum() == nbytes // 8
    return a


# --- current_rss_bytes ------------------------------------------------------------


def test_current_rss_sees_allocation_and_release():
    before = current_rss_bytes()
    a = _touched(ALLOC)
    during = current_rss_bytes()
    del a
    after = current_rss_bytes()
    assert during - before >= 0.9 * ALLOC
    assert during - after >= 0.9 * ALLOC  # large arrays are munmap-ed on free


def test_current_rss_agrees_with_psutil():
    ours = current_rss_bytes()
    theirs = psutil.Process().memory_info().rss
    assert abs(ours - theirs) < 8 * MiB


# --- PeakMemoryTracker ------------------------------------------------------------


needs_vmhwm = pytest.mark.skipif(
    not (LINUX_PROCFS and _clear_refs_writable()), reason="needs writable /proc/self/clear_refs"
)


@needs_vmhwm
def test_peak_vmhwm_sees_allocation_freed_inside_block():
    with PeakMemoryTracker() as t:
        a = _touched(ALLOC)
        del a
    assert t.method == "vmhwm"
    assert t.peak_delta_bytes >= 0.9 * ALLOC
    assert t.peak_delta_bytes < 1.5 * ALLOC
    # freed inside the block: only the peak sees it
    assert t.end_rss_bytes - t.start_rss_bytes < 0.25 * ALLOC
    assert t.peak_rss_bytes >= t.end_rss_bytes
    assert t.peak_rss_bytes == t.start_rss_bytes + t.peak_delta_bytes


@needs_vmhwm
def test_peak_vmhwm_is_reset_on_enter():
    # raise the process high-water mark before the block; the block itself allocates nothing
    a = _touched(ALLOC)
    del a
    with PeakMemoryTracker() as t:
        pass
    assert t.method == "vmhwm"
    assert t.peak_delta_bytes < 0.25 * ALLOC


def test_peak_sampling_fallback_sees_allocation_freed_inside_block():
    with PeakMemoryTracker(interval_s=0.002, force_sampling=True) as t:
        a = _touched(ALLOC)
        # the sampler is a thread: keep the peak alive for a few periods so it runs
        for _ in range(5):
            a.sum()
        del a
    assert t.method == "sampling"
    assert t.peak_delta_bytes >= 0.9 * ALLOC
    assert t.end_rss_bytes - t.start_rss_bytes < 0.25 * ALLOC
    assert t._thread is None  # sampler stopped and joined


@pytest.mark.parametrize("force_sampling", [False, True])
def test_peak_without_allocation_is_small(force_sampling):
    with PeakMemoryTracker(force_sampling=force_sampling) as t:
        sum(range(1000))
    assert t.peak_delta_bytes < 0.25 * ALLOC


@pytest.mark.parametrize("force_sampling", [False, True])
def test_peak_results_only_after_block_and_on_error(force_sampling):
    t = PeakMemoryTracker(force_sampling=force_sampling)
    with pytest.raises(RuntimeError):
        _ = t.peak_rss_bytes
    with pytest.raises(ZeroDivisionError):
        with t:
            with pytest.raises(RuntimeError):
                _ = t.peak_delta_bytes
            a = _touched(ALLOC)  # noqa: F841  (held until the block raises)
            for _ in range(5):
                a.sum()
            raise ZeroDivisionError
    del a
    assert t.peak_delta_bytes >= 0.9 * ALLOC  # measured even though the block failed
    # reusable for the next block, with fresh numbers
    with t:
        pass
    assert t.peak_delta_bytes < 0.25 * ALLOC


def test_peak_tracker_refuses_double_enter_and_bad_interval():
    t = PeakMemoryTracker()
    with t:
        with pytest.raises(RuntimeError):
            t.__enter__()
    with pytest.raises(ConfigError, match="interval_s"):
        PeakMemoryTracker(interval_s=0)


# --- process tree ---------------------------------------------------------------------


def _child_allocate(go, allocated, stop):
    go.wait(60)
    a = np.ones(CHILD_ALLOC // 8)
    assert a.sum() == CHILD_ALLOC // 8
    allocated.set()
    stop.wait(60)


def test_tree_rss_includes_child_process():
    ctx = mp.get_context("spawn")
    go, allocated, stop = ctx.Event(), ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_child_allocate, args=(go, allocated, stop), daemon=True)
    proc.start()
    try:
        tree = MemoryMonitor(include_children=True)
        alone = MemoryMonitor(include_children=False)
        # wait until the child interpreter is up and idle, then measure
        child = psutil.Process(proc.pid)
        for _ in range(200):
            if child.memory_info().rss > 10 * MiB:
                break
            stop.wait(0.05)
        tree_before, alone_before = tree.rss_bytes(), alone.rss_bytes()
        assert tree_before > alone_before  # the idle child is counted
        go.set()
        assert allocated.wait(60)
        tree_after, alone_after = tree.rss_bytes(), alone.rss_bytes()
        sample = tree.sample()
        assert tree_after - tree_before >= 0.9 * CHILD_ALLOC
        assert abs(alone_after - alone_before) < 0.25 * CHILD_ALLOC
        assert sample.rss_bytes >= tree_before + 0.9 * CHILD_ALLOC
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    # after the child exits it is no longer counted
    assert MemoryMonitor().rss_bytes() < tree_after - 0.9 * CHILD_ALLOC


def test_pressure_counts_pages_a_forked_child_shares_once():
    """A forked child maps the parent's 300 MiB copy-on-write: the summed RSS reads it twice and would
    escalate to warning; from warning up the sample takes the tree's Pss, which counts it once."""
    block = np.ones((300 * MiB) // 8)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only waits
        os.read(r, 1)
        os._exit(0)
    try:
        tree = MemoryMonitor(memory_limit=int(current_rss_bytes() * 1.6))
        summed = tree.rss_bytes()
        assert summed >= 1.9 * current_rss_bytes() and summed / tree.limit.bytes >= 1.0  # emergency, summed
        sample = tree.sample()
        assert sample.rss_bytes < 0.7 * summed and sample.pressure == PressureLevel.NORMAL
        quiet = MemoryMonitor(memory_limit=10 * summed)  # far from warning: the cheap sum is kept
        assert quiet.sample().rss_bytes >= 0.95 * summed
    finally:
        os.write(w, b"x")
        os.waitpid(pid, 0)
        del block


# --- limits -----------------------------------------------------------------------


def _detect_in_child(setup: str) -> dict:
    """Run detect_memory_limit() in a fresh Python after ``setup`` (which may set rlimits)."""
    code = textwrap.dedent(
        """
        import json, resource
        from batchmem.heap.monitor import detect_memory_limit, MemoryMonitor
        {setup}
        lim = detect_memory_limit()
        print(json.dumps({{"bytes": lim.bytes, "source": lim.source,
                           "monitor_source": MemoryMonitor().limit.source}}))
        """
    ).format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _target_below_detected() -> int:
    detected = detect_memory_limit()
    target = min(detected.bytes // 2, 8 * 2**30)
    return target - target % resource.getpagesize()


def test_rlimit_as_in_subprocess_wins():
    target = _target_below_detected()
    got = _detect_in_child(
        f"resource.setrlimit(resource.RLIMIT_AS, ({target}, resource.getrlimit(resource.RLIMIT_AS)[1]))"
    )
    assert got == {"bytes": target, "source": "rlimit_as", "monitor_source": "rlimit_as"}


def test_rlimit_data_in_subprocess_and_smallest_wins():
    target = _target_below_detected()
    smaller = target // 2
    got = _detect_in_child(
        f"resource.setrlimit(resource.RLIMIT_DATA, ({target}, resource.getrlimit(resource.RLIMIT_DATA)[1]))"
    )
    assert got["source"] == "rlimit_data" and got["bytes"] == target
    got = _detect_in_child(
        f"resource.setrlimit(resource.RLIMIT_DATA, ({smaller}, resource.RLIM_INFINITY))\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({target}, resource.RLIM_INFINITY))"
    )
    assert got["source"] == "rlimit_data" and got["bytes"] == smaller


def test_detected_limit_is_at_most_physical_ram():
    lim = detect_memory_limit()
    assert lim.source in {"cgroup_v2", "cgroup_v1", "rlimit_as", "rlimit_data", "physical"}
    assert 0 < lim.bytes <= psutil.virtual_memory().total + 2**20


def _fake_fs(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> str:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def test_cgroup_v2_max_means_unlimited_and_ancestors_count(tmp_path):
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    prefix = _fake_fs(
        tmp_path,
        "0::/user.slice/job.scope\n",
        mountinfo,
        {
            "/sys/fs/cgroup/user.slice/job.scope/memory.max": "max\n",
            "/sys/fs/cgroup/user.slice/memory.max": "1073741824\n",
        },
    )
    assert monitor_mod._cgroup_limits(prefix) == {"cgroup_v2": 2**30}
    # a looser limit on the process's own cgroup does not lift the parent's
    (tmp_path / "sys/fs/cgroup/user.slice/job.scope/memory.max").write_text("2147483648\n")
    assert monitor_mod._cgroup_limits(prefix) == {"cgroup_v2": 2**30}
    (tmp_path / "sys/fs/cgroup/user.slice/job.scope/memory.max").write_text("max\n")
    (tmp_path / "sys/fs/cgroup/user.slice/memory.max").write_text("max\n")
    assert monitor_mod._cgroup_limits(prefix) == {}


def test_cgroup_v1_limit_and_huge_value(tmp_path):
    # hybrid layout like docker without a cgroup namespace: mount root == cgroup path
    mountinfo = (
        "35 31 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    prefix = _fake_fs(
        tmp_path,
        "4:memory:/docker/abc\n0::/\n",
        mountinfo,
        {"/sys/fs/cgroup/memory/memory.limit_in_bytes": "536870912\n"},
    )
    assert monitor_mod._cgroup_limits(prefix) == {"cgroup_v1": 512 * MiB}
    (tmp_path / "sys/fs/cgroup/memory/memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert monitor_mod._cgroup_limits(prefix) == {}


# --- sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("512MB", 512_000_000),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("  64 kib ", 64 * 1024),
        ("1000", 1000),
        (123, 123),
        (np.int64(4096), 4096),
    ],
)
def test_parse_size(value, expected):
    got = parse_size(value)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("bad", ["abc", "1e3", "5 XB", "-1GB", "", "0", "0MB", 0, -5, True, 1.5, None, [1]])
def test_parse_size_rejects_bad_values_with_one_line_message(bad):
    with pytest.raises(ConfigError) as info:
        parse_size(bad)
    msg = str(info.value)
    assert "\n" not in msg
    assert repr(bad) in msg
    assert '"512MB"' in msg  # an example of a valid size
    assert isinstance(info.value, BatchmemError)


DETECTED = MemoryLimit(bytes=8 * 2**30, source="cgroup_v2")


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.5, MemoryLimit(4 * 2**30, "user")),
        ("0.25", MemoryLimit(2 * 2**30, "user")),
        (1.0, MemoryLimit(8 * 2**30, "user")),
        ("2GB", MemoryLimit(2_000_000_000, "user")),
        (12 * 2**30, MemoryLimit(12 * 2**30, "user")),  # the user wins even above detection
        (1, MemoryLimit(1, "user")),
        (None, DETECTED),
    ],
)
def test_resolve_memory_limit(value, expected):
    assert resolve_memory_limit(value, DETECTED) == expected


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1, math.nan, "bogus", 0, -1])
def test_resolve_memory_limit_rejects(bad):
    with pytest.raises(ConfigError, match="memory_limit") as info:
        resolve_memory_limit(bad, DETECTED)
    assert "\n" not in str(info.value)


def test_fraction_of_real_detected_limit():
    mon = MemoryMonitor(memory_limit=0.5)
    assert mon.limit.source == "user"
    assert mon.limit.bytes == int(detect_memory_limit().bytes * 0.5)


# --- pressure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "u, level",
    [
        (0.0, "normal"),
        (0.7999, "normal"),
        (0.80, "warning"),
        (0.8999, "warning"),
        (0.90, "critical"),
        (0.9499, "critical"),
        (0.95, "emergency"),
        (1.3, "emergency"),
    ],
)
def test_default_pressure_levels(u, level):
    got = PressureThresholds().level(u)
    assert got.label == level and str(got) == level and f"{got}" == level


def test_custom_thresholds_and_ordering():
    th = PressureThresholds(warning=0.5, critical=0.6, emergency=0.7)
    assert [th.level(u) for u in (0.49, 0.5, 0.65, 0.7)] == [
        PressureLevel.NORMAL,
        PressureLevel.WARNING,
        PressureLevel.CRITICAL,
        PressureLevel.EMERGENCY,
    ]
    assert PressureLevel.CRITICAL > PressureLevel.WARNING
    assert PressureThresholds(0.5, 0.9, 1.0).level(1.0) is PressureLevel.EMERGENCY


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"warning": 0.0}, "warning"),
        ({"warning": -0.1}, "warning"),
        ({"warning": "0.8"}, "warning"),
        ({"warning": math.nan}, "warning"),
        ({"critical": 0.80}, "critical"),
        ({"critical": 0.70}, "critical"),
        ({"emergency": 0.90}, "emergency"),
        ({"emergency": 1.01, "critical": 0.99}, "emergency"),
    ],
)
def test_threshold_validation_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^PressureThresholds\.{field}: "):
        PressureThresholds(**kwargs)


def test_monitor_rejects_non_thresholds():
    with pytest.raises(ConfigError, match="thresholds"):
        MemoryMonitor(thresholds=(0.8, 0.9, 0.95))


def test_sample_pressure_follows_real_allocation():
    base = MemoryMonitor(include_children=False).rss_bytes()
    mon = MemoryMonitor(memory_limit=base + ALLOC, include_children=False)
    before = mon.sample()
    a = _touched(ALLOC)
    during = mon.sample()
    del a
    assert before.pressure is PressureLevel.NORMAL
    assert during.pressure is PressureLevel.EMERGENCY
    assert during.utilization == pytest.approx(during.rss_bytes / (base + ALLOC))
    assert during.rss_bytes - before.rss_bytes >= 0.9 * ALLOC


def test_sample_fields_and_to_dict():
    mon = MemoryMonitor(memory_limit="1000GB")
    s = mon.sample()
    assert isinstance(s, MemorySample)
    assert s.limit_bytes == 10**12 and s.limit_source == "user"
    assert 0 < s.rss_bytes < s.limit_bytes
    assert 0 < s.available_bytes <= psutil.virtual_memory().total
    assert s.pressure is PressureLevel.NORMAL
    d = json.loads(json.dumps(s.to_dict()))
    assert d["pressure"] == "normal" and d["rss_bytes"] == s.rss_bytes
    assert set(d) == {
        "timestamp",
        "rss_bytes",
        "available_bytes",
        "limit_bytes",
        "limit_source",
        "utilization",
        "pressure",
        "working_set_bytes",
        "cgroup_usage_bytes",
        "stall_avg10",
    }


def test_monitor_pickles_for_workers():
    mon = MemoryMonitor(memory_limit="2GiB")
    mon.rss_bytes()  # caches a psutil handle, which must not travel
    clone = pickle.loads(pickle.dumps(mon))
    assert clone.limit == mon.limit and clone.thresholds == mon.thresholds
    assert clone.rss_bytes() > 0
