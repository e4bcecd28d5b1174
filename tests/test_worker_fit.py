"""The number of workers that fit under a memory target, from synthetic readings (no processes)."""

from __future__ import annotations

import pytest

from batchmem.heap.fit import WorkerFit, workers_that_fit

MiB = 1 << 20
GiB = 1 << 30


@pytest.mark.parametrize(
    ("requested", "worker", "batch", "expected"),
    [
        (2, 100 * MiB, 0, 2),  # baselines fit: 150 + 2 x 100 < 614
        (8, 127 * MiB, 0, 3),  # 150 + 3 x 127 = 531 fits, 4 x 127 does not
        (2, 210 * MiB, 150 * MiB, 1),  # one worker with a batch at the aim: 150 + 360 fits, two do not
        (4, 50 * MiB, 50 * MiB, 4),
        (2, 700 * MiB, 0, 1),  # not even one fits: the up-front limit check's to stop, not this
    ],
)
def test_workers_that_fit_leave_each_a_batch_after_the_baselines(requested, worker, batch, expected):
    target = 0.6 * GiB
    got = workers_that_fit(
        requested, target_bytes=target, parent_bytes=150 * MiB, worker_bytes=worker, batch_bytes=batch
    )
    assert got == expected
    if 1 < got:
        assert 150 * MiB + got * (worker + batch) <= target
    if got < requested:
        assert 150 * MiB + (got + 1) * (worker + batch) > target


def test_the_message_names_what_was_asked_what_fits_and_why():
    fit = WorkerFit.decide(
        2, limit_bytes=GiB, target_fraction=0.6, parent_bytes=150 * MiB, worker_bytes=210 * MiB, batch_bytes=150 * MiB
    )
    assert fit.fewer and fit.workers == 1
    msg = fit.message()
    assert msg.startswith("n_jobs=2 requested; 1 fits under 1.0GiB (each worker holds 210")
    assert msg.endswith("running 1")
    assert not WorkerFit.decide(2, limit_bytes=GiB, target_fraction=0.6, parent_bytes=0, worker_bytes=MiB).fewer
