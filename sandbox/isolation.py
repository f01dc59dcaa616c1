"""The bubblewrap sandbox: what the vendor's process can see and do.

Inside: the Python runtime and the bundle (read-only), a private `/tmp`, one socket folder shared with the
harness, an empty network namespace, its own PID/IPC/UTS namespaces, no capabilities, an unprivileged uid
(65534), and rlimits on address space, processes, open files and CPU time. Nothing else of the host's files:
not the city data, not the labels, not the MLflow store, not other submissions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sandbox.seccomp import user_namespace_filter
from testbed.errors import SandboxUnavailable

__all__ = ["SandboxPaths", "SandboxLimits", "sandbox_command", "check_isolation", "seccomp_file", "NOBODY",
           "ENV_MOUNT"]

NOBODY = 65534
WORKER = Path(__file__).with_name("worker.py")
ENV_MOUNT = Path("/opt/venv")
"""Where a bundle's own Python environment (`sandbox.environment`) is mounted, read-only, in the sandbox."""


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int
    max_processes: int
    cpu_seconds: int
    threads: int
    tmp_mb: int = 2048
    """Size of the private /tmp, and the largest file the service may write anywhere (the socket folder too)."""


@dataclass(frozen=True)
class SandboxPaths:
    bentoml_home: Path
    """Private BentoML home holding only this bundle (mounted read-only at /bento)."""
    socket_dir: Path
    """Folder shared with the harness (mounted at /run/testbed): the service's Unix socket lives here."""


def _runtime_dirs(python_env: Path | None = None) -> list[Path]:
    """Python runtime folders the sandbox needs at their own paths: the harness's venv and its base
    interpreter; with a bundle's own environment (mounted at ENV_MOUNT), only that environment's base
    interpreter (the `home` of its pyvenv.cfg): the harness's venv is then not mounted at all."""
    if python_env is None:
        dirs = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    else:
        lines = (python_env / "pyvenv.cfg").read_text().splitlines()
        cfg = {key.strip(): value.strip() for key, _, value in (line.partition("=") for line in lines)}
        dirs = {Path(cfg["home"]).resolve().parent}
    return sorted(d for d in dirs if not str(d).startswith("/usr"))


def _parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if p != Path("/")]


def sandbox_command(argv: list[str], paths: SandboxPaths, limits: SandboxLimits, *, gpu: bool = False,
                    env: dict[str, str] | None = None, seccomp_fd: int | None = None,
                    python_env: Path | None = None) -> list[str]:
    """The full command line that runs `argv` inside the sandbox (`seccomp_fd`: an open file holding
    `seccomp.user_namespace_filter()`, to be inherited by the command). `python_env`: a bundle's own virtual
    environment, mounted read-only at ENV_MOUNT instead of the harness's (run `ENV_MOUNT/bin/python`)."""
    # The address-space limit is exact on CPU; CUDA reserves huge PROT_NONE ranges, so with a GPU the limit
    # applies to writable memory (RLIMIT_DATA) instead.
    memory = f"--data={limits.memory_mb << 20}" if gpu else f"--as={limits.memory_mb << 20}"
    cmd = ["prlimit", memory, f"--nproc={limits.max_processes}", "--nofile=4096",
           f"--cpu={limits.cpu_seconds}", f"--fsize={limits.tmp_mb << 20}", "--core=0", "--",
           "bwrap", "--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", *_user_namespace(), "--hostname", "sandbox",
           "--ro-bind", "/usr", "/usr",
           "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
           "--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    made: set[Path] = {Path("/tmp"), Path("/usr"), Path("/etc")}
    for runtime in _runtime_dirs(python_env):
        for parent in _parents(runtime):
            if parent not in made:
                cmd += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        cmd += ["--ro-bind", str(runtime), str(runtime)]
    cmd += ["--perms", "0755", "--dir", "/opt/testbed", "--ro-bind", str(WORKER), "/opt/testbed/worker.py",
            "--ro-bind", str(paths.bentoml_home), "/bento",
            "--perms", "0755", "--dir", "/run", "--bind", str(paths.socket_dir), "/run/testbed"]
    if python_env is not None:
        cmd += ["--ro-bind", str(python_env), str(ENV_MOUNT)]
    if gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind", str(dev), str(dev)]
    threads = str(max(1, limits.threads))
    bin_dir = ENV_MOUNT / "bin" if python_env is not None else Path(sys.executable).parent
    base_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
                "LANG": "C.UTF-8", "BENTOML_HOME": "/bento", "BENTOML_DO_NOT_TRACK": "true",
                "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp/matplotlib", "YOLO_CONFIG_DIR": "/tmp/yolo",
                "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "ORT_DISABLE_TELEMETRY": "1",
                "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, **(env or {})}
    cmd += ["--clearenv"]
    for key, value in base_env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", "/tmp"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    if os.geteuid() == 0:
        # As root, a user namespace would map the sandbox to uid 0 outside, where process rlimits do not
        # apply: drop to a real unprivileged uid instead, with every capability gone.
        cmd += ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--"]
    return cmd + argv


def _user_namespace() -> list[str]:
    """Unprivileged users get an unprivileged uid through a user namespace (root uses setpriv instead)."""
    if os.geteuid() == 0:
        return []
    return ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL"]


@contextlib.contextmanager
def seccomp_file() -> Iterator[int | None]:
    """A file descriptor holding the seccomp filter, for ONE command (bwrap reads it to the end); None on
    unknown architectures."""
    program = user_namespace_filter()
    if program is None:
        yield None
        return
    with tempfile.TemporaryFile() as fh:
        fh.write(program)
        fh.flush()
        fh.seek(0)
        yield fh.fileno()


@functools.cache
def check_isolation() -> None:
    """Raise SandboxUnavailable unless bubblewrap can build a no-network, unprivileged sandbox here."""
    missing = [tool for tool in ("bwrap", "prlimit") if shutil.which(tool) is None]
    if os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists():
        missing.append("setpriv")
    if missing:
        raise SandboxUnavailable(
            f"isolation tools missing: {', '.join(missing)}; untrusted bundles will not run",
            fix="run `make setup` (installs the Debian package bubblewrap), or pass --unsafe-no-sandbox to run "
                "trusted code without isolation (recorded on the run, fails the isolation gate)")
    with seccomp_file() as fd:
        probe = sandbox_command(["/usr/bin/true"], SandboxPaths(Path("/tmp"), Path("/tmp")),
                                SandboxLimits(memory_mb=512, max_processes=64, cpu_seconds=10, threads=1),
                                seccomp_fd=fd)
        result = subprocess.run(probe, capture_output=True, text=True, timeout=30,
                                pass_fds=() if fd is None else (fd,))
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {result.stderr.strip()[-300:]}",
            fix="allow user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run as root; "
                "inside containers, start them with --privileged or a seccomp profile that allows clone(2)")
