"""Run one bundle in the sandbox and stream requests to it. This is what a Ray task executes.

The job carries only inputs (pre-encoded request bodies), never labels; the result carries raw responses,
timings and a verdict. Scoring happens elsewhere, where the ground truth is.
"""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from sandbox.environment import PythonEnvironment
from sandbox.isolation import SandboxLimits
from sandbox.service import SandboxedService

__all__ = ["Phase", "SandboxJob", "PhaseResult", "SandboxResult", "run_job", "classify", "VERDICTS"]

VERDICTS = ("completed", "contract_violation", "timeout", "resource_limit", "crashed", "sandbox_violation")
VIOLATION_MARK = "TESTBED-SANDBOX-VIOLATION"
RESOURCE_MARKS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "Resource temporarily unavailable",
                  "can't start new thread", "Too many open files", "No space left on device")


@dataclass
class Phase:
    """One batch of requests: a scenario, or a load pattern (single stream, offline)."""

    name: str
    bodies: list[bytes]
    """JSON request bodies, sent in order."""
    items: list[int]
    """How many items (windows, frames) each request carries."""
    concurrency: int = 1


@dataclass
class SandboxJob:
    bundle: bytes
    route: str
    """API route of the task contract, e.g. `/forecast`."""
    phases: list[Phase]
    limits: SandboxLimits
    wall_time_s: float
    startup_timeout_s: float
    isolated: bool = True
    """False only with the explicit unsafe flag: the bundle then runs as a plain subprocess."""
    cpus: float = 1
    """CPU cores the executor reserves for this job (a Ray task's `num_cpus`)."""
    gpus: float = 0
    """GPUs the executor reserves; above 0 the sandbox exposes the NVIDIA devices."""
    forbidden: list[str] = field(default_factory=list)
    """Host paths whose access the worker reports as a sandbox violation (they are not mounted anyway)."""
    environment: PythonEnvironment | None = None
    """The bundle's own Python environment, built (or found in its cache) on the node before the sandbox
    starts; None runs the bundle on the harness's own Python (trusted test bundles only)."""


@dataclass
class PhaseResult:
    name: str
    bodies: list[bytes | None]
    """Response body of each request that answered 200, else None."""
    statuses: list[int]
    """HTTP status of each request; 0 when there was no answer."""
    latencies_s: list[float]
    items: list[int]
    wall_s: float
    errors: list[str] = field(default_factory=list)
    """The first few error texts."""


@dataclass
class SandboxResult:
    verdict: str
    reason: str
    phases: dict[str, PhaseResult]
    log: str
    startup_s: float
    peak_rss_mb: float
    isolated: bool
    node: str = field(default_factory=socket.gethostname)


def classify(*, returncode: int | None, log: str, timed_out: bool, stopped_by_us: bool) -> tuple[str, str]:
    """Verdict and reason from how the sandboxed process ended and what it printed."""
    marks = [line.split(VIOLATION_MARK, 1)[1].strip() for line in log.splitlines() if VIOLATION_MARK in line]
    if marks:
        return "sandbox_violation", "; ".join(marks[:3])
    died = returncode is not None and not stopped_by_us
    hit = next((m for m in RESOURCE_MARKS if m in log), None)
    if hit:
        return "resource_limit", f"the service hit a resource limit ({hit})"
    if died and returncode in (-signal.SIGXCPU, -signal.SIGXFSZ, -signal.SIGKILL):
        return "resource_limit", f"the service was killed by a limit (signal {-returncode})"
    if timed_out:
        return "timeout", "the run went past the pilot's wall-time limit"
    if died:
        return "crashed", f"the service exited unexpectedly (exit code {returncode})"
    return "completed", "all phases ran"


def _send(client: httpx.Client, route: str, body: bytes, timeout: float) -> tuple[int, bytes | None, float, str]:
    start = time.perf_counter()
    try:
        resp = client.post(route, content=body, headers={"content-type": "application/json"}, timeout=timeout)
        elapsed = time.perf_counter() - start
        if resp.status_code == 200:
            return 200, resp.content, elapsed, ""
        return resp.status_code, None, elapsed, f"HTTP {resp.status_code}: {resp.text[:300]}"
    except httpx.HTTPError as exc:
        return 0, None, time.perf_counter() - start, f"{type(exc).__name__}: {exc}"[:300]


def run_job(job: SandboxJob) -> SandboxResult:
    """Build (or reuse) the bundle's environment, import the bundle privately, serve it in the sandbox, run
    every phase, stop it, give the verdict. The wall-time limit starts once the environment is ready."""
    python_env = job.environment.ensure() if job.environment is not None else None
    started = time.monotonic()
    deadline = started + job.wall_time_s
    phases: dict[str, PhaseResult] = {}
    with SandboxedService(job.bundle, job.limits, isolated=job.isolated, gpus=job.gpus,
                          forbidden=job.forbidden, python_env=python_env) as svc:
        ready_at = svc.wait_ready(min(job.startup_timeout_s, job.wall_time_s))
        timed_out = ready_at is None and svc.alive()
        with httpx.Client(transport=svc.transport(), base_url="http://sandbox") as client:
            for phase in job.phases if ready_at else []:
                phases[phase.name] = _run_phase(client, job.route, phase, deadline, svc.proc)
                if time.monotonic() >= deadline:
                    timed_out = True
                if timed_out or not svc.alive():
                    break
        svc.stop()
        log_text = svc.log_tail()
        returncode, stopped_by_us, peak = svc.returncode, svc.stopped_by_us, svc.peak_rss_mb
    verdict, reason = classify(returncode=returncode, log=log_text, timed_out=timed_out, stopped_by_us=stopped_by_us)
    if verdict == "timeout" and ready_at is None:
        reason = f"the service was not ready within {job.startup_timeout_s:g} s"
    return SandboxResult(verdict=verdict, reason=reason, phases=phases, log=log_text,
                         startup_s=(ready_at or time.monotonic()) - started, peak_rss_mb=peak, isolated=job.isolated)


def _run_phase(client: httpx.Client, route: str, phase: Phase, deadline: float, proc) -> PhaseResult:
    def one(body: bytes):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            return 0, None, 0.0, "not sent: the run had ended (time limit or service exit)"
        return _send(client, route, body, remaining)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, phase.concurrency)) as pool:
        outcomes = list(pool.map(one, phase.bodies))
    wall = time.perf_counter() - start
    errors = [err for *_, err in outcomes if err][:5]
    return PhaseResult(name=phase.name, bodies=[o[1] for o in outcomes], statuses=[o[0] for o in outcomes],
                       latencies_s=[o[2] for o in outcomes], items=list(phase.items), wall_s=wall, errors=errors)
