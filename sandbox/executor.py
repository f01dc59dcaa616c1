"""Where a sandbox job runs: a Ray task (local Ray bound to loopback, or the cluster at `RAY_ADDRESS`),
or inline (the test double for Ray). Ray runs only this trusted harness code; the vendor's code runs only
inside the sandbox that the task starts."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import Future
from typing import Protocol, Self

from sandbox.runner import SandboxJob, SandboxResult, run_job
from testbed.errors import InfrastructureFailure, ResourceUnavailable, TestbedError, sigterm_as_ctrl_c
from testbed.net import require_listener, speaks_http1

__all__ = ["Executor", "RayExecutor", "InlineExecutor", "INFRASTRUCTURE_ERRORS", "STRANDED_CHECK_S"]

STRANDED_CHECK_S = 5.0
"""How often a job's wait asks whether it can still run on a live node (`RayExecutor.fail_stranded`)."""

INFRASTRUCTURE_ERRORS = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                         "ObjectReconstructionFailedError", "ObjectFetchTimedOutError", "LocalRayletDiedError",
                         "RaySystemError", "ReferenceCountingAssertionError", "OutOfMemoryError")
"""`ray.exceptions` that mean the machinery failed, not the bundle (a bundle's own failure is a verdict inside
the result, never an exception): `submit`'s future raises them as `InfrastructureFailure`."""


