"""Latency is scored on every single-stream request: failing the slowest ones (within the error budget) cannot
make a service look faster."""

import pytest

from evaluation.performance import performance
from sandbox.runner import PhaseResult, SandboxResult


def single_stream(latencies: list[float], statuses: list[int]) -> SandboxResult:
    n = len(latencies)
    phase = PhaseResult("single_stream", [b"x"] * n, statuses, latencies, [1] * n, sum(latencies),
                        cpu_s=[0.0] * n, wait_s=[0.0] * n, machine_busy=0.0, cores=2)
    return SandboxResult("completed", "", {"single_stream": phase}, "", 1, 1, True)


def test_failing_the_slowest_requests_does_not_lower_the_p95():
    """100 one-item requests, the last six slow (long texts, say): the p95 is a slow one. A service failing the
    four slowest at once (1 ms, within a 1 % error budget of a few hundred requests) still has a slow p95."""
    latencies = [0.010] * 94 + [0.100] * 6
    honest = performance(single_stream(latencies, [200] * 100))
    dropper = performance(single_stream(latencies[:96] + [0.001] * 4, [200] * 96 + [500] * 4))
    assert honest["service_latency_ms"]["p95"] == pytest.approx(100)
    assert dropper["service_latency_ms"]["p95"] >= honest["service_latency_ms"]["p95"]
    assert dropper["latency_ms"]["p95"] >= honest["latency_ms"]["p95"]
    assert len(dropper["latencies_ms"]) == 96  # the histogram shows the answered requests


def test_one_transient_failure_leaves_the_p95_alone():
    latencies = [0.010] * 100
    once = performance(single_stream(latencies, [200] * 99 + [500]))
    assert once["service_latency_ms"]["p95"] == pytest.approx(10)
