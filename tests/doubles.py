"""Test doubles for the external boundaries: Ray + the sandboxed BentoML service (MLflow's is the public
`evaluation.tracking.MemoryTracker`)."""

from __future__ import annotations

import json
from collections.abc import Callable

from sandbox.executor import InlineExecutor
from sandbox.runner import PhaseResult, SandboxJob, SandboxResult


class FakeSandbox(InlineExecutor):
    """An Executor that answers each request with `handler(route, payload)` in-process.

    `handler` returns the response object (JSON-able), or raises to simulate a failed request (HTTP 500).
    """

    def __init__(self, handler: Callable[[str, dict], object], verdict: str = "completed", isolated: bool = True):
        self.handler, self.verdict, self.isolated = handler, verdict, isolated
        self.jobs: list[SandboxJob] = []

    def run(self, job: SandboxJob) -> SandboxResult:
        self.jobs.append(job)
        phases = {}
        for phase in job.phases:
            bodies, statuses = [], []
            for body in phase.bodies:
                try:
                    bodies.append(json.dumps(self.handler(job.route, json.loads(body))).encode())
                    statuses.append(200)
                except Exception:  # noqa: BLE001 - any failure is a 500, as BentoML would answer
                    bodies.append(None)
                    statuses.append(500)
            phases[phase.name] = PhaseResult(name=phase.name, bodies=bodies, statuses=statuses,
                                             latencies_s=[0.01] * len(bodies), items=list(phase.items), wall_s=0.1)
        return SandboxResult(verdict=self.verdict, reason="fake", phases=phases, log="", startup_s=0.5,
                             peak_rss_mb=100.0, isolated=self.isolated)
