"""Run one bundle in the sandbox and stream requests to it. This is what a Ray task executes.

The job (`sandbox.job`) carries only inputs (pre-encoded request bodies), never labels; the result carries raw
responses, timings and a verdict. Scoring happens elsewhere, where the ground truth is.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from sandbox.channel import Budget
from sandbox.contention import MachineMeter, busy_share, delta, snapshot
from sandbox.host import RUN_PREFIX
from sandbox.job import ANSWER_SLACK, VERDICTS, Phase, PhaseResult, SandboxJob, SandboxResult
from sandbox.observe import Evidence
from sandbox.service import SandboxedService
from sandbox.speed import SpeedProbe, before_start
from testbed.errors import InfrastructureFailure

__all__ = ["Phase", "SandboxJob", "PhaseResult", "SandboxResult", "run_job", "classify", "VERDICTS"]


def _signal(returncode: int | None, isolated: bool) -> int | None:
    """The signal that ended the service: a negative status for a plain subprocess, 128 + N through bubblewrap."""
    if returncode is None:
        return None
    if returncode < 0:
        return -returncode
    return returncode - 128 if isolated and 128 < returncode < 160 else None


def classify(*, returncode: int | None, timed_out: bool, stopped_by_us: bool, evidence: Evidence | None = None,
             isolated: bool = True) -> tuple[str, str]:
    """Verdict and reason from what the harness observed: how the sandboxed process ended (exit status,
    signal), the kernel's counters (network namespace, cgroups) and the harness's own cuts. Never from text
    the bundle wrote."""
    ev = evidence or Evidence()
    died = returncode is not None and not stopped_by_us
    sig = _signal(returncode, isolated) if died else None
    if ev.network:
        counters = ", ".join(f"{k}={v}" for k, v in sorted(ev.network.items()))
        return "sandbox_violation", ("the service tried to reach the network (its empty network namespace "
                                     f"counted {counters})")
    if sig == signal.SIGSYS:
        return "sandbox_violation", "the service made a forbidden system call (killed by the sandbox's seccomp filter)"
    if ev.harness_paths:
        return "sandbox_violation", f"the service tried to open harness paths: {', '.join(ev.harness_paths[:3])}"
    if ev.oom_kills:
        return "resource_limit", (f"memory limit reached: the kernel stopped {ev.oom_kills} process(es) in the "
                                  "sandbox's memory cgroup")
    if ev.memory_over_mb:
        return "resource_limit", (f"memory limit reached: the sandbox held {ev.memory_over_mb:,.0f} MiB (its "
                                  "processes, /tmp and /dev/shm together), more than its limit, and was stopped "
                                  "(no memory cgroup on this host: sampled every 0.2 s)")
    if ev.pid_limit_hits:
        return "resource_limit", (f"process limit reached: {ev.pid_limit_hits} fork(s) refused by the sandbox's "
                                  "pids cgroup")
    if sig in (signal.SIGXCPU, signal.SIGXFSZ):
        return "resource_limit", f"the service was killed by a limit ({signal.Signals(sig).name}: CPU or file size)"
    if ev.oversize:
        return "contract_violation", f"response larger than the cap: {ev.oversize[0]}"
    if timed_out:
        return "timeout", "the run went past the pilot's wall-time limit"
    if died:
        how = f"killed by {signal.Signals(sig).name}" if sig in signal.valid_signals() else f"exit code {returncode}"
        return "crashed", f"the service exited unexpectedly ({how})"
    return "completed", "all phases ran"


def run_job(job: SandboxJob) -> SandboxResult:
    """Build (or reuse) the bundle's environment, then, for each sitting (`Phase.sitting`) in turn: import the
    bundle privately (the first sitting unpacks it; a later one serves the same tree, which every sandbox mounts
    read-only), serve it in a fresh sandbox, run the sitting's phases, stop it. The verdict is the first
    sitting's that did not complete (a later sitting is not started after one), else "completed".

    The wall-time limit counts the first start and every phase; a later sitting's start is bounded by the
    startup timeout alone (it is the harness's choice to start again, not the bundle's time). A watchdog stops
    the service at the limit, whatever state the requests are in."""
    python_env = job.environment.ensure() if job.environment is not None else None
    speed = before_start() if not job.gpus else []  # no vendor code runs yet; a GPU's speed is not the CPU's
    phases: dict[str, PhaseResult] = {}
    budget, left, sat = Budget(job.max_run_response_bytes), job.wall_time_s, []
    verdict, reason = "completed", "all phases ran"
    groups = [list(g) for _, g in groupby(job.phases, key=lambda p: p.sitting)] or [[]]
    shared = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-")) if job.isolated and len(groups) > 1 else None
    try:
        for group in groups:
            sat.append(_sit(job, group, phases, budget, python_env, left, first=not sat,
                            home=shared / "bentoml" if shared else None))
            left -= sat[-1].charged_s
            verdict, reason = sat[-1].verdict(job)
            if verdict != "completed":
                break
    finally:
        if shared:
            shutil.rmtree(shared, ignore_errors=True)
    log = sat[0].log if len(sat) == 1 else "\n".join(
        f"--- sitting {i + 1} (a fresh start): {', '.join(s.names)} ---\n{s.log}" for i, s in enumerate(sat))
    seen = [s.evidence.opened for s in sat if s.evidence.opened is not None]
    return SandboxResult(verdict=verdict, reason=reason, phases=phases, log=log, startup_s=sat[0].startup_s,
                         peak_rss_mb=max(s.peak for s in sat), isolated=job.isolated, limits=sat[0].limits,
                         opened=list(dict.fromkeys(p for paths in seen for p in paths)) if seen else None,
                         restarts_s=[s.startup_s for s in sat[1:]], speed_before=speed)


@dataclass
class _Sitting:
    """How one start of the service went: the phases it was sent, when it was ready, how it ended."""

    names: list[str]
    """Its phases' names, once each, in order."""
    first: bool
    startup_s: float
    """Seconds from its start until it answered ready (until it gave up, when it never did)."""
    ready: bool
    charged_s: float
    """Seconds charged to the job's wall-time limit: all of the first sitting's, a later one's after its start."""
    timed_out: bool
    returncode: int | None
    stopped_by_us: bool
    peak: float
    limits: dict[str, str]
    evidence: Evidence
    log: str

    def verdict(self, job: SandboxJob) -> tuple[str, str]:
        """`classify`'s verdict on this sitting. Processes of the sandbox the host's OOM killer stopped while it
        stayed under its own memory limit make the run the machinery's failure (InfrastructureFailure, which a
        campaign retries), unless the sandbox was caught trying what it forbids: that verdict nothing hides."""
        verdict, reason = classify(returncode=self.returncode, timed_out=self.timed_out,
                                   stopped_by_us=self.stopped_by_us, evidence=self.evidence, isolated=job.isolated)
        if self.evidence.host_oom_kills and verdict != "sandbox_violation":
            raise InfrastructureFailure(
                f"the host ran out of memory: the kernel's OOM killer stopped {self.evidence.host_oom_kills} "
                f"process(es) of the sandbox while it stayed under its own memory limit (peak {self.peak:.0f} MiB of "
                f"its {job.limits.memory_mb} MiB): not the bundle's doing", where=f"host {socket.gethostname()}",
                fix="nothing was recorded: run it again (a campaign retries it by itself); if it keeps happening, "
                    "give that node more memory or run fewer sandboxes on it at once (their memory limits and the "
                    "harness together must fit in its memory, and in the memory limit of the harness's own cgroup)")
        if verdict == "timeout" and not self.ready:
            reason = f"the service was not ready within {job.startup_timeout_s:g} s" + (
                "" if self.first else f" when started afresh for {', '.join(self.names)}")
        return verdict, reason


