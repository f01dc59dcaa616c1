"""The node's speed (`sandbox.speed`): timed between requests with the sandbox stopped, recorded per timed
phase beside the latency and throughput, and not applied to them (`evaluation.performance.node_speed`)."""

import contextlib

import pytest

from evaluation.performance import node_speed, performance
from sandbox import speed
from sandbox.runner import PhaseResult, SandboxResult
from sandbox.speed import REFERENCE_MS, SpeedProbe


def phase(name, latencies, kernel_ms, *, items=1, t0=100.0) -> PhaseResult:
    """A phase of `latencies` sent back to back from `t0`, the node's kernel timed at `kernel_ms` (one value for
    all, or one per request) after each request."""
    n = len(latencies)
    kernel_ms = kernel_ms if isinstance(kernel_ms, list) else [kernel_ms] * n
    started = [t0 + sum(latencies[:i]) for i in range(n)]
    return PhaseResult(name, [b"{}"] * n, [200] * n, latencies, [items] * n, sum(latencies),
                       cpu_s=latencies, wait_s=[0.0] * n, machine_busy=None, cores=2, started_s=started,
                       speed=[(t + lat, k / 1000) for t, lat, k in zip(started, latencies, kernel_ms, strict=True)])


def result(*phases, before_ms=None) -> SandboxResult:
    before = [] if before_ms is None else [(float(i), before_ms / 1000) for i in range(5)]
    return SandboxResult("completed", "all phases ran", {p.name: p for p in phases}, "", 1.0, 100.0, True,
                         speed_before=before)


def run_on(slowness: float, samples: bool = True) -> SandboxResult:
    """The same service measured on a node `slowness` times as slow as the reference."""
    single = phase("single_stream", [slowness * x for x in (0.4, 0.25, 0.5, 0.3) * 10], REFERENCE_MS * slowness)
    offline = phase("offline", [slowness * 0.5] * 8, REFERENCE_MS * slowness, items=4, t0=200.0)
    if not samples:
        single.speed = offline.speed = []
    return result(single, offline)


@pytest.mark.parametrize("slowness", [0.5, 1.8])
def test_the_nodes_speed_is_recorded_per_timed_phase_and_not_applied(slowness):
    perf = performance(run_on(slowness))
    assert perf["node_speed"]["single_stream"] == {"kernel_ms": pytest.approx(REFERENCE_MS * slowness),
                                                   "relative": pytest.approx(1 / slowness), "samples": 40}
    assert perf["node_speed"]["offline"]["relative"] == pytest.approx(1 / slowness)
    unmeasured = performance(run_on(slowness, samples=False))
    for key in ("latency_ms", "service_latency_ms", "service_throughput_items_per_s"):
        assert perf[key] == unmeasured[key]
    assert unmeasured["node_speed"]["single_stream"] == {"kernel_ms": None, "relative": None, "samples": 0}


def test_a_phase_of_few_requests_borrows_the_nearest_samples():
    """Two offline batches give two samples: the nearest five to its middle decide, its neighbours' too."""
    single = phase("single_stream", [0.1] * 20, 2 * REFERENCE_MS)
    offline = phase("offline", [1.0, 1.0], [2 * REFERENCE_MS, REFERENCE_MS], items=8, t0=102.0)
    speeds = node_speed(result(single, offline))
    assert speeds["offline"] == {"kernel_ms": pytest.approx(2 * REFERENCE_MS), "relative": pytest.approx(0.5),
                                 "samples": 2}


def test_before_the_start_counts_where_nothing_nearer_was_taken():
    alone = result(phase("single_stream", [0.2] * 3, 2 * REFERENCE_MS), before_ms=REFERENCE_MS)
    alone.phases["single_stream"].speed = []  # no sample between requests (no freezer group)
    assert node_speed(alone)["single_stream"]["relative"] == pytest.approx(1.0)
    assert node_speed(alone)["samples_before_start"] == 5


def pause(frozen: bool):
    @contextlib.contextmanager
    def paused():
        calls.append(frozen)
        yield frozen
    calls: list[bool] = []
    paused.calls = calls
    return paused


def test_the_probe_samples_only_with_the_sandbox_stopped(monkeypatch):
    monkeypatch.setattr(speed, "INTERVAL_S", 0.0)
    stopped, running = SpeedProbe(pause(True)), SpeedProbe(pause(False))
    for probe in (stopped, running):
        for _ in range(3):
            probe.maybe()
    assert len(stopped.samples) == 3 and all(0 < took < 0.05 for _, took in stopped.samples)
    assert running.samples == [] and len(running._pause.calls) == SpeedProbe.MISSES == 3
    running.maybe()  # a sandbox that could not be stopped three times is not tried again in the phase
    assert len(running._pause.calls) == 3
    assert stopped.spent_s > 0


def test_the_probe_keeps_its_interval_and_can_be_off():
    every, off = SpeedProbe(pause(True)), SpeedProbe(pause(True), enabled=False)
    for _ in range(50):
        every.maybe(), off.maybe()
    assert len(every.samples) == 1  # the other calls came within INTERVAL_S of it
    assert off.samples == [] and off._pause.calls == []


def test_the_kernel_takes_milliseconds():
    took = speed.time_kernel()
    assert 0 < took < 0.05
    assert len(speed.before_start(3)) == 3