class Executor(Protocol):
    """Runs a sandbox job somewhere and returns its result; a context manager that releases what it started.
    `submit` places a job without waiting: its future gives the result, or raises `InfrastructureFailure`
    (retry) or another `TestbedError` (say it plainly); once done, its `node` names where the job ran."""

    address: str | None

    def run(self, job: SandboxJob) -> SandboxResult: ...

    def connect(self) -> None: ...

    def submit(self, job: SandboxJob) -> Future[SandboxResult]: ...

    def cancel(self, future: Future) -> None: ...

    def fail_stranded(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class _Closing:
    address: str | None = None
    """The cluster that runs the jobs; None: this machine."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def connect(self) -> None:
        """Reach the machinery that runs jobs (nothing to do by default); `submit` does it when needed."""

    def shutdown(self) -> None:
        """Release what this executor started (nothing by default)."""

    def fail_stranded(self) -> None:
        """Fail the placed jobs that nothing can run any more (none by default): see `RayExecutor`'s."""


class InlineExecutor(_Closing):
    """Runs the job in this process: for unit tests and debugging (still sandboxed unless the job says not)."""

    def run(self, job: SandboxJob) -> SandboxResult:
        """The job's result; the harness failing under it here (a disk full, no file descriptors or memory
        left) is the machinery's failure, as on a Ray node (`_translate`)."""
        try:
            return run_job(job)
        except (OSError, MemoryError) as exc:
            raise _harness_failed(exc, "this machine") from exc

    def submit(self, job: SandboxJob) -> Future[SandboxResult]:
        """Runs the job now, in this process; the future is already done."""
        future: Future[SandboxResult] = Future()
        future.node = "inline"  # type: ignore[attr-defined]
        try:
            future.set_result(self.run(job))
        except Exception as exc:  # noqa: BLE001 - the future carries it, as a Ray task's would
            future.set_exception(exc)
        return future

    def cancel(self, future: Future) -> None:
        future.cancel()


class RayExecutor(_Closing):
    """Runs each job as a Ray task that asks for the job's CPUs, GPUs and memory."""

    def __init__(self) -> None:
        self.started_local = False
        self._refs: dict[Future, tuple[object, dict[str, float]]] = {}
        """Each placed job's future -> its Ray task and what it asks for."""
        self._settling = threading.Lock()
        """Held while a future is settled: by Ray's callback, or as stranded (`fail_stranded`), never both."""
        self._warming: list = []

    @property
    def address(self) -> str | None:  # type: ignore[override]
        return os.environ.get("RAY_ADDRESS") or None

    def connect(self) -> None:
        import ray
        from ray._private import ray_constants

        if ray.is_initialized():
            return
        if not self.address and ray_constants.ENABLE_RAY_CLUSTER:
            raise TestbedError(
                "Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so a local Ray would listen "
                "on every network interface", where="local Ray",
                fix="import testbed.config before anything that imports ray, or export "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (or set RAY_ADDRESS to use a cluster)")
        common = {"log_to_driver": False, "configure_logging": False}
        if self.address:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ResourceUnavailable(f"could not join the Ray cluster: {str(exc).splitlines()[0][:300]}",
                                          where=f"RAY_ADDRESS={self.address}", fix=_CLUSTER_FIX) from None
        else:
            try:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **common)
            except BaseException as exc:  # Ctrl-C, or SIGTERM through the handler ray.init sets: sys.exit(15)
                _stop_local_start()
                if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
                    raise KeyboardInterrupt from None  # said as an interruption, never a silent exit 15
                raise
            self.started_local = True
        if threading.current_thread() is threading.main_thread():  # after ray.init, which sets its own
            signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)
        self._warm_nodes()

    def _warm_nodes(self) -> None:
        """Start one idle Ray worker on each node now, without waiting: it imports the harness's sandbox code, so
        the first evaluation on a node does not pay for that worker and those imports (~0.5 s on 2 cores)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        warm = ray.remote(num_cpus=0, max_retries=0)(_warm_up)
        self._warming = [warm.options(name="testbed-warm-up", scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=True)).remote() for n in ray.nodes() if n["Alive"]]

    def submit(self, job: SandboxJob) -> Future[SandboxResult]:
        """Place the job as a Ray task asking for its CPUs, GPUs and memory (its sandbox's memory limit, as Ray's
        `memory` resource: the limits of the sandboxes Ray runs at once on a node never add up beyond what Ray
        counts there); Ray starts it when a node has them free. Refused at once when no node could ever run it."""
        import ray

        self.connect()
        need = {"CPU": job.cpus, "GPU": job.gpus, "memory": job.limits.memory_mb << 20}
        largest = _largest_node()
        for key, amount in need.items():
            if amount > largest.get(key, 0):
                raise ResourceUnavailable(
                    f"the pilot asks for {_amount(key, amount)}, the largest Ray node has "
                    f"{_amount(key, largest.get(key, 0))}", where=f"Ray at {self.address or 'local (127.0.0.1)'}",
                    fix="set RAY_ADDRESS to a cluster with a node that large, or (the city) lower `resources` in the "
                        "pilot spec; a vendor's `testbed check` needs a node that large, as the evaluation does"
                        + (" (Ray counts about 70 % of a node's free RAM at its start as `memory`; `ray start "
                           "--memory BYTES` sets it)" if key == "memory" else ""))
        task = ray.remote(max_retries=0)(_run_on_node).options(
            num_cpus=job.cpus, num_gpus=job.gpus, memory=need["memory"], name="testbed-sandbox-evaluation")
        ref = task.remote(job)
        future: Future[SandboxResult] = Future()
        self._refs[future] = ref, need

        def settle(done: Future) -> None:
            with self._settling:
                self._refs.pop(future, None)
                if future.done():
                    return  # failed already, as stranded (`fail_stranded`)
                try:
                    result, future.node = done.result()  # type: ignore[attr-defined]
                    future.set_result(result)
                except BaseException as exc:  # noqa: BLE001 - translated for the caller, who decides
                    future.set_exception(_translate(exc))

        ref.future().add_done_callback(settle)
        return future

    def cancel(self, future: Future) -> None:
        """Stop a placed job: kills its worker; the sandbox dies with it (--die-with-parent)."""
        import ray

        placed = self._refs.pop(future, None)
        if placed is not None:
            ray.cancel(placed[0], force=True)

    def fail_stranded(self) -> None:
        """Fail each placed job that no live node is large enough for any more (the nodes that were have been
        lost): Ray would keep it pending for ever, and its campaign would never end. It is cancelled and its
        future raises `InfrastructureFailure` (a campaign retries it, and the placement then says what is
        missing). A cluster that cannot say which nodes are alive just now (its head busy or restarting) fails
        nothing: the question is asked again at the next check, and a job the cluster itself lost fails by Ray."""
        import ray

        if not self._refs:
            return
        try:
            largest = _largest_node()
        except Exception:  # noqa: BLE001 - any failure to list the nodes: no verdict on the jobs from it
            return
        for future, (ref, need) in list(self._refs.items()):
            short = [key for key, amount in need.items() if amount > largest.get(key, 0)]
            if not short:
                continue
            with self._settling:
                if future.done() or self._refs.pop(future, None) is None:
                    continue
                future.set_exception(InfrastructureFailure(
                    f"no live Ray node has the {' and '.join(_amount(k, need[k]) for k in short)} the job asks for "
                    "any more (a node large enough was lost): Ray would keep it waiting for ever",
                    where=f"Ray at {self.address or 'local (127.0.0.1)'}",
                    fix="bring back a node that large (`ray status` lists the nodes); a rerun evaluates it again"))
            ray.cancel(ref, force=True)

    def run(self, job: SandboxJob) -> SandboxResult:
        future = self.submit(job)
        check = time.monotonic() + STRANDED_CHECK_S
        try:
            while True:
                try:
                    return future.result(timeout=0.5)  # short waits: Ctrl-C is seen at once
                except TimeoutError:
                    if time.monotonic() >= check:  # the nodes large enough for it lost: never waited on for ever
                        self.fail_stranded()
                        check = time.monotonic() + STRANDED_CHECK_S
        except KeyboardInterrupt:
            self.cancel(future)
            raise

    def shutdown(self) -> None:
        import ray

        self._warming = []
        if self.started_local and ray.is_initialized():
            ray.shutdown()
            self.started_local = False


_CLUSTER_FIX = ("start the cluster's head (`ray start --head --port 6379`) or correct RAY_ADDRESS to its host:port; "
                "unset RAY_ADDRESS to use a local Ray on this machine")


def _check_reachable(address: str) -> None:
    """Fail in seconds, with the fix, when nothing listens at `address` (host:port, or ray://host:port), or a
    web server does: `ray.init` would retry either for minutes. `auto` (the cluster this machine runs) is left
    to Ray."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ResourceUnavailable(f"{address!r} is not a Ray cluster address", where="RAY_ADDRESS",
                                  fix="give the head node as host:port (e.g. 10.0.0.5:6379), or unset RAY_ADDRESS "
                                      "to use a local Ray")
    require_listener(host, int(port), what="Ray cluster", where=f"RAY_ADDRESS={address}", fix=_CLUSTER_FIX)
    if speaks_http1(host, int(port)):  # e.g. the dashboard's port: ray.init would wait on it for minutes
        raise ResourceUnavailable(f"a web server answers at {host}:{port}, not a Ray cluster's GCS",
                                  where=f"RAY_ADDRESS={address}",
                                  fix="give the head node's GCS address (host:6379 by default; the dashboard's "
                                      "port, 8265, is not it), or unset RAY_ADDRESS to use a local Ray")


