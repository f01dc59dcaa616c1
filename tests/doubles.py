"""Test doubles for the external boundaries: Ray + the sandboxed BentoML service (MLflow's is the public
`evaluation.tracking.MemoryTracker`)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np

from sandbox.executor import InlineExecutor
from sandbox.runner import PhaseResult, SandboxJob, SandboxResult


class FakeSandbox(InlineExecutor):
    """An Executor that answers each request with `handler(route, payload)` in-process.

    `handler` returns the response object (JSON-able), or raises to simulate a failed request (HTTP 500). The
    result reports the isolation the job asked for, as the real runner does, so a caller that drops
    `isolated=False` on the way to the job is caught; a bare stand-in job (phases and route only) counts as isolated,
    a `SandboxJob`'s default.
    """

    def __init__(self, handler: Callable[[str, dict], object], verdict: str = "completed",
                 start: Callable[[], Callable[[str, dict], object]] | None = None):
        self.handler, self.verdict, self.start = handler, verdict, start
        """`start`, for a service with state: a new handler for each start of the service (each sitting, see
        `Phase.sitting`), as the runner starts a fresh sandbox; None: `handler` answers throughout."""
        self.jobs: list[SandboxJob] = []

    def run(self, job: SandboxJob) -> SandboxResult:
        self.jobs.append(job)
        phases, requests, sitting, handler = {}, {}, None, self.handler
        for phase in job.phases:  # a phase sent in parts (`PhasePlan.phases`) takes 0.1 s in all
            requests[phase.name] = requests.get(phase.name, 0) + len(phase.bodies)
        for phase in job.phases:
            if self.start is not None and getattr(phase, "sitting", 0) != sitting:
                sitting, handler = getattr(phase, "sitting", 0), self.start()
            bodies, statuses = [], []
            for body in phase.bodies:
                try:
                    bodies.append(json.dumps(handler(job.route, payload(body, phase.content_type))).encode())
                    statuses.append(200)
                except Exception:  # noqa: BLE001 - any failure is a 500, as BentoML would answer
                    bodies.append(None)
                    statuses.append(500)
            part = PhaseResult(name=phase.name, bodies=bodies, statuses=statuses, latencies_s=[0.01] * len(bodies),
                               items=list(phase.items), wall_s=0.1 * len(bodies) / max(1, requests[phase.name]))
            phases[phase.name] = phases[phase.name].joined(part) if phase.name in phases else part
        return SandboxResult(verdict=self.verdict, reason="fake", phases=phases, log="", startup_s=0.5,
                             peak_rss_mb=100.0, isolated=getattr(job, "isolated", True))


def payload(body: bytes, content_type: str) -> dict:
    """The request as a BentoML service would read it (binary `.npz` arrays as nested lists, like JSON's)."""
    if content_type == "application/x-testbed-npz":
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {name: npz[name].tolist() for name in npz.files}
    return json.loads(body)
