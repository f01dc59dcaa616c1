"""CPU contention around each request, so that performance scores do not follow the machine's load.

Linux keeps, per thread, the time it ran on a CPU and the time it waited, runnable, for one (`schedstat`). Around
each request the runner snapshots both for every thread of the sandboxed service (and the calling harness
thread), and how busy the whole machine was during the phase (`/proc/stat`). The scorecard turns them into
latencies with the queueing delay that other processes caused taken out (see `evaluation.performance`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil

__all__ = ["Snapshot", "snapshot", "delta", "MachineMeter", "busy_share", "yield_cpu"]

Snapshot = dict[tuple[int, int], tuple[int, int]]
"""(pid, tid) -> (ns on a CPU, ns waiting for a CPU)."""
TREE_TTL_S = 0.25
"""How long a process tree is reused: walking every process of the machine costs milliseconds, more than a
fast request; a process the service starts is counted from the next walk on."""
_trees: dict[int, tuple[float, list[int]]] = {}


def _read(path: str) -> tuple[int, int] | None:
    try:  # raw system calls: this runs for every thread of the service twice per request
        fd = os.open(path, os.O_RDONLY)
        try:
            cpu, wait, _ = os.read(fd, 128).split()
        finally:
            os.close(fd)
        return int(cpu), int(wait)
    except (OSError, ValueError):
        return None


def snapshot(pid: int | None) -> Snapshot:
    """Scheduler counters of every thread of process `pid` and its descendants, and of the calling thread."""
    out: Snapshot = {}
    me = _read(f"/proc/self/task/{threading.get_native_id()}/schedstat")
    if me:
        out[(0, threading.get_native_id())] = me
    if pid is None:
        return out
    for member in _tree(pid):
        try:
            tids = os.listdir(f"/proc/{member}/task")
        except OSError:
            continue
        for tid in tids:
            counters = _read(f"/proc/{member}/task/{tid}/schedstat")
            if counters:
                out[(member, int(tid))] = counters
    return out


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, walked again once the last walk is older than TREE_TTL_S."""
    now = time.monotonic()
    cached = _trees.get(pid)
    if cached and now - cached[0] < TREE_TTL_S:
        return cached[1]
    try:
        members = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        members = []
    if len(_trees) > 64:
        _trees.clear()
    _trees[pid] = (now, members)
    return members


def delta(before: Snapshot, after: Snapshot) -> tuple[float, float]:
    """(CPU seconds, wait seconds) between two snapshots; threads that ended in between are not counted."""
    cpu = wait = 0
    for key, (c, w) in after.items():
        c0, w0 = before.get(key, (0, 0))
        cpu, wait = cpu + max(0, c - c0), wait + max(0, w - w0)
    return cpu / 1e9, wait / 1e9


def _stat() -> tuple[int, int, int]:
    """(busy, total) jiffies summed over the machine's CPUs, and how many CPUs `/proc/stat` lists."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        fields = [int(x) for x in lines[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0, 1
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    cores = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return sum(fields[:8]) - idle, sum(fields[:8]), max(1, cores)


class MachineMeter:
    """How busy all the machine's CPUs were from construction to `stop()`."""

    def __init__(self) -> None:
        self._start = _stat()
        self.cores = self._start[2]

    def stop(self) -> tuple[int, int]:
        """(busy, total) jiffies of all the CPUs meanwhile: the busy share is their ratio, None for an interval
        shorter than a jiffy (10 ms); the jiffies of many short intervals add up to a fair sample of them."""
        busy, total, _ = _stat()
        return busy - self._start[0], total - self._start[1]


def busy_share(ticks: tuple[int, int]) -> float | None:
    """Share of the CPUs busy in (busy, total) jiffies (`MachineMeter.stop`); None with no jiffy counted."""
    return ticks[0] / ticks[1] if ticks[1] > 0 else None


BESIDE_NICE = 10
"""Niceness of harness work done beside a sandbox: against a busy CPU it gets about a tenth of a normal
thread's share (the service the rest), never so little that an evaluation waiting for it stalls."""


def yield_cpu() -> None:
    """Lower the calling thread's CPU priority (nice BESIDE_NICE; Linux sets it per thread): harness work done
    beside a sandbox then takes mostly CPU time the sandboxed service leaves idle, so it hardly slows (or moves
    the measured performance of) the bundle under evaluation."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, max(BESIDE_NICE, os.getpriority(os.PRIO_PROCESS, me)))
    except (AttributeError, OSError):  # not Linux, or not permitted: the work still runs, at normal priority
        pass