def _largest_node() -> dict[str, float]:
    """Per resource (CPU, GPU, memory in bytes), the most any one live Ray node has: a task runs on one node."""
    import ray

    largest: dict[str, float] = {}
    for node in ray.nodes():
        if node["Alive"]:
            for key, amount in node["Resources"].items():
                largest[key] = max(largest.get(key, 0), amount)
    return largest


def _amount(key: str, amount: float) -> str:
    return f"{int(amount) >> 20} MB of memory" if key == "memory" else f"{amount:g} {key}"


def _warm_up() -> None:
    """Nothing: a Ray worker runs it by importing this module, and so the sandbox runner (`RayExecutor.connect`)."""


def _run_on_node(job: SandboxJob) -> tuple[SandboxResult, str]:
    """The Ray task: the job's result and the id of the Ray node that ran it (a campaign records where)."""
    import ray

    return run_job(job), ray.get_runtime_context().get_node_id()


def _translate(exc: BaseException) -> BaseException:
    """A Ray failure as the caller should see it: the TestbedError a task raised, said plainly; a failure of
    the machinery as `InfrastructureFailure` (Ray's own, or the node's under the harness: a disk full, no file
    descriptors or memory left; the bundle's failures are verdicts inside the result); anything else unchanged."""
    import ray

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else None
    if isinstance(cause, TestbedError):
        return cause
    if isinstance(cause, (OSError, MemoryError)):
        return _harness_failed(cause, "the Ray node")
    if type(exc).__name__ in INFRASTRUCTURE_ERRORS or any(
            c.__name__ in INFRASTRUCTURE_ERRORS for c in type(exc).__mro__):
        return InfrastructureFailure(f"{type(exc).__name__}: {_first_line(exc)}", where="Ray",
                                     fix=_AGAIN + "check the Ray nodes (`ray status`) if it keeps happening")
    return exc


_AGAIN = "nothing was recorded: run the command again (a campaign retries it by itself); "


def _harness_failed(cause: BaseException, node: str) -> InfrastructureFailure:
    """The harness's own failure on `node` (an OSError or MemoryError under it): the machinery's."""
    return InfrastructureFailure(f"the testbed's harness failed on {node} ({type(cause).__name__}: "
                                 f"{_first_line(cause)})", where=node,
                                 fix=_AGAIN + "check that node's free disk, memory and open-file limit if it "
                                              "keeps happening")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else ""


def _stop_local_start() -> None:
    """The processes of a local Ray whose start was cut short (its GCS, raylet and agents), stopped now rather
    than left to notice their driver is gone (about a minute)."""
    import ray

    with contextlib.suppress(Exception):  # nothing more to do for a start that never finished
        ray.shutdown()

