"""The batchmem pytest plugin (entry point ``pytest11``) and MemoryTestUtils, exercised through pytester."""

import pytest

from batchmem.testing import MemoryTestUtils, check_no_leak

pytest_plugins = ["pytester"]


def test_leaking_test_fails_with_growth_and_culprit_line(pytester):
    pytester.makepyfile(
        test_leaky="""
        import pytest

        KEPT = []

        @pytest.mark.no_leak(iterations=30, max_growth="256KB")
        def test_keeps_100kb_per_call():
            KEPT.append(bytearray(100_000))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*memory kept growing*over 30 iterations*", "*top lines by growth*", "*test_leaky.py:7: +*"]
    )


def test_clean_and_noisy_tests_pass_with_fixtures(pytester):
    pytester.makepyfile(
        test_clean="""
        import random
        import pytest

        @pytest.fixture
        def rng():
            return random.Random(7)

        @pytest.mark.no_leak(iterations=30, max_growth="256KB")
        def test_allocates_and_frees(rng):
            junk = [bytes(rng.randint(1, 300_000)) for _ in range(rng.randint(1, 5))]
            cycle = {}
            cycle["self"] = cycle  # cyclic garbage, freed by the collector
            assert len(junk) >= 1

        def test_memory_utils_fixture(memory_utils):
            block = memory_utils.allocate_mb(8)
            assert memory_utils.held_bytes == 8 << 20
            assert "held 8.0MiB" in memory_utils.format_status("after")
            block.release()
            assert memory_utils.held_bytes == 0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2)


def test_memory_test_utils_snapshots_and_controlled_allocation():
    utils = MemoryTestUtils(trace=True)
    try:
        base = utils.take_snapshot("before")
        block = utils.allocate_mb(16)
        mine = bytearray(4 << 20)  # a test's own allocation: named among the top lines (batchmem's are filtered)
        diff = utils.compare_to_snapshot(base)
        assert isinstance(diff.rss_delta_bytes, int)  # may be ~0: freed pages of earlier tests get reused
        assert diff.traced_delta_bytes >= 20 << 20
        assert diff.top_lines[0].filename == __file__ and diff.top_lines[0].size_bytes >= 4 << 20
        assert all("batchmem/" not in line.filename for line in diff.top_lines)
        del mine
        assert "rss" in diff.format()
        assert block.release() == 16 << 20 and block.release() == 0
        summary = utils.summary()
        assert summary["held_bytes"] == 0 and summary["snapshots"] == 3
        assert summary["peak_rss_bytes"] >= summary["baseline_rss_bytes"]
    finally:
        utils.close()


def test_check_no_leak_directly():
    kept = []
    assert check_no_leak(lambda: kept.append(bytearray(50_000)), iterations=20, max_growth="200KB").leaking
    assert not check_no_leak(lambda: bytearray(500_000), iterations=20, max_growth="200KB").leaking
    with pytest.raises(ValueError):
        check_no_leak(lambda: None, iterations=2)