def _sit(job: SandboxJob, group: list[Phase], phases: dict[str, PhaseResult], budget: Budget,
         python_env, left: float, *, first: bool, home: Path | None = None) -> _Sitting:
    """Start the service in a sandbox of its own, send it `group`'s phases (their results joined into `phases`),
    stop it. `left`: seconds of the wall-time limit not yet charged; `home`: the BentoML home the job's sittings
    share (`SandboxedService.shared_home`: the bundle unpacked once)."""
    began, expired = time.monotonic(), threading.Event()
    timed_out, ready_at = False, None
    with SandboxedService(job.bundle, job.limits, isolated=job.isolated, gpus=job.gpus,
                          forbidden=job.forbidden, python_env=python_env,
                          requirements=job.environment.requirements if job.environment is not None else None,
                          home=home) as svc:
        def expire() -> None:
            expired.set()
            svc.stop(grace_s=0)

        def arm(seconds: float) -> threading.Timer:
            timer = threading.Timer(max(0.0, seconds), expire)
            timer.daemon = True
            timer.start()
            return timer

        watchdog = arm(left if first else job.startup_timeout_s)
        try:
            ready_at = svc.wait_ready(min(job.startup_timeout_s, left) if first else job.startup_timeout_s)
            timed_out = ready_at is None and svc.alive()
            if ready_at is not None and not first:  # from here on, its time is the job's
                watchdog.cancel()
                watchdog = arm(left)
            deadline = (began if first else ready_at or began) + left
            for phase in group if ready_at else []:
                part = _run_phase(job, phase, deadline, svc, budget)
                phases[phase.name] = phases[phase.name].joined(part) if phase.name in phases else part
                if expired.is_set() or time.monotonic() >= deadline:
                    timed_out = True
                if timed_out or not svc.alive():
                    break
        finally:
            watchdog.cancel()
        svc.stop(grace_s=0)  # the requests are done: nothing of the service's is worth a graceful exit
        ended, names = time.monotonic(), list(dict.fromkeys(p.name for p in group))
        evidence = svc.evidence()
        evidence.oversize = [f"{name}: {e}" for name in names if name in phases
                             for e in phases[name].errors if e.startswith("oversize")]
        return _Sitting(names=names, first=first, startup_s=(ready_at or ended) - began, ready=ready_at is not None,
                        charged_s=ended - (began if first else ready_at or ended),
                        timed_out=timed_out or expired.is_set(), returncode=svc.returncode,
                        stopped_by_us=svc.stopped_by_us, peak=svc.peak_rss_mb, limits=svc.enforcement,
                        evidence=evidence, log=svc.log_tail())


