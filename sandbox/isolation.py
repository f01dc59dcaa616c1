"""The bubblewrap sandbox: what the vendor's process can see and do.

Inside: the Python runtime and the bundle (read-only), a private size- and inode-limited `/tmp`, a minimal
`/etc`, an empty network namespace, its own PID/IPC/UTS namespaces, no capabilities, an unprivileged uid of
its own, the seccomp filter of `sandbox.seccomp`, and limits: a memory and a pids cgroup of its own where the
host has cgroup v1 (rlimits on address space and processes otherwise), rlimits on CPU time, file size and open
files. Nothing else of the host's files: not the city data, not the labels, not the MLflow store, not other
submissions, not the harness's folders. The harness talks to the service over a socket it created and hands
in as a file descriptor: no path the sandbox can write is ever followed by the harness.
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
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.seccomp import sandbox_filter
from testbed.errors import SandboxUnavailable

__all__ = ["SandboxPaths", "SandboxLimits", "sandbox_command", "launch", "check_isolation", "hidden_paths", "NOBODY",
           "WORKER", "ENV_MOUNT"]

NOBODY = 65534
WORKER = Path(__file__).with_name("worker.py")
ENV_MOUNT = Path("/opt/venv")
"""Where a bundle's own Python environment (`sandbox.environment`) is mounted, read-only, in the sandbox."""
ETC_FROM_HOST = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "mime.types")
"""The host's /etc entries the runtime needs (dynamic linker, library alternatives); nothing else of /etc."""
_JOIN_AND_MOUNT = ('b=$1 a=$2 d=$3 o=$4; shift 4; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; '
                   'done; shift; mount -t tmpfs -o "$o" testbed-tmp "$d" || exit 125; exec "$b" --args "$a" -- "$@"')


@dataclass(frozen=True)
class SandboxLimits:
    memory_mb: int
    max_processes: int
    cpu_seconds: int
    threads: int
    tmp_mb: int = 2048
    """Size of the private /tmp, and the largest file the service may write."""
    tmp_inodes: int = 65536
    """Files and folders the private /tmp may hold (where the harness can mount it itself: as root)."""
    cpus: float = 0
    """CPU cores the service may use at once: a CFS quota on a cpu cgroup of its own (as root, cgroup v1), so a
    bundle that starts more threads than it was given gets no more CPU time than the pilot's spec, whatever the
    node has free. 0: not bounded (`cpu_seconds` still is)."""


@dataclass(frozen=True)
class SandboxPaths:
    bentoml_home: Path
    """Private BentoML home holding only this bundle (mounted read-only at /bento)."""
    workdir: Path
    """The harness's private folder for this sandbox (never mounted): synthetic /etc files, /tmp's mount point."""
    uid: int = NOBODY
    """The unprivileged uid the service runs as (as root: one leased per sandbox; otherwise mapped in a user
    namespace)."""
    cgroup_procs: list[str] = field(default_factory=list)
    """`cgroup.procs` files of the sandbox's own cgroups: it joins them before anything runs (empty: none)."""


def _runtime_dirs(python_env: Path | None = None) -> list[Path]:
    """Python runtime folders the sandbox needs, mounted read-only at their own paths: the harness's venv and
    its base interpreter; with a bundle's own environment (mounted at ENV_MOUNT), only the base interpreter, which
    every environment is made from (`sandbox.environment`): the harness's venv is then not mounted at all. Never
    read from the environment: a declared package may overwrite its `pyvenv.cfg`, whose `home` would then choose
    a host folder to mount. The single place where the runtime is decided."""
    dirs = {Path(sys.base_prefix).resolve()}
    if python_env is None:
        dirs.add(Path(sys.prefix).resolve())
    return sorted(d for d in dirs if not str(d).startswith("/usr"))


def _parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if p != Path("/")]


