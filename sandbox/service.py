"""One bundle served inside the sandbox: the building block of both evaluation (`runner.run_job`) and
production serving. The harness imports the bundle into a private BentoML home, starts the service under
bubblewrap (or, with the explicit unsafe flag, as a plain subprocess) and talks to it over a Unix socket.

    with SandboxedService(bundle_bytes, limits, forbidden=ws.harness_paths, python_env=env.ensure()) as svc:
        if svc.wait_ready(timeout=120):
            with httpx.Client(transport=svc.transport(), base_url="http://sandbox") as client: ...
    svc.returncode, svc.stopped_by_us, svc.log_tail()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from sandbox.bundle import import_bundle
from sandbox.isolation import ENV_MOUNT, NOBODY, WORKER, SandboxLimits, SandboxPaths, sandbox_command, seccomp_file

__all__ = ["SandboxedService"]


class _Watch(threading.Thread):
    """Samples the resident memory of the sandboxed process tree."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return


class SandboxedService:
    """A bundle's BentoML service running in the sandbox, reachable only through a Unix socket."""

    def __init__(self, bundle: bytes, limits: SandboxLimits, *, isolated: bool = True, gpus: float = 0,
                 forbidden: list[str] | tuple[str, ...] = (), python_env: Path | None = None):
        self.bundle, self.limits, self.isolated, self.gpus = bundle, limits, isolated, gpus
        self.forbidden = list(forbidden)
        self.python_env = python_env
        """The bundle's own virtual environment (`sandbox.environment`), or None for the harness's Python."""
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        """Exit status once stopped (None: it was still running when the harness stopped it)."""
        self.stopped_by_us = False
        """True when the service was still running when the harness stopped it."""
        self.started_at = 0.0
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._watch: _Watch | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SandboxedService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def start(self) -> None:
        """Import the bundle privately (no vendor code runs) and start its service in the sandbox."""
        self.started_at = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="testbed-run-")
        tmp = Path(self._tmp.name)
        with seccomp_file() as fd, open(self.log_path, "wb") as log:
            cmd, env = self._command(tmp, fd if self.isolated else None)
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True,
                                         pass_fds=(fd,) if fd is not None and self.isolated else ())
        self._watch = _Watch(self.proc.pid)
        self._watch.start()

    def _command(self, tmp: Path, seccomp_fd: int | None) -> tuple[list[str], dict[str, str] | None]:
        bundle = tmp / "bundle.bento"
        bundle.write_bytes(self.bundle)
        home, sockets = tmp / "bentoml", tmp / "sock"
        tag = import_bundle(bundle, home)
        bundle.unlink()
        sockets.mkdir(mode=0o700)
        for path in [home, *home.rglob("*")]:
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        if not self.isolated:
            env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
            python = str(self.python_env / "bin" / "python") if self.python_env else sys.executable
            return [python, "-I", str(WORKER), tag, str(self.socket_path)], env
        if os.geteuid() == 0:
            os.chown(sockets, NOBODY, NOBODY)
        extra = {"CUDA_VISIBLE_DEVICES": os.environ["CUDA_VISIBLE_DEVICES"]} \
            if "CUDA_VISIBLE_DEVICES" in os.environ else {}
        python = str(ENV_MOUNT / "bin" / "python") if self.python_env else sys.executable
        argv = [python, "-I", "/opt/testbed/worker.py", tag, "/run/testbed/service.sock", *self.forbidden]
        return sandbox_command(argv, SandboxPaths(home, sockets), self.limits, gpu=self.gpus > 0, env=extra,
                               seccomp_fd=seccomp_fd, python_env=self.python_env), None

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL); record how it ended."""
        if self.proc is None:
            return
        self.returncode = self.proc.poll()
        self.stopped_by_us = self.returncode is None
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if self._watch:
            self._watch.stop.set()

    def close(self) -> None:
        """Remove the private BentoML home, socket folder and log."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- talking to it -----------------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        assert self._tmp is not None, "the service is not started"
        return Path(self._tmp.name)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "sock" / "service.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sandbox.log"

    def transport(self) -> httpx.HTTPTransport:
        """An httpx transport to the service's socket (use with base_url `http://sandbox`)."""
        return httpx.HTTPTransport(uds=str(self.socket_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> float | None:
        """Poll `/readyz` until it answers 200, the service exits or `timeout` passes; the monotonic time it
        became ready, or None."""
        deadline = time.monotonic() + timeout
        with httpx.Client(transport=self.transport(), base_url="http://sandbox") as client:
            while self.alive() and time.monotonic() < deadline:
                try:
                    if client.get("/readyz", timeout=2).status_code == 200:
                        return time.monotonic()
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        return None

    @property
    def peak_rss_mb(self) -> float:
        return (self._watch.peak if self._watch else 0) / 2**20

    def log_tail(self, limit: int = 200_000) -> str:
        """The last `limit` bytes of the service's log (which the service may have made huge)."""
        path = self.log_path
        if not path.is_file():
            return ""
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - limit))
            return fh.read().decode(errors="replace")
