"""Where a sandbox job runs: a Ray task (local Ray bound to loopback, or the cluster at `RAY_ADDRESS`),
or inline (the test double for Ray). Ray runs only this trusted harness code; the vendor's code runs only
inside the sandbox that the task starts."""

from __future__ import annotations

import os
from typing import Protocol, Self

from sandbox.runner import SandboxJob, SandboxResult, run_job
from testbed.errors import ResourceUnavailable, TestbedError

__all__ = ["Executor", "RayExecutor", "InlineExecutor"]


class Executor(Protocol):
    """Runs a sandbox job somewhere and returns its result; a context manager that releases what it started."""

    def run(self, job: SandboxJob) -> SandboxResult: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class _Closing:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Release what this executor started (nothing by default)."""


class InlineExecutor(_Closing):
    """Runs the job in this process: for unit tests and debugging (still sandboxed unless the job says not)."""

    def run(self, job: SandboxJob) -> SandboxResult:
        return run_job(job)


class RayExecutor(_Closing):
    """Runs each job as a Ray task that asks for the job's CPUs and GPUs."""

    def __init__(self) -> None:
        self.started_local = False

    @property
    def address(self) -> str | None:
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
            ray.init(address=self.address, **common)
        else:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **common)
            self.started_local = True

    def run(self, job: SandboxJob) -> SandboxResult:
        import ray

        self.connect()
        have = ray.cluster_resources()
        for key, need in (("CPU", job.cpus), ("GPU", job.gpus)):
            if need > have.get(key, 0):
                raise ResourceUnavailable(
                    f"the pilot asks for {need:g} {key}, the Ray cluster has {have.get(key, 0):g}",
                    where=f"Ray at {self.address or 'local (127.0.0.1)'}",
                    fix="set RAY_ADDRESS to a cluster with those resources, or lower `resources` in the pilot spec")
        task = ray.remote(max_retries=0)(run_job).options(num_cpus=job.cpus, num_gpus=job.gpus,
                                                         name="testbed-sandbox-evaluation")
        ref = task.remote(job)
        try:
            while not ray.wait([ref], timeout=0.5)[0]:  # short waits: Ctrl-C is seen at once
                pass
            return ray.get(ref)
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)  # kills the task's worker; the sandbox dies with it (--die-with-parent)
            raise
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, TestbedError):  # a user-facing error raised in the task: say it plainly
                raise exc.cause from None
            raise

    def shutdown(self) -> None:
        import ray

        if self.started_local and ray.is_initialized():
            ray.shutdown()
            self.started_local = False
