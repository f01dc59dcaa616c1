"""Service performance from a sandbox run, measured so that it does not follow the machine's load.

A wall-clock latency on a shared machine is the bundle's work plus the time its threads queued behind other
processes for a CPU. Linux counts both per thread (`schedstat`, see `sandbox.contention`), so each request's
latency is scored with the queueing share taken out — but only up to the share of the machine that *other*
processes kept busy during the phase, so a service that crowds its own CPUs gets no discount. Credits saturate
at the service level: at or under it is full credit; over it, credit falls in proportion.

How fast the node itself was during each timed phase (`node_speed`: the harness's fixed workload, timed with the
sandbox stopped, see `sandbox.speed`) is recorded beside the times, not applied to them. On the CI VM different
work slows down in different spells (a matrix product, a sort and a Python loop timed side by side for 45 s:
spreads of 1.3×, 1.8× and 1.1× between 1-s windows, their correlations -0.1 to -0.55), so one workload's speed
does not correct another's well: scaling three full evaluations each of YOLOv8n and YOLOX-Nano by it narrowed
three of the four spreads a little (YOLOv8n throughput 1.41× → 1.33×, p95 1.62× → 1.57×; YOLOX p95 1.39× →
1.22×) and widened one (YOLOX throughput 1.34× → 1.41×), and in six short runs (`testbed check`) it widened three
of four. Too little, too unevenly, to be let move a score.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pilots.spec import ServiceLevel
from sandbox.runner import PhaseResult, SandboxResult
from sandbox.speed import REFERENCE_MS

__all__ = ["METHOD", "performance", "credits", "node_speed"]

METHOD = ("latency: p95 of single-stream requests, each with the CPU-queueing delay that other processes caused "
          "taken out (Linux schedstat of the service's threads, capped by the share of the machine others kept "
          "busy), never below the sandbox's CPU time over the cores its quota gives; throughput: offline items "
          "per second with the same correction; credit 1 at or within the service level, else in proportion; "
          "the node's own speed during each phase (`node_speed`) is recorded beside them, not applied")
NEAREST = 5
"""Samples of the node's speed a phase with fewer of its own borrows from the nearest in time (its neighbours'
phases, before the service started)."""


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    arr = np.asarray(values_ms)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)} | {"mean": float(arr.mean())}


def _external(phase: PhaseResult) -> float:
    """Share of the machine's CPUs that processes other than the service and the harness kept busy. The service's
    own share is the larger of its threads' counters and its cgroup's (which also counts threads and processes
    that ended within a request: work done in short-lived threads must not pass for other processes' load)."""
    if phase.machine_busy is None or phase.wall_s <= 0:
        return 0.0
    own = max(sum(phase.cpu_s), phase.sandbox_cpu_s or 0.0) / (phase.wall_s * max(1, phase.cores))
    return float(min(1.0, max(0.0, phase.machine_busy - own)))


def _queued(cpu: float, wait: float, cap: float) -> float:
    """Share of runnable time spent queueing for a CPU, at most `cap`."""
    return min(cap, wait / (cpu + wait)) if cpu + wait > 0 else 0.0


def _corrected(time_s: float, queued: float, floor_s: float) -> float:
    """`time_s` without its share `queued` of queueing behind other processes, at least `floor_s`; all of it
    where nothing would be left (no CPU time of the service's own was counted: there is nothing to correct it to,
    and a time of zero would make a latency free, a throughput infinite)."""
    kept = max(time_s * (1 - queued), floor_s)
    return kept if kept > 0 else time_s


def _request(phase: PhaseResult, i: int) -> tuple[float, float]:
    return (phase.cpu_s[i], phase.wait_s[i]) if i < min(len(phase.cpu_s), len(phase.wait_s)) else (0.0, 0.0)


def _at_quota(phase: PhaseResult, cpu_s: float | None, wall_s: float) -> float:
    """The least time `cpu_s` of the sandbox's CPU takes on the cores it may use at once (its quota, else the
    machine's), at most `wall_s` (what it took): no discount goes below it. Linux counts a thread held back by
    the quota, or queued behind the service's own other threads, as waiting for a CPU, as it counts queueing
    behind other processes; only the latter may be taken out. 0 where the sandbox's CPU is not counted."""
    if cpu_s is None:
        return 0.0
    return min(wall_s, cpu_s / (phase.cpu_quota or max(1, phase.cores)))


def node_speed(result: SandboxResult) -> dict[str, Any]:
    """Per timed phase, how fast the node ran `sandbox.speed.kernel` relative to the reference machine (`relative`
    2: twice as fast; 0.5: half; None: not measured, as with a GPU): the median of the samples taken between its
    requests, or of the NEAREST nearest its middle where it took fewer."""
    pool = sorted(tuple(s) for s in [*result.speed_before, *(s for p in result.phases.values() for s in p.speed)])
    out: dict[str, Any] = {"reference_kernel_ms": REFERENCE_MS, "samples_before_start": len(result.speed_before)}
    for name in ("single_stream", "offline"):
        phase = result.phases.get(name)
        if phase is None:
            continue
        chosen = list(phase.speed)
        if len(chosen) < NEAREST and phase.started_s:
            middle = (phase.started_s[0] + phase.started_s[-1]) / 2
            chosen = sorted(pool, key=lambda s: abs(s[0] - middle))[:NEAREST]
        kernel_ms = 1000 * float(np.median([s[1] for s in chosen])) if chosen else None
        out[name] = {"kernel_ms": kernel_ms, "relative": REFERENCE_MS / kernel_ms if kernel_ms else None,
                     "samples": len(phase.speed)}
    return out


def performance(result: SandboxResult) -> dict[str, Any]:
    """Service-level measurements, the same for every family: raw and load-corrected."""
    statuses = [s for p in result.phases.values() for s in p.statuses]
    single, offline = result.phases.get("single_stream"), result.phases.get("offline")
    raw, service, contention, unanswered = [], [], {}, []
    if single:
        cap = _external(single)
        for i, (lat, status) in enumerate(zip(single.latencies_s, single.statuses, strict=True)):
            if status == 200:
                raw.append(lat * 1000)
                cpu = single.request_sandbox_cpu_s[i] if i < len(single.request_sandbox_cpu_s) else None
                service.append(1000 * _corrected(lat, _queued(*_request(single, i), cap), _at_quota(single, cpu, lat)))
            else:  # as slow as the whole phase: failing its slowest requests cannot make a service look faster
                unanswered.append(max(single.wall_s, *single.latencies_s) * 1000)
        contention["single_stream"] = {"others_busy": cap, "queued": _queued(sum(single.cpu_s), sum(single.wait_s), 1)}
    throughput = service_throughput = 0.0
    if offline and offline.wall_s > 0:
        done = sum(i for i, s in zip(offline.items, offline.statuses, strict=True) if s == 200)
        cap = _external(offline)
        throughput = done / offline.wall_s
        queued = _queued(sum(offline.cpu_s), sum(offline.wait_s), 1)
        service_throughput = done / _corrected(offline.wall_s, min(queued, cap),
                                              _at_quota(offline, offline.sandbox_cpu_s, offline.wall_s))
        contention["offline"] = {"others_busy": cap, "queued": queued}
    failed = sum(s != 200 for s in statuses)
    return {
        "method": METHOD,
        "latency_ms": _percentiles(raw + unanswered if raw else []),
        "service_latency_ms": _percentiles(service + unanswered if service else []),
        "latencies_ms": [round(x, 3) for x in raw],
        "throughput_items_per_s": throughput,
        "service_throughput_items_per_s": service_throughput,
        "contention": contention,
        "node_speed": node_speed(result),
        "error_rate": failed / len(statuses) if statuses else 1.0,
        "requests": len(statuses),
        "failed_requests": failed,
        "startup_s": result.startup_s,
        "restarts_s": list(result.restarts_s),
        "run_s": result.startup_s + sum(p.wall_s for p in result.phases.values()),
        "peak_rss_mb": result.peak_rss_mb,
        "errors": [e for p in result.phases.values() for e in p.errors][:5],
    }


def credits(perf: dict[str, Any], level: ServiceLevel) -> tuple[float, float]:
    """(latency credit, throughput credit), each 0–1, from the load-corrected measurements."""
    p95 = perf["service_latency_ms"].get("p95", math.nan)
    latency = 0.0 if math.isnan(p95) else 1.0 if p95 <= level.p95_latency_ms else level.p95_latency_ms / p95
    throughput = min(1.0, perf["service_throughput_items_per_s"] / level.min_throughput)
    return latency, throughput