def _write_etc(folder: Path, uid: int) -> dict[str, Path]:
    """Synthetic account and name-service files: the service's uid has a name, `localhost` and the sandbox's
    hostname resolve without a network."""
    folder.mkdir(exist_ok=True)
    files = {
        "passwd": f"root:x:0:0::/nonexistent:/usr/sbin/nologin\nsandbox:x:{uid}:{uid}::/tmp:/usr/sbin/nologin\n",
        "group": f"root:x:0:\nsandbox:x:{uid}:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o644)
    return {name: folder / name for name in files}


def bwrap_arguments(argv: list[str], paths: SandboxPaths, limits: SandboxLimits, *, gpu: bool = False,
                    env: dict[str, str] | None = None, seccomp_fd: int | None = None,
                    python_env: Path | None = None) -> tuple[list[str], list[str]]:
    """bubblewrap's options (handed over on a file descriptor, so that no harness path shows in the sandbox's
    /proc/1/cmdline) and the command it runs. `python_env`: a bundle's own virtual environment, mounted
    read-only at ENV_MOUNT instead of the harness's (run `ENV_MOUNT/bin/python`)."""
    root = os.geteuid() == 0
    cmd = ["--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr", "--proc", "/proc",
           "--dev", "/dev", "--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/dev/shm",
           "--perms", "0755", "--dir", "/etc"]  # /dev/shm: POSIX shared memory (multiprocessing, torch), bounded
    if root:  # /tmp is a tmpfs the harness mounted with size and inode limits (see `sandbox_command`)
        cmd += ["--bind", str(paths.workdir / "tmp"), "/tmp"]
    else:
        cmd += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL",
                "--perms", "1777", "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp"]
    for name in ETC_FROM_HOST:
        if os.path.lexists(f"/etc/{name}"):
            cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    for name, path in _write_etc(paths.workdir / "etc", paths.uid if root else NOBODY).items():
        cmd += ["--ro-bind", str(path), f"/etc/{name}"]
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
            "--ro-bind", str(paths.bentoml_home), "/bento"]
    if python_env is not None:
        cmd += ["--ro-bind", str(python_env), str(ENV_MOUNT)]
    if gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            cmd += ["--dev-bind", str(dev), str(dev)]
    threads = str(max(1, limits.threads))
    bin_dir = ENV_MOUNT / "bin" if python_env is not None else Path(sys.executable).parent
    base_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
                "USER": "sandbox", "LOGNAME": "sandbox", "LANG": "C.UTF-8", "BENTOML_HOME": "/bento",
                "BENTOML_DO_NOT_TRACK": "true", "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": "/tmp/matplotlib",
                "YOLO_CONFIG_DIR": "/tmp/yolo", "YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false",
                "ORT_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, **(env or {})}
    cmd += ["--clearenv"]
    for key, value in base_env.items():
        cmd += ["--setenv", key, value]
    cmd += ["--chdir", "/tmp"]
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    if not root:
        return cmd, argv
    # As root, a user namespace would map the sandbox to uid 0 outside, where process rlimits do not apply:
    # drop to a real unprivileged uid of its own instead, with every capability gone.
    return cmd, ["/usr/bin/setpriv", f"--reuid={paths.uid}", f"--regid={paths.uid}", "--clear-groups",
                 "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--", *argv]


def sandbox_command(paths: SandboxPaths, limits: SandboxLimits, args_fd: int, *, gpu: bool = False) -> list[str]:
    """The command line that starts bubblewrap with its options read from `args_fd` (append `--` and the
    command). As root it first joins the sandbox's cgroups and mounts the private /tmp in a mount namespace of
    its own (gone with the sandbox)."""
    # With cgroups, they bound memory and processes (and count what they refuse); the process rlimit stays as a
    # looser backstop. Without, the rlimits are the limits.
    cgroups = bool(paths.cgroup_procs)
    memory = [] if cgroups else [f"--data={limits.memory_mb << 20}" if gpu else f"--as={limits.memory_mb << 20}"]
    nproc = 2 * limits.max_processes if cgroups else limits.max_processes
    cmd = ["prlimit", *memory, f"--nproc={nproc}", "--nofile=4096",
           f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 5}", f"--fsize={limits.tmp_mb << 20}", "--core=0", "--"]
    bwrap = shutil.which("bwrap") or "bwrap"
    if os.geteuid() != 0:
        return [*cmd, bwrap, "--args", str(args_fd)]
    options = f"size={limits.tmp_mb << 20},nr_inodes={limits.tmp_inodes},mode=1777,nosuid,nodev"
    return [*cmd, "/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _JOIN_AND_MOUNT,
            "sh", bwrap, str(args_fd), str(paths.workdir / "tmp"), options, *paths.cgroup_procs]


