"""One bundle served inside the sandbox: the building block of both evaluation (`runner.run_job`) and
production serving. The harness creates the service's socket in its own private folder, starts the service
under bubblewrap (or, with the explicit unsafe flag, as a plain subprocess) with that socket as a file
descriptor, imports the bundle into a private BentoML home (mounted read-only in the sandbox) while the
service's Python starts, hands it the bundle's tag, and talks to it on that socket. Nothing from inside decides
where the harness connects.

    forbidden = hidden_paths(ws.harness_locations)  # `sandbox.isolation`
    with SandboxedService(bundle_bytes, limits, forbidden=forbidden, python_env=env.ensure()) as svc:
        if svc.wait_ready(timeout=120):
            channel = svc.channel()  # HTTP/1.1 on the service's socket (`sandbox.channel`)
            status, body, seconds, error = channel.post(route, payload, "application/json", deadline)
    svc.returncode, svc.stopped_by_us, svc.log_tail(), svc.evidence()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from sandbox.bundle import import_bundle
from sandbox.channel import MAX_RESPONSE_BYTES, Budget, Channel
from sandbox.environment import declared_requirements
from sandbox.host import RUN_PREFIX, Cgroups, sweep_stale
from sandbox.isolation import ENV_MOUNT, NOBODY, WORKER, SandboxLimits, SandboxPaths, launch
from sandbox.observe import Evidence, Opened, OutputTail, Reports, Watch
from sandbox.uids import UidLease
from testbed.errors import BundleError
from testbed.yamlio import safe_load_bounded

__all__ = ["SandboxedService"]


class SandboxedService:
    """A bundle's BentoML service running in the sandbox, reachable only through the harness's own socket."""

    def __init__(self, bundle: bytes, limits: SandboxLimits, *, isolated: bool = True, gpus: float = 0,
                 forbidden: list[str] | tuple[str, ...] = (), python_env: Path | None = None,
                 requirements: tuple[str, ...] | None = None, home: Path | None = None):
        self.bundle, self.limits, self.isolated, self.gpus = bundle, limits, isolated, gpus
        self.shared_home = home if isolated else None
        """A BentoML home the starts of one job share (isolated only): the first imports the bundle into it, a
        later one serves what is there, unpacked once. Every sandbox mounts it read-only, so a later start sees
        exactly what the first unpacked, nothing a service wrote. The job removes it; None: a home of this start's
        own, removed with it."""
        self.forbidden = list(forbidden)
        self.python_env = python_env
        """The bundle's own virtual environment (`sandbox.environment`), or None for the harness's Python."""
        self.requirements = requirements
        """What `python_env` was built from: the `bento.yaml` the bundle unpacks to must declare exactly these
        (the harness may have read them from a record kept beside the stored bundle); None: not checked."""
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        """Exit status once stopped (None: it was still running when the harness stopped it)."""
        self.stopped_by_us = False
        """True when the service was still running when the harness stopped it."""
        self.started_at = 0.0
        self.enforcement: dict[str, str] = {}
        """How each limit is enforced on this run (cgroup, rlimit, tmpfs…), for the scorecard."""
        self._workdir: Path | None = None
        self._uid: UidLease | None = None
        self._cgroups: Cgroups | None = None
        self._watch: Watch | None = None
        self._output: OutputTail | None = None
        self._reports: Reports | None = None
        self._opened: Opened | None = None
        self._bento = ""
        """The bento's folder in the private home (`bentos/NAME/VERSION`): its files are the archive's members."""
        self._stop_lock = threading.Lock()
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> SandboxedService:
        try:
            self.start()
        except BaseException:  # e.g. an archive BentoML refuses: leave nothing behind
            self.stop()
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()

    def start(self) -> None:
        """Start the sandbox's Python, then import the bundle privately (no vendor code runs) while it starts up
        (BentoML and its server are imported meanwhile: ~1 s), then hand it the bundle's tag: only then does the
        service load the bundle."""
        self.started_at = time.monotonic()
        sweep_stale()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-"))
        self.home.mkdir(mode=0o755, exist_ok=self.shared_home is not None)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(256)
        out_r, out_w = os.pipe()
        rep_r, rep_w = os.pipe()
        tag_r, tag_w = os.pipe()
        argv = [str(listener.fileno()), str(rep_w), str(tag_r)]
        fds = (listener.fileno(), rep_w, tag_r)
        try:
            if self.isolated:
                self._start_isolated(argv, fds, out_w)
            else:
                env = {**os.environ, "BENTOML_HOME": str(self.home), "BENTOML_DO_NOT_TRACK": "true"}
                self.enforcement = {"isolation": "none (--unsafe-no-sandbox)"}
                python = str(self.python_env / "bin" / "python") if self.python_env else sys.executable
                self.proc = subprocess.Popen([python, "-I", str(WORKER), *argv], stdout=out_w,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                             start_new_session=True, pass_fds=fds)
        except BaseException:
            os.close(tag_w)
            raise
        finally:
            listener.close()  # only the service holds it now: if it dies, connecting fails at once
            for fd in (out_w, rep_w, tag_r):
                os.close(fd)
        self._output, self._reports = OutputTail(out_r), Reports(rep_r, self.forbidden)
        self._output.start()
        self._reports.start()
        self._watch = Watch(self.proc.pid, sample_memory=not (self._cgroups and self._cgroups.available),
                            limit=self.limits.memory_mb << 20, over=lambda: self._terminate(signal.SIGKILL))
        self._watch.start()
        try:  # a refused archive: the pipe closes with no tag, and the service exits without loading anything
            tag = self._import()
            with contextlib.suppress(OSError):  # the service already gone: its exit status says why
                os.write(tag_w, tag.encode())
        finally:
            os.close(tag_w)

    def _import(self) -> str:
        home, done = self.home, list(self.home.glob("bentos/*/latest"))
        if len(done) == 1:  # imported by an earlier start of this job (`shared_home`)
            tag = f"{done[0].parent.name}:{done[0].read_text()}"
        else:
            bundle = self.workdir / "bundle.bento"
            bundle.write_bytes(self.bundle)
            tag = import_bundle(bundle, home)
            bundle.unlink()
        bento = "bentos/" + tag.replace(":", "/")
        if self.requirements is not None:
            declared = tuple(declared_requirements(safe_load_bounded((home / bento / "bento.yaml").read_bytes()),
                                                   "the bundle's bento.yaml"))
            if declared != tuple(self.requirements):
                raise BundleError("the Python environment prepared for this bundle is not the one its own bento.yaml "
                                  f"declares ({', '.join(declared)[:300]})", where="the bundle's bento.yaml",
                                  fix="the record kept beside the stored bundle was altered: restore it (or submit "
                                      "the bundle again), then evaluate")
        self._opened, self._bento = Opened(home), bento
        for path in [home, *home.rglob("*")]:
            folder = path.is_dir()
            path.chmod(path.stat().st_mode | (0o555 if folder else 0o444))
            if folder:
                self._opened.watch(path)
        self._opened.start()  # before the service is told the tag: it has opened nothing of the bundle yet
        return tag

    def _start_isolated(self, argv: list[str], fds: tuple[int, ...], out_w: int) -> None:
        root = os.geteuid() == 0
        if root:
            self._uid = UidLease()
            self._cgroups = Cgroups(self.workdir.name.removeprefix(RUN_PREFIX), self.limits.memory_mb,
                                    self.limits.max_processes + 2, self.limits.cpus)  # + bubblewrap's own two
        cgroups = self._cgroups is not None and self._cgroups.available
        cpu = cgroups and self._cgroups.cpu_bounded
        self.enforcement = {
            "cpu": f"cgroup quota {self.limits.cpus:g} CPU" if cpu else
            f"CPU time only, {self.limits.cpu_seconds} s (no cpu cgroup)",
            "uid": f"{self._uid.uid} (leased for this sandbox)" if self._uid else f"{NOBODY} (user namespace)",
            "memory": "cgroup (memfd, shm and tmpfs included)" if cgroups else
            ("rlimit data segment" if self.gpus > 0 else "rlimit address space") + " (cgroups unavailable)",
            "processes": "cgroup pids" if cgroups else "rlimit nproc (cgroups unavailable)",
            "tmp": f"tmpfs {self.limits.tmp_mb} MiB" + (f", {self.limits.tmp_inodes} inodes" if root else ""),
        }
        extra = {"CUDA_VISIBLE_DEVICES": os.environ["CUDA_VISIBLE_DEVICES"]} \
            if "CUDA_VISIBLE_DEVICES" in os.environ else {}
        paths = SandboxPaths(self.home, self.workdir, uid=self._uid.uid if self._uid else NOBODY,
                             cgroup_procs=self._cgroups.procs_files if cgroups else [])
        python = str(ENV_MOUNT / "bin" / "python") if self.python_env else sys.executable
        worker = [python, "-I", "/opt/testbed/worker.py", *argv]
        with launch(worker, paths, self.limits, gpu=self.gpus > 0, env=extra,
                    python_env=self.python_env) as (cmd, own_fds):
            self.proc = subprocess.Popen(cmd, stdout=out_w, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, start_new_session=True,
                                         pass_fds=(*own_fds, *fds))

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop everything the sandbox runs: SIGTERM to the service, which has `grace_s` to exit (0: SIGKILL at
        once, as an evaluation does once its requests are done), bubblewrap reporting how it ended; then SIGKILL
        to all that is left (its cgroup, and bubblewrap's process group). Record how it ended: a death by
        anything but our signals (e.g. SIGSYS from the seccomp filter a moment before) still counts as the
        service's own. Safe to call more than once, from any thread."""
        with self._stop_lock:
            if self.proc is None or self._stopped:
                return
            self._stopped = True
            if self._watch:
                self._watch.sample()  # the last network counters, before the namespace goes
                self._watch.stop.set()
            running = self.proc.poll() is None
            if running:
                self._terminate(signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace_s if grace_s > 0 else 3)
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            if self._cgroups:
                self._cgroups.kill_all()
                if self._cgroups.cpu_bounded:
                    self.enforcement["cpu"] += f" (throttled in {self._cgroups.cpu_throttled()} periods of 0.1 s)"
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            code = self.proc.returncode
            ours = code in (0, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGKILL)
            self.stopped_by_us = running and (code is None or ours)
            self.returncode = None if self.stopped_by_us else code
            for reader in (self._output, self._reports):
                if reader:
                    reader.join(timeout=2)

    def _terminate(self, sig: signal.Signals) -> None:
        """`sig` to the service's processes (not to bubblewrap, which must live to report their status)."""
        if not self.isolated:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            return
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self.proc.pid).children(recursive=True):
                if proc.name() != "bwrap":
                    with contextlib.suppress(psutil.Error):
                        proc.send_signal(sig)

    def close(self) -> None:
        """Remove the private BentoML home, socket, cgroups; give the uid back."""
        if self._opened:
            self._opened.paths()  # stops watching
        if self._cgroups:
            self._cgroups.remove()
        if self._uid:
            self._uid.release()
            self._uid = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- talking to it -----------------------------------------------------------------------------------------

    @property
    def workdir(self) -> Path:
        assert self._workdir is not None, "the service is not started"
        return self._workdir

    @property
    def home(self) -> Path:
        """The private BentoML home the bundle is imported into (mounted read-only at /bento)."""
        return self.shared_home or self.workdir / "bentoml"

    @property
    def socket_path(self) -> Path:
        """The service's socket, in the harness's private folder (never mounted in the sandbox)."""
        return self.workdir / "service.sock"

    def channel(self, *, cap: int = MAX_RESPONSE_BYTES, budget: Budget | None = None) -> Channel:
        """A channel for requests to the service's socket (close it when done)."""
        return Channel(str(self.socket_path), cap=cap, budget=budget)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float) -> float | None:
        """Poll `/readyz` until it answers 200, the service exits or `timeout` passes; the monotonic time it
        became ready, or None."""
        deadline, channel = time.monotonic() + timeout, self.channel()
        try:
            while self.alive() and time.monotonic() < deadline:
                if channel.get("/readyz", min(deadline, time.monotonic() + 2))[0] == 200:
                    return time.monotonic()
                time.sleep(0.05)
        finally:
            channel.close()
        return None

    @property
    def peak_rss_mb(self) -> float:
        """Peak memory: the memory cgroup's high-water mark (shared pages once), else the sampled peak of what the
        sandbox held (`Watch`: its processes' proportional share, its /tmp and /dev/shm)."""
        if self._cgroups and self._cgroups.available:
            return self._cgroups.peak_memory_bytes() / 2**20
        return (self._watch.peak if self._watch else 0) / 2**20

    def cpu_used_s(self) -> float | None:
        """CPU seconds the sandbox has used so far, everything it ran counted (threads and processes that ended
        too), from its cgroup; None where it has none to count with."""
        return self._cgroups.cpu_used_s() if self._cgroups and self._cgroups.available else None

    @contextlib.contextmanager
    def paused(self) -> Iterator[bool]:
        """The whole sandbox stopped by the kernel while the block runs, if it can be (`Cgroups.paused`); yields
        whether it is. Only between requests: a request sent meanwhile would wait. `stop` waits for its end."""
        with self._stop_lock:
            if self._cgroups is None or self._stopped or not self.alive():
                yield False
                return
            with self._cgroups.paused() as frozen:
                yield frozen

    @property
    def cpu_quota(self) -> float:
        """Cores the sandbox may use at once where its cgroup's CFS quota holds it (`limits.cpus`); 0: not bounded."""
        return self.limits.cpus if self._cgroups and self._cgroups.cpu_bounded else 0.0

    def evidence(self, live: bool = False) -> Evidence:
        """What the harness observed from outside the sandbox, read after `stop`; `live`: while it runs, as far as
        seen yet (the files it opened left out: reading them ends their watch). Processes the kernel's OOM killer
        stopped while the sandbox stayed under its own memory limit (the host out of memory) are counted apart
        (`Evidence.host_oom_kills`), never as the sandbox's limit: the runner decides what they make of a run."""
        cg = self._cgroups if self._cgroups and self._cgroups.available else None
        opened = self._opened.paths() if self._opened and not live else None
        return Evidence(network=dict(self._watch.network) if self._watch else {},
                        harness_paths=list(self._reports.hits) if self._reports else [],
                        oom_kills=cg.oom_kills() if cg else 0, host_oom_kills=cg.host_oom_kills() if cg else 0,
                        pid_limit_hits=cg.pid_limit_hits() if cg else 0,
                        memory_over_mb=self._watch.over_limit / 2**20 if self._watch else 0,
                        opened=None if opened is None else [self._member(p) for p in opened])

    def _member(self, path: str) -> str:
        """A file of the private home as the archive names it: the bento's own files without their folder, the
        models it carries under `models/` as they are."""
        return path[len(self._bento) + 1:] if path.startswith(self._bento + "/") else path

    def log_tail(self, limit: int = 200_000) -> str:
        """The last `limit` bytes of what the service printed (drained from a pipe as it was written), after a line
        saying how much came before them, if anything did."""
        return self._output.text(limit) if self._output else ""
