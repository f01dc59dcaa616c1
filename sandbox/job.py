"""What the harness sends a Ray task and what it gets back: the job (the bundle, the phases' request bodies,
the limits; inputs only, never labels) and the result (raw responses, timings, a verdict). `sandbox.runner`
runs a job; scoring happens elsewhere, where the ground truth is."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from sandbox.channel import MAX_RESPONSE_BYTES
from sandbox.contention import busy_share
from sandbox.environment import PythonEnvironment
from sandbox.isolation import SandboxLimits
from sandbox.speed import Sample

__all__ = ["Phase", "SandboxJob", "PhaseResult", "SandboxResult", "VERDICTS", "ANSWER_SLACK"]

VERDICTS = ("completed", "contract_violation", "timeout", "resource_limit", "crashed", "sandbox_violation")
MAX_RUN_RESPONSE_BYTES = 512 << 20
ANSWER_SLACK = 64 << 10
"""Bytes an answer may take beyond its per-item allowance (`Phase.answer_bytes_per_item`)."""


@dataclass
class Phase:
    """One batch of requests: a scenario, or a load pattern (single stream, offline)."""

    name: str
    bodies: list[bytes]
    """JSON request bodies, sent in order."""
    items: list[int]
    """How many items (windows, frames) each request carries."""
    concurrency: int = 1
    content_type: str = "application/json"
    """Media type of the bodies (e.g. `application/x-testbed-npz`: arrays in binary, see `sandbox/worker.py`)."""
    answer_bytes_per_item: int | None = None
    """Most bytes an answer may take per item its request carries (plus `ANSWER_SLACK`), below the job's cap: a
    bloated answer fails that request instead of costing the harness gigabytes to decode. None: the job's cap."""
    sitting: int = 0
    """Which start of the service the phase is sent to. The runner starts the service afresh, in a sandbox of
    its own (new processes, empty `/tmp`), whenever the next phase's sitting differs from the last one's, so
    nothing a later sitting is sent can be answered from what an earlier one was sent (a scenario's perturbed
    item from the answer the service gave the same item clean)."""


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
    max_response_bytes: int = MAX_RESPONSE_BYTES
    """Largest response body the harness reads; a larger one is cut there and is a contract violation."""
    max_run_response_bytes: int = MAX_RUN_RESPONSE_BYTES
    """Most response bytes the harness keeps over the whole run (so many large answers cannot add up)."""
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
    cpu_s: list[float] = field(default_factory=list)
    """Per request: CPU seconds of the service's threads and the calling harness thread (`sandbox.contention`)."""
    wait_s: list[float] = field(default_factory=list)
    """Per request: seconds those threads waited, runnable, for a CPU (queueing behind other processes)."""
    machine_busy: float | None = None
    """Share of all the machine's CPUs that were busy during the phase."""
    machine_ticks: tuple[int, int] = (0, 0)
    """(busy, total) jiffies of the machine's CPUs during the phase, whose ratio is `machine_busy`: the parts of a
    phase sent in parts, each maybe shorter than a jiffy, add theirs up."""
    sandbox_cpu_s: float | None = None
    """CPU seconds the whole sandbox used during the phase (its cgroup: threads and processes that ended within a
    request counted too, which `cpu_s` cannot see); None where it has no cgroup to count with."""
    cores: int = 1
    """CPUs of the machine."""
    request_sandbox_cpu_s: list[float | None] = field(default_factory=list)
    """Per request: CPU seconds the whole sandbox used while it ran (its cgroup, as `sandbox_cpu_s`); None where
    it has no cgroup to count with. With concurrent requests each counts the others' CPU too."""
    cpu_quota: float = 0
    """Cores the sandbox could use at once (its cgroup's CFS quota); 0: not bounded, the machine's `cores`."""
    started_s: list[float] = field(default_factory=list)
    """Per request: `time.monotonic()` when it was sent, on the node that ran it."""
    speed: list[Sample] = field(default_factory=list)
    """The node's speed between requests (`sandbox.speed`), timed while the sandbox was stopped."""

    def joined(self, later: PhaseResult) -> PhaseResult:
        """This phase and a later part of it (a phase sent in parts, see `PhasePlan.phases`) as one: requests in
        the order sent, times, CPU and the machine's jiffies added up (the busy share of parts without jiffies
        weighted by each part's wall time)."""
        wall = self.wall_s + later.wall_s
        ticks = (self.machine_ticks[0] + later.machine_ticks[0], self.machine_ticks[1] + later.machine_ticks[1])
        known = [(p.machine_busy, p.wall_s) for p in (self, later) if p.machine_busy is not None]
        busy = busy_share(ticks) if ticks[1] > 0 else (
            sum(b * w for b, w in known) / wall if len(known) == 2 and wall > 0 else None)
        sandbox = None if self.sandbox_cpu_s is None or later.sandbox_cpu_s is None else (
            self.sandbox_cpu_s + later.sandbox_cpu_s)
        return PhaseResult(
            name=self.name, bodies=self.bodies + later.bodies, statuses=self.statuses + later.statuses,
            latencies_s=self.latencies_s + later.latencies_s, items=self.items + later.items, wall_s=wall,
            errors=(self.errors + later.errors)[:5], cpu_s=self.cpu_s + later.cpu_s, wait_s=self.wait_s + later.wait_s,
            machine_busy=busy, machine_ticks=ticks, sandbox_cpu_s=sandbox, cores=self.cores,
            request_sandbox_cpu_s=self.request_sandbox_cpu_s + later.request_sandbox_cpu_s, cpu_quota=self.cpu_quota,
            started_s=self.started_s + later.started_s, speed=self.speed + later.speed)


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
    limits: dict[str, str] = field(default_factory=dict)
    """How each limit was enforced on this run (`memory`: cgroup, or an rlimit "(cgroups unavailable)"; `uid`,
    `processes`, `tmp`): what the scorecard says about the isolation."""
    opened: list[str] | None = None
    """The bundle's files (archive member paths) the service opened, seen from outside (`Evidence.opened`), in
    any sitting; None where not observed."""
    restarts_s: list[float] = field(default_factory=list)
    """Seconds each later sitting's fresh start took until the service was ready (not charged to the wall-time
    limit; `startup_s` is the first start's)."""
    speed_before: list[Sample] = field(default_factory=list)
    """The node's speed just before the service first started (`sandbox.speed.before_start`); none with a GPU."""
