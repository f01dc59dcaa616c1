"""`testbed serve`: the pilot's production bundle, served in the sandbox, behind a trusted proxy.

The bundle comes from the MLflow registry by the `production` alias (never from a path someone typed) and is
checked again as a promotion is (latest review approves its latest evaluation, gates passed, bytes hash to what
was evaluated); otherwise nothing is served. It runs under the same sandbox as evaluation (no network,
unprivileged, rlimits), on the Python environment the bundle declared (the one its evaluation ran on), on a
Unix socket; the proxy (`serving.proxy`), on 127.0.0.1 by default, adds `/healthz`, `/readyz`, Prometheus
`/metrics` and adaptive batching (`serving.batching`), forwards the contract's API, checking each request and
each answer against the contract, and answers `/schema.json` (what `bentoml.SyncHTTPClient` reads) from the
approved bundle's `bento.yaml`. A watcher (`serving.watcher`) polls
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

from evaluation.families import open_family
from evaluation.tracking import registered_model_name
from sandbox.bundle import inspect_bundle
from sandbox.environment import bundle_environment
from sandbox.isolation import SandboxLimits, check_isolation, hidden_paths
from sandbox.service import SandboxedService
from serving.admission import Admission
from serving.batching import Batcher
from serving.metrics import ServingMetrics
from serving.proxy import Proxy, Served, served_schema
from serving.watcher import Watcher, observed
from testbed.config import Workspace
from testbed.errors import Refused, TestbedError
from testbed.text import printable
from workflow.catalogue import get_pilot
from workflow.promote import Approved, Production

__all__ = ["ProductionServer", "running", "serve_until_stopped"]

SERVICE_CPU_SECONDS = 10**9
"""A long-running service has no CPU-time budget (evaluation runs do); memory and process limits still hold."""


def _stderr(line: str) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} testbed serve: {line}", file=sys.stderr, flush=True)


class ProductionServer(Proxy, Watcher):
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
        self._refused, self._violated = None, {}  # the watcher's (`serving.watcher`)
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
            verdict, why = observed(service)  # read before the sandbox goes: caught while starting?
            service.stop()
            service.close()
            if verdict == "sandbox_violation":  # as if caught while serving: never started again
                self._violated[ok.version] = why
                self.log(f"SANDBOX VIOLATION by version {ok.version} ({ok.submission.id}) while it started: {why}")
                raise Refused(f"version {ok.version} was stopped while it started: {why}",
                              fix="promote or roll back to another version; this server never starts it again")
            when = f"within {r.startup_timeout_s} s" if service.stopped_by_us else "(it exited)"
            raise Refused(f"version {ok.version} ({ok.submission.id}) did not become ready {when} in the sandbox: "
                          f"{tail[-1] if tail else 'no output'}",
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

    def _crashed(self, served: Served, why: str = "") -> None:
        """`served` died (or, `why`, is stuck and is being stopped): 503 until the watcher starts it again."""
        with self._lock:
            if served.crashed:
                return
            served.crashed, served.died_at = True, time.monotonic()
            tail = [line for line in served.service.log_tail(4000).splitlines() if line.strip()]
            self.reason = why or f"the served bundle (version {served.version}) stopped: {observed(served.service)[1]}"
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
        yield f"http://{f'[{host}]' if ':' in host else host}:{bound[1]}", thread
    finally:
        web.should_exit = True
        thread.join(timeout=15)
        server.stop()
