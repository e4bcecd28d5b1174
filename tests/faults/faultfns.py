"""Functions and sources for the fault-injection suite (imported by job files and by loky workers).

``expected(i)`` is what every function below writes for item ``i`` when it succeeds,
so a test can check ``output line i == expected(i)`` for every ``i``.
"""

from __future__ import annotations

import os
import signal
import time

#: Items that fail (``fail_some``); tests set and clear it in-process (serial runs only).
FAIL_AT: set[int] = set()
#: Attempts seen per item (``flaky``), to check retries.
ATTEMPTS: dict[int, int] = {}


def expected(i: int) -> dict:
    return {"i": i, "v": 3 * i + 1}


def numbers(n: int = 1000):
    """The source: 0 .. n-1, lazily."""
    return iter(range(n))


def slow(x: int) -> dict:
    """About 0.5 ms per item, so a batch of 100 takes about 50 ms."""
    time.sleep(0.0005)
    return expected(x)


def fail_some(x: int) -> dict:
    if x in FAIL_AT:
        raise ValueError(f"item {x} is bad")
    return expected(x)


def flaky(x: int) -> dict:
    """Fails the first attempt of every item divisible by 10, every attempt of items in FAIL_AT."""
    ATTEMPTS[x] = ATTEMPTS.get(x, 0) + 1
    if x in FAIL_AT or (x % 10 == 0 and ATTEMPTS[x] == 1):
        raise ConnectionError(f"flaky service refused item {x} (attempt {ATTEMPTS[x]})")
    return expected(x)


def unserialisable(x: int) -> dict:
    if x == 5:
        return {"i": x, "v": {1, 2}}  # a set: orjson cannot encode it
    return expected(x)


def poison(x: int) -> dict:
    """Item 37 kills the worker running it (``os._exit(3)``), like a crash in a C extension."""
    if x == 37:
        os._exit(3)
    return expected(x)


def oom_when_big(batch: list) -> list:
    """Batched: a batch of more than 4 items kills its own worker with SIGKILL (as the OOM killer would)."""
    if len(batch) > 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return [expected(x) for x in batch]


def poison_500(x: int) -> dict:
    """Item 500 kills the worker running it (``os._exit(1)``)."""
    if x == 500:
        os._exit(1)
    return expected(x)


def forever(x: int) -> dict:
    """Item 300 never returns (a hung call); the others take about 1 ms. When it starts it creates the
    file named by ``$FAULTFNS_STARTED`` (if set), so a test can wait for that instead of sleeping."""
    if x == 300:
        started = os.environ.get("FAULTFNS_STARTED")
        if started:
            open(started, "w").close()
        while True:
            time.sleep(1)
    time.sleep(0.001)
    return expected(x)


def sigint_mask(x: int) -> dict:
    """Whether SIGINT is blocked in this process (``/proc/self/status`` SigBlk, signal(7)), by worker pid."""
    blocked = next(int(line.split()[1], 16) for line in open("/proc/self/status") if line.startswith("SigBlk:"))
    return {"pid": os.getpid(), "sigint_blocked": bool(blocked >> (signal.SIGINT - 1) & 1)}


#: Items of ``hang_or_spin`` that never return: one sleeps forever, one spins in a pure-Python loop.
SLEEPS_FOREVER, SPINS_FOREVER = 57, 141


def hang_or_spin(x: int) -> dict:
    """Item 57 sleeps forever, item 141 spins forever; the others take about 5 ms."""
    if x == SLEEPS_FOREVER:
        while True:
            time.sleep(1)
    if x == SPINS_FOREVER:
        n = 0
        while True:
            n += 1
    time.sleep(0.005)
    return expected(x)


def stuck_in_c(x: int) -> dict:
    """Item 17 blocks SIGALRM and sleeps forever: like code stuck inside C, no in-place timer reaches it."""
    if x == 17:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(10**6)
    return expected(x)