@contextlib.contextmanager
def launch(argv: list[str], paths: SandboxPaths, limits: SandboxLimits, *, gpu: bool = False,
           env: dict[str, str] | None = None,
           python_env: Path | None = None) -> Iterator[tuple[list[str], tuple[int, ...]]]:
    """`(command, fds)` for ONE `Popen(command, pass_fds=fds + yours)`: bubblewrap reads its arguments and the
    seccomp filter from those files, which close when the block ends."""
    program = sandbox_filter()
    (paths.workdir / "tmp").mkdir(exist_ok=True)
    with tempfile.TemporaryFile() as filt, tempfile.TemporaryFile() as args:
        fds = (args.fileno(),) if program is None else (args.fileno(), filt.fileno())
        if program is not None:
            filt.write(program)
            filt.flush()
            filt.seek(0)
        options, command = bwrap_arguments(argv, paths, limits, gpu=gpu, env=env, python_env=python_env,
                                           seccomp_fd=None if program is None else filt.fileno())
        args.write(b"".join(a.encode() + b"\0" for a in options))
        args.flush()
        args.seek(0)
        yield [*sandbox_command(paths, limits, args.fileno(), gpu=gpu), "--", *command], fds


HOST_SHARED = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
"""Host folders every sandbox mounts read-only at their own paths (with the Python runtime's, `_runtime_dirs`)."""
SANDBOX_OWN = ("/tmp", "/dev", "/proc", "/etc", "/opt/testbed", str(ENV_MOUNT), "/bento")
"""Folders the sandbox has of its own, where a bundle's own files (new in `/tmp`) are opened before they exist."""


def hidden_paths(locations: dict[Path, str]) -> list[str]:
    """The harness's folders (resolved, each with the setting that chose it) as the sandbox's forbidden paths;
    SandboxUnavailable, naming the setting, for one the sandbox would show to a bundle (inside a folder it mounts)
    or one holding the sandbox's own folders (a bundle's new file in its `/tmp` would read as a reach for a
    harness folder that is `/tmp`, and a sound bundle fail as a sandbox violation)."""
    shared = [Path(p).resolve() for p in (*HOST_SHARED, *(f"/etc/{n}" for n in ETC_FROM_HOST)) if os.path.exists(p)]
    shared += _runtime_dirs()
    for path, setting in locations.items():
        seen = next((s for s in shared if s == path or s in path.parents), None)
        holds = next((o for o in map(Path, SANDBOX_OWN) if o == path or path in o.parents), None)
        if seen or holds:
            problem = (f"{path} is inside {seen}, which every sandbox mounts: a bundle could read it" if seen else
                       f"{path} holds the sandbox's own {holds}: a bundle's own files there would read as reaching "
                       "for the harness")
            own = ("keep the SQLite store in a folder of its own (e.g. sqlite:////srv/testbed/mlflow.db or "
                   "sqlite:////tmp/testbed/mlflow.db)" if setting == "MLFLOW_TRACKING_URI" else
                   f"set {setting} to a folder of the testbed's own (e.g. under /srv, or /tmp/testbed)")
            raise SandboxUnavailable(problem, where=setting, fix=f"{own}, or unset it for the project-local default")
    return sorted(str(p) for p in locations)


@functools.cache
def check_isolation() -> None:
    """Raise SandboxUnavailable unless bubblewrap can build a no-network, unprivileged sandbox here."""
    missing = [tool for tool in ("bwrap", "prlimit") if shutil.which(tool) is None]
    if os.geteuid() == 0:
        missing += [tool for tool in ("/usr/bin/setpriv", "/usr/bin/unshare") if not Path(tool).exists()]
    if missing:
        raise SandboxUnavailable(
            f"isolation tools missing: {', '.join(missing)}; untrusted bundles will not run",
            fix="run `make setup` (installs the Debian package bubblewrap), or pass --unsafe-no-sandbox to run "
                "trusted code without isolation (recorded on the run, fails the isolation gate)")
    from sandbox.uids import UidLease

    with tempfile.TemporaryDirectory() as tmp:
        lease = UidLease() if os.geteuid() == 0 else None
        try:
            paths = SandboxPaths(Path(tmp), Path(tmp), uid=lease.uid if lease else NOBODY)
            limits = SandboxLimits(memory_mb=512, max_processes=64, cpu_seconds=10, threads=1, tmp_mb=1)
            with launch(["/usr/bin/true"], paths, limits) as (cmd, fds):
                result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, pass_fds=fds,
                                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        finally:
            if lease:
                lease.release()
    if result.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {result.stderr.strip()[-300:]}",
            fix="as root: bubblewrap, setpriv and unshare must be able to mount and change uid here (inside "
                "containers, start them with --privileged); as a normal user: allow user namespaces (sysctl "
                "kernel.unprivileged_userns_clone=1)")
