"""How fast the node's CPU was while a service was timed: evidence beside its latency and throughput.

The same work does not always take the same time: a virtual machine's host has other tenants, clocks and caches
(on the 2-core CI VM `kernel` took 0.6 ms in some spells of 1–15 s and up to 1.1 ms in others, with no steal
time reported), and the nodes of a cluster differ. So between requests the harness stops the whole sandbox (the
cgroup freezer) and times a small fixed workload (`kernel`: small matrix products, a sort, interpreted Python)
in its own thread, in CPU time (queueing for a CPU is `sandbox.contention`'s): no vendor code runs while the
yardstick is read, so a service cannot slow it (sharing a core, the caches, the memory bus) to excuse itself.
Samples are also taken before the service starts. The scorecard records the node's speed during each timed
phase beside its times, not applied to them (`evaluation.performance.node_speed` says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

__all__ = ["REFERENCE_MS", "INTERVAL_S", "Sample", "kernel", "time_kernel", "SpeedProbe", "before_start"]

REFERENCE_MS = 0.6
"""CPU milliseconds `kernel` takes on the reference machine (the 2-core AMD EPYC CI VM in its faster spells): a
node that runs it in 0.3 ms is twice as fast."""
INTERVAL_S = 0.3
"""Least seconds between two samples within a phase: at about 3 ms each (freezing the sandbox, two runs of the
kernel, thawing), about 1 % of a phase's time, which its wall time leaves out."""
BEFORE = 5
"""Samples taken before the service starts."""

Sample = tuple[float, float]
"""(`time.monotonic()` when it started, CPU seconds `kernel` took)."""

_rng = np.random.default_rng(0)
_A = _rng.standard_normal((48, 48)).astype(np.float32)
_X = _rng.standard_normal(1 << 14).astype(np.float32)


def kernel() -> float:
    """A fixed piece of work of the kinds models do on a CPU, on one thread (matrices this small stay on the
    calling thread of any BLAS)."""
    acc = 0.0
    for _ in range(16):
        acc += float((_A @ _A)[0, 0])
    acc += float(np.sort(_X)[0]) + float(np.tanh(_X).sum())
    s = 0
    for i in range(6_000):
        s += i * i % 7
    return acc + s


def time_kernel() -> float:
    """CPU seconds of the calling thread one `kernel` took, run once before untimed: between requests the
    service's work has left the caches cold, which would make the node look 15–20 % slower than it is."""
    kernel()
    start = time.thread_time()
    kernel()
    return time.thread_time() - start


def before_start(n: int = BEFORE) -> list[Sample]:
    """`n` samples taken now; for before the service starts."""
    return [(time.monotonic(), time_kernel()) for _ in range(n)]


class SpeedProbe:
    """Samples taken between a phase's requests: `maybe()`, called after each answer, takes one when
    `INTERVAL_S` has passed since the last, with the sandbox stopped (`pause()`, a context that yields whether it
    is; without, no sample: the service could be running beside it). After `MISSES` pauses that did not stop it
    (no freezer group, or a process the kernel cannot freeze, such as one in uninterruptible sleep) it stops
    trying for the phase. `spent_s`: seconds the probe took."""

    MISSES = 3

    def __init__(self, pause: Callable[[], AbstractContextManager[bool]], enabled: bool = True) -> None:
        self._pause, self.enabled = pause, enabled
        self.samples: list[Sample] = []
        self.spent_s, self._last, self.missed = 0.0, -INTERVAL_S, 0

    def maybe(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < INTERVAL_S:
            return
        with self._pause() as paused:
            took = time_kernel() if paused else None
        self._last = time.monotonic()
        self.spent_s += self._last - now
        if took is not None:
            self.samples.append((now, took))
        else:
            self.missed += 1
            self.enabled = self.missed < self.MISSES