def _spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else max(0.0, after - before)


def _run_phase(job: SandboxJob, phase: Phase, deadline: float, svc: SandboxedService,
               budget: Budget) -> PhaseResult:
    channel = svc.channel(cap=job.max_response_bytes, budget=budget)
    probe = SpeedProbe(svc.paused, enabled=not job.gpus and phase.concurrency == 1)

    def one(body: bytes, items: int):
        sent = time.monotonic()
        if sent >= deadline or not svc.alive():
            return 0, None, 0.0, "not sent: the run had ended (time limit or service exit)", (0.0, 0.0), None, sent
        pid = svc.proc.pid if svc.proc else None
        before, used_before = snapshot(pid), svc.cpu_used_s()
        cap = None if phase.answer_bytes_per_item is None else ANSWER_SLACK + items * phase.answer_bytes_per_item
        status, answer, seconds, error = channel.post(job.route, body, phase.content_type, deadline, cap=cap)
        outcome = (status, answer if status == 200 else None, seconds, error, delta(before, snapshot(pid)),
                   _spent(used_before, svc.cpu_used_s()), sent)
        probe.maybe()  # between requests: the service has nothing to answer while it is stopped
        return outcome

    meter, used = MachineMeter(), svc.cpu_used_s()
    start = time.perf_counter()
    try:
        if phase.concurrency > 1:
            with ThreadPoolExecutor(max_workers=phase.concurrency) as pool:
                outcomes = list(pool.map(one, phase.bodies, phase.items))
        else:  # one request at a time: no pool to start for a phase sent in many small parts
            outcomes = list(map(one, phase.bodies, phase.items))
    finally:
        channel.close()
    wall, ticks = time.perf_counter() - start - probe.spent_s, meter.stop()
    errors = [o[3] for o in outcomes if o[3]][:5]
    return PhaseResult(name=phase.name, bodies=[o[1] for o in outcomes], statuses=[o[0] for o in outcomes],
                       latencies_s=[o[2] for o in outcomes], items=list(phase.items), wall_s=wall, errors=errors,
                       cpu_s=[o[4][0] for o in outcomes], wait_s=[o[4][1] for o in outcomes],
                       machine_busy=busy_share(ticks), machine_ticks=ticks, cores=meter.cores,
                       sandbox_cpu_s=_spent(used, svc.cpu_used_s()), request_sandbox_cpu_s=[o[5] for o in outcomes],
                       cpu_quota=svc.cpu_quota, started_s=[o[6] for o in outcomes], speed=probe.samples)
