"""`testbed serve`: the pilot's production bundle, served in the sandbox, behind a trusted proxy.

The bundle comes from the MLflow registry by the `production` alias (never from a path someone typed) and is
checked again as a promotion is (latest review approves its latest evaluation, gates passed, bytes hash to what
was evaluated); otherwise nothing is served. It runs under the same sandbox as evaluation (no network,
unprivileged, rlimits), on the Python environment the bundle declared (the one its evaluation ran on), on a
Unix socket; the proxy (`serving.proxy`), on 127.0.0.1 by default, adds `/healthz`, `/readyz`, Prometheus
`/metrics` and adaptive batching (`serving.batching`), forwards the contract's API, checking each request and
each answer against the contract, and answers `/schema.json` (what `bentoml.SyncHTTPClient` reads) from the
approved bundle's `bento.yaml`. A watcher polls
the alias: a promotion or rollback is served without a restart (the new bundle starts beside the old, then
takes over); a withdrawal stops serving. A served bundle that dies makes `/readyz` fail and requests get 503,
with one log line, until the watcher starts it again (`restart_s`); one caught trying what the sandbox forbids
is stopped for good.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from evaluation.families import open_family
from evaluation.tracking import registered_model_name
from sandbox.bundle import inspect_bundle
from sandbox.environment import bundle_environment
from sandbox.isolation import SandboxLimits, check_isolation, hidden_paths
from sandbox.runner import classify
from sandbox.service import SandboxedService
from serving.admission import Admission
from serving.batching import Batcher
from serving.metrics import ServingMetrics
from serving.proxy import Proxy, Served, served_schema
from testbed.config import Workspace
from testbed.errors import Refused, TestbedError
from testbed.text import printable
from workflow.catalogue import get_pilot
from workflow.promote import Approved, Production

__all__ = ["ProductionServer", "running", "serve_until_stopped"]

SERVICE_CPU_SECONDS = 10**9
"""A long-running service has no CPU-time budget (evaluation runs do); memory and process limits still hold."""


def _observed(service: SandboxedService) -> tuple[str, str]:
    """The verdict an evaluation would give the served bundle now, with its reason, from what the sandbox's
    observers saw (`classify`: the network namespace's kernel counters, the harness paths its audit hook reported,
    a seccomp kill, the memory cgroup's OOM kills, its exit status), read live: `completed` while nothing is
    wrong. A bundle that behaves in evaluation and tries the forbidden in production is caught too. Processes the
    host's OOM killer stopped while the sandbox stayed under its own memory limit are said to be the machine's
    doing, as an evaluation says (`sandbox.runner`), unless it was caught trying the forbidden."""
    code = service.proc.poll() if service.proc else None
    evidence = service.evidence(live=True)
    verdict, reason = classify(returncode=code, timed_out=False, stopped_by_us=False, evidence=evidence)
    if evidence.host_oom_kills and verdict != "sandbox_violation":
        return "infrastructure", (f"the host ran out of memory: the kernel's OOM killer stopped "
                                  f"{evidence.host_oom_kills} process(es) of the sandbox while it stayed under its own "
                                  "memory limit, not the bundle's doing; give this machine more memory or run less "
                                  "beside the service")
    return verdict, reason


def _stderr(line: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} testbed serve: {line}", file=sys.stderr, flush=True)


class _Refusal(NamedTuple):
    """A version of the alias the watcher refused to serve, checked again after `recheck_s`, or sooner when the
    production trail moves or (`review`) a new review of it is recorded."""

    version: str
    at: float
    """`time.monotonic()` of the refusal."""
    why: str
    moves: int
    """The production trail's length then (-1: it could not be read)."""
    review: tuple | None = None
    """For a version refused on its review: (submission, run, that review's hash)."""


class ProductionServer(Proxy):
    """Serves one pilot's production version; `app` is the ASGI app (run it with uvicorn)."""

    def __init__(self, ws: Workspace, pilot: str, *, poll_s: float = 5.0, batching: bool = False,
                 max_batch: int = 64, log: Callable[[str], None] = _stderr, recheck_s: float = 30.0,
                 restart_s: float = 30.0):
        self.ws, self.spec, self.poll_s = ws, get_pilot(pilot), poll_s
        self.log: Callable[[str], None] = lambda line: log(printable(line))
        """Where the server's log lines go, with what they quote (a rejecting review's note, the bundle's last
        output) written out: never terminal codes on the operator's terminal."""
        self.recheck_s = recheck_s
        """How often a refused version is checked again while the trail does not move (a new review of it)."""
        self.restart_s = restart_s
        """How long after the served bundle died the watcher starts it again (503 meanwhile)."""
        self.pilot, self.model = pilot, registered_model_name(pilot)
        self.family = open_family(self.spec, ws.data_dir, verify=False)
        """Checks every answer against the contract (`TaskFamily.check_answer`); serving reads no data."""
        self.contract = self.family.contract
        self.production, self.metrics = Production(ws), ServingMetrics(pilot)
        self.late_s = self.spec.service_level.p95_latency_ms / 1000
        self.batching, self.max_batch = batching, max_batch
        self.served: Served | None = None
        self.reason = "starting"
        """Why the service is not ready (shown by /readyz and in 503 answers)."""
        self._batcher: Batcher | None = None
        self._refused: _Refusal | None = None
        """The alias's version the watcher refused, and what would have it checked again before `recheck_s`."""
        self._violated: dict[str, str] = {}
        """Versions caught trying what the sandbox forbids (`_observed`), and what: never served again by this
        server, whatever the alias says."""
        self.admission = Admission()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._watcher: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve and start the production bundle (raises NotFound/Refused: nothing served), then watch."""
        check_isolation()
        hidden_paths(self.ws.harness_locations)  # a setting the sandbox could not keep hidden: nothing served
        ok = self.production.resolve(self.pilot)
        self._swap(self._launch(ok))
        self.log(f"serving {self.model} version {ok.version} ({ok.submission.id}, bundle sha256 {ok.sha256[:16]}…)")
        self._watcher = threading.Thread(target=self._watch, name="testbed-serve-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher:
            self._watcher.join(timeout=30)
        self._swap(None, "stopped")

    def __enter__(self) -> ProductionServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ready(self) -> bool:
        served = self.served
        return served is not None and not served.crashed and served.service.alive()

    def _environment(self, ok: Approved) -> tuple[Path, bytes]:
        """The Python environment the bundle declared, the one its evaluation ran on (built on this node first
        when it has none cached), and the schema the proxy answers for it (`served_schema`)."""
        with tempfile.NamedTemporaryFile(suffix=".bento") as copy:
            copy.write(ok.bundle)
            copy.flush()
            info = inspect_bundle(Path(copy.name))
        return bundle_environment(info.manifest, self.ws.envs, where=f"version {ok.version} ({ok.submission.id})"
                                  ).ensure(), served_schema(info.manifest, self.contract)

    def _launch(self, ok: Approved) -> Served:
        r = self.spec.resources
        limits = SandboxLimits(memory_mb=r.memory_mb, max_processes=r.max_processes,
                               cpu_seconds=SERVICE_CPU_SECONDS, threads=math.ceil(r.cpus), cpus=r.cpus)
        python_env, schema = self._environment(ok)
        service = SandboxedService(ok.bundle, limits, isolated=True, gpus=r.gpus,
                                   forbidden=hidden_paths(self.ws.harness_locations), python_env=python_env)
        try:
            service.start()
            ready = service.wait_ready(timeout=r.startup_timeout_s)
        except BaseException:  # started midway: leave no process, uid lease, cgroup or folder behind
            service.stop()
            service.close()
            raise
        if ready is None:
            tail = [line for line in service.log_tail(4000).splitlines() if line.strip()]
            service.stop()
            service.close()
            raise Refused(f"version {ok.version} ({ok.submission.id}) did not become ready within "
                          f"{r.startup_timeout_s} s in the sandbox: {tail[-1] if tail else 'no output'}",
                          fix="check the bundle with `testbed check`; the previous state is kept")
        return Served(ok, service, schema)

    def _swap(self, new: Served | None, reason: str = "") -> None:
        with self._lock:
            old, self.served = self.served, new
            if self._batcher is not None:
                self._batcher.close()  # its queued requests get 503 (retry); its calls in flight finish
            self._batcher = Batcher(lambda body, items, s=new: self._call(s, body, items), list(self.contract.inputs),
                                    max_items=self.max_batch) if new and self.batching else None
            self.reason = "" if new else printable(reason)  # /readyz and 503s may quote a rejecting note
        if new:
            self.metrics.serving(new.version, submission=new.ok.submission.id, bundle_sha256=new.ok.sha256,
                                 run_id=new.ok.run.run_id)
        else:
            self.metrics.serving(None)
        if old:
            old.close()

    # -- watching the alias and the process --------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the watcher must survive a registry hiccup
                self.log(f"could not check the production alias ({exc}); will retry in {self.poll_s:g} s")

    def check(self) -> None:
        """One round of the watcher: notice a dead bundle, a promotion, a rollback, a withdrawal, or a rejection
        of the version in service (an evaluator's latest review of it, or a newer approval that no longer clears
        it, or a review trail that cannot be read: `_cleared`): only an approved bundle that the production trail
        put in service is served. A refused version is checked again when the production trail moves, when a new
        review of it is recorded, or after `recheck_s`."""
        served = self.served
        verdict, violation = _observed(served.service) if served else ("completed", "")
        if served and verdict == "sandbox_violation":
            self._violated[served.version] = violation
            self._swap(None, f"version {served.version} was stopped: {violation}")
            self.log(f"SANDBOX VIOLATION by version {served.version} ({served.ok.submission.id}) in production: "
                     f"{violation}; stopped serving it, and this server will not serve it again: /readyz fails and "
                     f"requests get 503 until an operator rolls back (`testbed rollback {self.pilot} --by NAME`) or "
                     "promotes another version")
            return
        if served and not served.crashed and not served.service.alive():
            self._crashed(served)
        elif served and not served.crashed and served.hung():
            self._crashed(served, f"the served bundle (version {served.version}) answered no call for "
                                  f"{time.monotonic() - served.answered_at:.0f} s ({served.timed_out} timed out)")
            served.service.stop(grace_s=0)
        version = self.production.current_version(self.pilot)
        if served and version is not None and version != served.version and not served.crashed:
            why, said = self._cleared(served)  # kept while its successor cannot start: still only while approved
            if why:
                self._swap(None, why)
                self.log(f"{said}: stopped serving it; /readyz fails and requests get 503 until version {version} "
                         "starts")
                served = None
        if version in self._violated:  # never launched again; another version in service stays
            why = f"version {version} was stopped: {self._violated[version]}"
            if not served and self.reason != why:
                self._swap(None, why)
            return
        current = served.version if served else None
        if served and version == current and served.crashed:  # died: started again after restart_s
            if time.monotonic() < served.died_at + self.restart_s:
                return
        elif served and version == current:
            why, said = self._cleared(served)
            if why:
                self._refused = _Refusal(version, time.monotonic(), why, self._moves(),
                                         self._reviewed(served.ok.submission.id, served.ok.run))
                self._swap(None, why)
                self.log(f"{said}: stopped serving it; /readyz fails and requests get 503 until an operator rolls "
                         f"back (`testbed rollback {self.pilot} --by NAME`) or promotes another version, or an "
                         "evaluator approves it again (served at the next check)")
            return
        if version is None:
            if served or self._refused:
                self._refused = None
                self._swap(None, f"{self.model} has no production version (withdrawn); waiting for a promotion")
                self.log(f"production of {self.pilot} was withdrawn: stopped serving "
                         f"{'version ' + current if current else 'nothing'}; /readyz fails and requests get 503 "
                         "until an operator promotes a version")
            return
        try:
            moves = self._moves(strict=True)
        except TestbedError as exc:  # the alias moved, and the trail cannot say to what: nothing is served
            why = f"the production trail cannot be read: {exc.problem}"
            self._refused = _Refusal(version, time.monotonic(), why, -1)
            if served or self.reason != why:
                self._swap(None, why)
                self.log(f"{why}; stopped serving {'version ' + current if current else 'nothing'} and starting "
                         f"nothing: /readyz fails and requests get 503 until an operator repeats the move "
                         f"(`testbed production {self.pilot}` says more)")
            return
        refused = self._refused
        if (refused and refused.version == version and refused.moves == moves
                and time.monotonic() < refused.at + self.recheck_s
                and (refused.review is None or self._reviewed(*refused.review[:2]) == refused.review)):
            return
        try:
            ok = self.production.resolve(self.pilot)
            new = self._launch(ok)
        except TestbedError as exc:
            self._refused = _Refusal(version, time.monotonic(), exc.problem, moves)
            if not served:
                self._swap(None, f"refusing to serve version {version}: {exc.problem}")
            if refused is None or (refused.version, refused.why) != (version, exc.problem):  # said once
                still = f"still serving version {current}" if served and not served.crashed else "nothing is served"
                self.log(f"refusing to serve version {version}: {exc.problem}; {still}")
            return
        self._refused = None
        self._swap(new)
        if served and served.crashed and ok.version == current:
            self.log(f"started version {ok.version} ({ok.submission.id}) again after it exited; serving it")
        else:
            self.log(f"now serving {self.model} version {ok.version} ({ok.submission.id}), was "
                     f"{'version ' + current if current else 'nothing'}")

    def _moves(self, strict: bool = False) -> int:
        """How many moves the production trail holds (it moved: a refused version is checked again); -1 when it
        cannot be read, unless `strict` (then the refusal is raised)."""
        try:
            return len(self.production.history(self.pilot))
        except TestbedError:
            if strict:
                raise
            return -1

    def _reviewed(self, submission: str, run) -> tuple:
        """(submission, run, the hash of its latest review): a new review changes it (the hash None when there is
        none, or the trail cannot be read)."""
        try:
            latest = self.production.book.latest(submission, run)
        except TestbedError:
            latest = None
        return submission, run, latest.hash if latest is not None else None

    def _cleared(self, served: Served) -> tuple[str, str]:
        """Why the version in service may no longer be served, and the log line's account of it ("" when it may):
        its latest review rejects it, a newer approval no longer clears it as a promotion checks it (e.g. without
        the override of a gate it failed), or its review trail cannot be read (cut, or the run's tags a review
        ahead of it): what cannot be confirmed approved is not served. A registry hiccup raises (served on)."""
        version = served.version
        try:
            review = self.production.book.latest(served.ok.submission.id, served.ok.run)
            if review is not None and review.decision != "approve":
                return (f"version {version} ({review.submission}) was rejected after its promotion",
                        f"version {version} ({review.submission}) was rejected by {review.by} at {review.at}")
            known = served.ok.review.hash if served.ok.review is not None else None
            if (review.hash if review is not None else None) != known:  # a new review: checked as a promotion is
                served.ok = self.production.approved(served.ok.submission.id, version)
        except TestbedError as exc:
            return (f"version {version} ({served.ok.submission.id}) can no longer be served: {exc.problem}",
                    f"version {version} ({served.ok.submission.id}) can no longer be served ({exc.problem})")
        return "", ""

    def _crashed(self, served: Served, why: str = "") -> None:
        """`served` died (or, `why`, is stuck and is being stopped): 503 until the watcher starts it again."""
        with self._lock:
            if served.crashed:
                return
            served.crashed, served.died_at = True, time.monotonic()
            tail = [line for line in served.service.log_tail(4000).splitlines() if line.strip()]
            self.reason = why or f"the served bundle (version {served.version}) stopped: {_observed(served.service)[1]}"
        self.metrics.ready.labels(self.pilot).set(0)
        self.log(f"{self.reason} ({tail[-1][:200] if tail else 'no output'}): /readyz fails and requests get 503; "
                 f"starting it again in {self.restart_s:g} s (or restart `testbed serve {self.pilot}`, or promote "
                 "another version)")


@contextmanager
def running(server: ProductionServer, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Start `server` and its HTTP proxy in a background thread; yields the base URL; stops both after."""
    with _listening(server, host, port) as (url, _):
        yield url


def serve_until_stopped(server: ProductionServer, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve until Ctrl-C or SIGTERM, which end it as a KeyboardInterrupt once the sandbox is stopped. The HTTP
    server runs in a thread so that uvicorn's signal handling stays out of it: in the main thread, uvicorn ends
    the process on SIGTERM after its own shutdown, before the sandbox is stopped, and returns quietly on Ctrl-C."""
    with _listening(server, host, port) as (url, web):
        on_ready(url)
        while web.is_alive():
            web.join(timeout=1.0)
    raise TestbedError("the HTTP server stopped on its own (its error is printed above)",
                       fix=f"start `testbed serve {server.pilot}` again")


@contextmanager
def _listening(server: ProductionServer, host: str, port: int) -> Iterator[tuple[str, threading.Thread]]:
    import uvicorn

    server.start()
    web = uvicorn.Server(uvicorn.Config(server.app(), host=host, port=port, log_level="warning", access_log=False,
                                        lifespan="off"))
    thread = threading.Thread(target=web.run, name="testbed-serve-http", daemon=True)
    thread.start()
    try:
        while not web.started:
            if not thread.is_alive():
                raise Refused(f"could not listen on {host}:{port}", fix="choose another --port")
            time.sleep(0.05)
        bound = web.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}", thread
    finally:
        web.should_exit = True
        thread.join(timeout=15)
        server.stop()
