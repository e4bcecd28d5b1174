"""The memory cgroup's limits, working set and pressure stall, from fixture files under a fake root.

Each test writes the files a kernel would show (``/proc/self/cgroup``, ``/proc/self/mountinfo``,
``memory.*`` of the cgroup and its parents, ``/proc/pressure/memory``) under ``tmp_path`` and reads
them through ``prefix``, as :mod:`batchmem.heap.cgroup` does on a real system.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from batchmem.backends.watchdog import OomWatchdog, Rss, cgroup_charge, choose_victim
from batchmem.heap.cgroup import find_memory_cgroup, parse_psi_some_avg10, physical_bytes
from batchmem.heap.levels import PressureLevel, PressureThresholds, stall_level
from batchmem.heap.limits import _cgroup_limits, detect_memory_limit
from batchmem.heap.monitor import MemoryMonitor, MemorySample
from batchmem.heap.pressure import ChargeWatch

MiB = 2**20
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1_MOUNTINFO = (
    "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)


def _psi(some_avg10: float) -> str:
    return (
        f"some avg10={some_avg10:.2f} avg60=1.00 avg300=0.50 total=123456\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=1234\n"
    )


def _fake_root(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> str:
    files = {"/proc/self/cgroup": cgroup, "/proc/self/mountinfo": mountinfo, **files}
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def _v2(tmp_path: Path, *, high: str = "805306368", stall: float = 12.5) -> str:
    ctr = "/sys/fs/cgroup/kubepods/pod1/ctr"
    return _fake_root(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        V2_MOUNTINFO,
        {
            f"{ctr}/memory.max": "max\n",
            f"{ctr}/memory.high": f"{high}\n",
            f"{ctr}/memory.current": "600000000\n",
            f"{ctr}/memory.stat": "anon 150000000\nfile 420000000\nshmem 300000000\nactive_file 20000000\n"
            "inactive_file 100000000\nunevictable 0\n",
            f"{ctr}/memory.pressure": _psi(stall),
            "/sys/fs/cgroup/kubepods/pod1/memory.max": f"{1 << 30}\n",
            "/proc/pressure/memory": _psi(0.0),
        },
    )


def _v1(tmp_path: Path, limit: int = 700 * MiB) -> str:
    group = "/sys/fs/cgroup/memory/batch"
    return _fake_root(
        tmp_path,
        "4:memory:/batch\n0::/\n",
        V1_MOUNTINFO,
        {
            f"{group}/memory.limit_in_bytes": f"{limit}\n",
            f"{group}/memory.usage_in_bytes": "454000000\n",
            # the non-hierarchical inactive_file differs from total_: the total is the one to take
            f"{group}/memory.stat": "cache 420000000\nrss 30000000\nshmem 400000000\ninactive_file 5\n"
            "total_cache 420000000\ntotal_rss 30000000\ntotal_shmem 400000000\ntotal_inactive_file 8000000\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
            "/proc/pressure/memory": _psi(0.0),
        },
    )


def test_v2_memory_high_below_max_is_the_limit_and_the_working_set_leaves_out_inactive_file(tmp_path):
    prefix = _v2(tmp_path)
    assert _cgroup_limits(prefix) == {"cgroup_v2": 1 << 30, "cgroup_v2_high": 805306368}
    limit = detect_memory_limit(prefix)
    assert (limit.bytes, limit.source) == (805306368, "cgroup_v2_high")
    cg = find_memory_cgroup(prefix)
    assert cg is not None and cg.version == 2 and cg.limited
    assert cg.path == tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr"
    assert (cg.limit_bytes, cg.high_bytes, cg.limit_source) == (1 << 30, 805306368, "cgroup_v2_high")
    assert cg.usage_bytes() == 600_000_000
    assert cg.working_set_bytes() == 500_000_000  # memory.current - inactive_file
    assert cg.shmem_bytes() == 300_000_000 and cg.stat()["anon"] == 150_000_000
    assert cg.pressure_some_avg10() == 12.5  # the cgroup's own memory.pressure, not the system's
    cg.close()


def test_v2_memory_high_above_max_is_no_limit(tmp_path):
    prefix = _v2(tmp_path, high=str(2 << 30))
    assert _cgroup_limits(prefix) == {"cgroup_v2": 1 << 30}
    assert detect_memory_limit(prefix).source == "cgroup_v2"
    assert find_memory_cgroup(prefix).high_bytes is None


def test_v1_working_set_is_usage_less_total_inactive_file(tmp_path):
    prefix = _v1(tmp_path)
    limit = detect_memory_limit(prefix)
    assert (limit.bytes, limit.source) == (700 * MiB, "cgroup_v1")
    cg = find_memory_cgroup(prefix)
    assert cg is not None and cg.version == 1 and cg.limit_bytes == 700 * MiB and cg.high_bytes is None
    assert cg.working_set_bytes() == 454_000_000 - 8_000_000
    assert cg.shmem_bytes() == 400_000_000  # total_shmem: tmpfs files and shared memory
    assert cg.pressure_some_avg10() == 0.0  # v1 has no memory.pressure: the system's file


def test_a_cgroup_limit_at_or_above_physical_ram_is_no_limit(tmp_path, caplog):
    ram = physical_bytes()
    prefix = _v1(tmp_path, limit=2 * ram)
    assert _cgroup_limits(prefix) == {"cgroup_v1": 2 * ram}  # the file says so ...
    with caplog.at_level("INFO", logger="batchmem"):
        limit = detect_memory_limit(prefix)
    assert limit.source != "cgroup_v1" and limit.bytes <= ram  # ... but RAM (or an rlimit) is the limit
    if limit.source == "physical":
        assert "at or above physical RAM" in limit.reason
    assert "at or above physical RAM" in caplog.text
    cg = find_memory_cgroup(prefix)
    assert cg is not None and cg.limit_bytes is None and not cg.limited
    mon = MemoryMonitor(cgroup=cg)
    assert mon.cgroup is None  # an unlimited cgroup's working set is not counted: RSS, as before
    s = mon.sample()
    assert s.working_set_bytes is None and s.used_bytes == s.rss_bytes


def test_monitor_counts_the_working_set_and_the_stall_raises_the_level(tmp_path):
    cg = find_memory_cgroup(_v2(tmp_path))
    mon = MemoryMonitor(memory_limit=805306368, cgroup=cg)  # a user limit inside a limited cgroup
    s = mon.sample()
    assert s.working_set_bytes == 500_000_000 and s.cgroup_usage_bytes == 600_000_000
    assert s.used_bytes == max(s.rss_bytes, 500_000_000)
    assert s.utilization == pytest.approx(s.used_bytes / 805306368)
    assert mon.thresholds.level(s.utilization) is PressureLevel.NORMAL  # 62 % of the limit ...
    assert s.stall_avg10 == 12.5 and s.pressure is PressureLevel.WARNING  # ... but stalled 12.5 %
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/memory.pressure").write_text(_psi(45.0))
    assert mon.sample().pressure is PressureLevel.CRITICAL
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/memory.current").write_text("870000000\n")
    (tmp_path / "sys/fs/cgroup/kubepods/pod1/ctr/memory.pressure").write_text(_psi(0.0))
    assert mon.sample().pressure is PressureLevel.EMERGENCY  # 770 MB of 768 MiB is 0.96: by utilization


@pytest.mark.parametrize(
    "avg10, level",
    [
        (None, PressureLevel.NORMAL),
        (9.99, PressureLevel.NORMAL),
        (10.0, PressureLevel.WARNING),
        (39.9, PressureLevel.WARNING),
        (40.0, PressureLevel.CRITICAL),
        (100.0, PressureLevel.CRITICAL),
    ],
)
def test_stall_levels(avg10, level):
    assert stall_level(avg10) is level


def test_psi_parsing():
    assert parse_psi_some_avg10(_psi(3.25)) == 3.25
    assert parse_psi_some_avg10(b"full avg10=9.00 avg60=0 avg300=0 total=0\n") is None
    assert parse_psi_some_avg10("garbage") is None


def _sample(rss: int, ws: int | None, limit: int = 700 * MiB) -> MemorySample:
    used = max(rss, ws or 0)
    return MemorySample(0.0, rss, 0, limit, "cgroup_v1", used / limit, PressureLevel.NORMAL, ws, ws, 0.0)


def test_charge_watch_speaks_once_when_the_charge_outside_rss_set_most_batches():
    target = 0.6 * 700 * MiB
    watch = ChargeWatch(PressureThresholds())
    for _ in range(4):  # 47 MiB RSS, 433 MiB charged: the room under the target shrinks from 373 to -13 MiB
        watch.observe(_sample(47 * MiB, 433 * MiB), "memory", target)
    watch.observe(_sample(47 * MiB, 433 * MiB), "time", target)
    issue = watch.issue()
    assert issue is not None and issue.kind == "cgroup_charge" and issue.severity == "warning"
    assert "386.0MiB" in issue.message and "4 of 5 batches" in issue.message and "tmpfs" in issue.message
    assert issue.evidence["charge_outside_rss_bytes"] == 386 * MiB


@pytest.mark.parametrize(
    "rss, ws, reason",
    [
        (47 * MiB, None, "memory"),  # no limiting cgroup: RSS only, as before
        (47 * MiB, 60 * MiB, "memory"),  # a little page cache does not set the size
        (47 * MiB, 433 * MiB, "time"),  # the time band set it
    ],
)
def test_charge_watch_stays_quiet_when_the_charge_did_not_set_the_size(rss, ws, reason):
    watch = ChargeWatch(PressureThresholds())
    for _ in range(5):
        watch.observe(_sample(rss, ws), reason, 0.6 * 700 * MiB)
    assert watch.issue() is None


def test_the_watchdog_kills_on_the_cgroup_working_set_the_rss_does_not_show(tmp_path):
    cg = find_memory_cgroup(_v1(tmp_path))  # 454 MB charged, 446 MB working set, 700 MiB limit
    level = int(0.95 * 440 * MiB)  # a 440 MiB limit: the working set is past its terminate level
    assert cgroup_charge(cg, level)() == 446_000_000
    assert cgroup_charge(cg, 460_000_000)() is None  # the usage, an upper bound, is under the level
    parent, workers = Rss(40 * MiB, 10 * MiB), {11: Rss(30 * MiB, 10 * MiB), 12: Rss(60 * MiB, 10 * MiB)}
    assert choose_victim(parent, workers, level) is None  # RSS alone: 110 MiB, far under the level
    assert choose_victim(parent, workers, level, charged=446_000_000) == 12
    killed: list[int] = []
    dog = OomWatchdog(
        lambda: [11, 12],
        440 * MiB,
        read=lambda pid: workers.get(pid, parent),
        kill=lambda pid, sig: killed.append(pid),
        confirm=lambda pids: 110 * MiB,  # shared pages once: still far under the level ...
        charge=cgroup_charge(cg, level),  # ... but the cgroup's charge is not
    )
    assert dog.check() == 12 and killed == [12]
    assert "memory cgroup working set 425.3MiB" in dog.reason_for(12)
