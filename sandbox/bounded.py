"""The commands that build a bundle's environment on the host (uv, then the bytecode compiler), run within
bounds: time, bytes written, files and folders made, memory.

A wheel is a zip: 4 MiB of one held 4 GiB of zeros, which uv unpacked into its cache on the host before the
sandbox, and its disk limits, even started. So each command is watched while it runs (`/proc/PID/io`, its live
child processes included: the compiler's workers) and once more after it ended, before it is reaped (one that
wrote past the bound and finished between two looks is refused all the same), in a session of its own, so
that stopping it, or its end, ends the processes it started too; the bytes count against one
budget for the whole build, the bytecode compiler included (constant folding makes a `.pyc` hundreds of times
its source); and once uv ended the environment's files and folders are counted (a 2 MB wheel of 20,000 empty
folders took 165 MB and 40,000 inodes, which `wchar` never sees). Past a bound the command is stopped; then (the
bytecode compiler's too: what the build's uv added before it), or when uv failed (it may have unpacked a wheel
it then would not install), what uv added to its cache is removed: the wheels it unpacked there
(`archive-vN/ID/`) and the entries pointing at them, under uv's own cache lock
(builds hold it shared, so this waits for them), then `uv cache prune` for the rest. The removal goes by what
uv unpacked, never by the names a wheel gives itself, and by `rm -rf` (a wheel's folders may nest deeper than
Python's recursion). Each of a command's processes has `MAX_BUILD_MEMORY_BYTES` of data segment (`RLIMIT_DATA`):
compiling a long list literal takes ~400 bytes of memory per byte of source (a 10 KB wheel's 9.5 MiB module
took 3.7 GiB); one that ran out is refused naming the bound. A command that failed with the disk full after writing
(nearly) all that was free when it started filled it itself (`FILLED`): refused too, not the machine's failure.

    budget = Budget()
    problem, returncode, output = run_bounded([uv, "pip", "install", ...], env, budget, uv=uv, tree=target)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["Budget", "run_bounded", "remove_tree", "BUILD_TIMEOUT_S", "MAX_BUILD_WRITE_BYTES", "MAX_BUILD_ENTRIES",
           "MAX_BUILD_MEMORY_BYTES"]

BUILD_TIMEOUT_S = 1800
MAX_BUILD_WRITE_BYTES = 32 << 30
"""Most bytes the commands building one environment may write (the wheels uv unpacks into its cache, the
environment, the bytecode)."""
MAX_BUILD_ENTRIES = 500_000
"""Most files and folders one environment may hold (the harness's own, with torch, Ray and MLflow: ~67,000)."""
MAX_BUILD_MEMORY_BYTES = 2 << 30
"""Most memory each process of a build command may allocate (`RLIMIT_DATA`: its heap and private writable
mappings, thread stacks included). Measured (2 cores): uv installing BentoML, or torch and torchvision, ~240 MiB
of data segment (VmData; ~120 MiB resident); each bytecode compiler process ~90 MiB, ~80 MiB for the largest module
of the harness's own packages (torch's 1.3 MB `common_methods_invocations.py`). The compiler runs at most
`environment.COMPILE_WORKERS` workers, each with this bound."""
OUT_OF_MEMORY = ("MemoryError", "Sorry: MemoryError", "memory allocation of ", "OSError: [Errno 12]")
"""How a line that a command which ran out of memory writes begins, at the line's start (a source line that a
failed compile quotes is indented, so a wheel's `print "out of memory"` is not one): Python's exception (the
bytecode compiler's `Sorry:`), Rust's abort, the C library's ENOMEM."""
UV_OUT_OF_THREADS = "failed to initialize global rayon pool"
"""What uv panics with when its install threads cannot get their stacks within the bound."""
POLL_S = 0.25
"""How often a running command's bytes written are read."""
FILLED = 0.9
"""A command that failed with the disk full (or over quota) filled it itself when it wrote at least this share of
what was free when it started: the bundle's failure (its packages need more disk than the node has), not the
machine's, which a campaign would retry for ever."""
DISK_FULL = ("No space left on device", "Disk quota exceeded")


class Budget:
    """The bytes one environment's build may still write, all its commands together; and what uv's cache held
    before its last uv command, so that a later command stopped (the bytecode compiler) removes what uv added."""

    def __init__(self) -> None:
        self.left = MAX_BUILD_WRITE_BYTES
        self.uv_cache: tuple[str, Path | None, set[Path]] | None = None


def run_bounded(cmd: list[str], env: dict[str, str], budget: Budget, *, uv: str | None = None,
                tree: Path | None = None) -> tuple[str, int, str]:
    """Run `cmd`: what went past a bound ("" when it ended within them; else it was stopped), its exit status
    and its output (stdout and stderr). A `uv` command stopped or failed has what it added to uv's cache removed.
    `tree`: the folder whose files and folders are counted once it ended. Another command stopped has what the
    build's last `uv` command added removed."""
    cache = None if not uv else budget.uv_cache[1] if budget.uv_cache else _cache_dir(uv, env)  # asked once a build
    before = _unpacked(cache)
    if uv:
        budget.uv_cache = (uv, cache, before)
    memory, free = _memory_bound(), _free([p for p in (tree, cache) if p is not None])
    prlimit = shutil.which("prlimit")  # it sets the bound on itself, then execs the command (the same process)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([prlimit, f"--data={memory}", *cmd] if prlimit else cmd, stdout=log,
                                stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=None if prlimit else lambda: resource.setrlimit(resource.RLIMIT_DATA,
                                                                                          (memory, memory)))
        try:
            problem, written = _bounded(proc, budget.left)
        finally:
            # its whole process group (the compiler's workers too, which outlived a stop by 15 s, writing), the
            # group's id still its own: the command is not reaped yet, even when it ended
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        budget.left -= written
        log.seek(0)
        output = log.read().decode(errors="replace")
        if not problem and proc.returncode != 0 and _out_of_memory(output):
            problem = (f"need more than {memory >> 20} MiB of memory in one process while they are installed (a "
                       "small wheel can hold a module whose bytecode takes gigabytes to compile); stopped there")
        if not problem and proc.returncode != 0 and free is not None and written >= FILLED * free and \
                any(words in output for words in DISK_FULL):
            problem = (f"fill this node's disk: they wrote {written >> 20} MiB where {free >> 20} MiB were free when "
                       "the command started (an environment must fit in what a node has free); stopped there")
        if not problem and tree is not None and _entries(tree) > MAX_BUILD_ENTRIES:
            problem = (f"unpack to more than {MAX_BUILD_ENTRIES:,} files and folders (empty folders take disk and "
                       "inodes that a wheel's size does not show)")
        if uv and (problem or proc.returncode != 0):  # refused, or uv unpacked a wheel it then would not install
            _forget(uv, env, cache, before, stopped=bool(problem))
        elif problem and budget.uv_cache is not None:  # e.g. the bytecode of what uv installed, past a bound
            _forget(budget.uv_cache[0], env, *budget.uv_cache[1:], stopped=True)
        return problem, proc.returncode, output


def _free(paths: list[Path]) -> int | None:
    """The fewest bytes free on the file systems of `paths` (each at its nearest folder that exists); None: unknown."""
    free = []
    for path in paths:
        with contextlib.suppress(OSError):
            while not path.exists() and path != path.parent:
                path = path.parent
            free.append(shutil.disk_usage(path).free)
    return min(free, default=None)


def _memory_bound() -> int:
    """`MAX_BUILD_MEMORY_BYTES`, or the harness's own data-segment limit where it is lower: the bound only ever
    lowers it (raising a hard limit is refused, and `prlimit` then ran no command at all)."""
    return min([MAX_BUILD_MEMORY_BYTES, *(v for v in resource.getrlimit(resource.RLIMIT_DATA)
                                           if v != resource.RLIM_INFINITY)])


def _out_of_memory(output: str) -> bool:
    """Whether a failed command's output says it ran out of memory (`OUT_OF_MEMORY`, `UV_OUT_OF_THREADS`)."""
    return any(line.startswith(OUT_OF_MEMORY) or (line.startswith("thread '") and UV_OUT_OF_THREADS in line)
               for line in output.splitlines())


def _bounded(proc: subprocess.Popen, allowed: int) -> tuple[str, int]:
    """Wait for `proc` to end, without reaping it: what went past a bound ("" when it ended within them), and
    the bytes it wrote."""
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with _exit_watch(proc.pid) as ended:
        while True:
            done = ended(POLL_S)
            written = _written(proc.pid)  # read before the reaping, once it ended too
            if written > allowed:
                return (f"write more than {MAX_BUILD_WRITE_BYTES >> 20} MiB while they are installed (a wheel is a "
                        "zip: a small one can hold far more); stopped there"), written
            if done:
                return "", written
            if time.monotonic() > deadline:
                return f"took longer than {BUILD_TIMEOUT_S} s to install", written


@contextlib.contextmanager
def _exit_watch(pid: int) -> Iterator[Callable[[float], bool]]:
    """A function waiting up to its argument's seconds for process `pid` to end (True once it has), leaving it
    unreaped, so that its `/proc/PID/io` still reads: a pidfd where the kernel has them, else `waitid` polls."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        def polled(timeout: float) -> bool:
            stop = time.monotonic() + timeout
            while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() >= stop:
                    return False
                time.sleep(0.02)
            return True
        yield polled
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        yield lambda timeout: bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _written(pid: int) -> int:
    """Bytes process `pid` and its live descendants have written so far (`wchar` of /proc/PID/io: a process's
    threads and reaped children are in it, still readable once it ended and before it is reaped; a child still
    running, such as a compiler's worker, is not, so those are added); 0 where unknown."""
    return sum(_wchar(p) for p in _family(pid))


def _wchar(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as io:
            return next((int(line.split()[1]) for line in io if line.startswith("wchar:")), 0)
    except (OSError, ValueError):
        return 0


def _family(pid: int) -> list[int]:
    """`pid` and its live descendants (from each process's parent in /proc/N/stat)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError), os.scandir("/proc") as procs:
        for proc in procs:
            if proc.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{proc.name}/stat") as stat:
                    parents.setdefault(int(stat.read().rsplit(")", 1)[1].split()[1]), []).append(int(proc.name))
    family, stack = [], [pid]
    while stack:
        family.append(stack.pop())
        stack.extend(parents.get(family[-1], []))
    return family


def _entries(tree: Path) -> int:
    """Files and folders under `tree`, counted up to one past the bound."""
    count, stack = 0, [tree]
    while stack and count <= MAX_BUILD_ENTRIES:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return count


def _cache_dir(uv: str, env: dict[str, str]) -> Path | None:
    """uv's cache folder (`UV_CACHE_DIR`, or its default); None where uv cannot say."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([uv, "cache", "dir", "--no-config"], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=60, check=True).stdout.strip()
        return Path(out) if out else None
    return None


def _unpacked(cache: Path | None) -> set[Path]:
    """The wheels unpacked in uv's cache (`archive-vN/ID`)."""
    return set(cache.glob("archive-v*/*")) if cache is not None else set()


def _forget(uv: str, env: dict[str, str], cache: Path | None, before: set[Path], *, stopped: bool) -> None:
    """Remove what a stopped or failed uv added to its cache (see the module's docstring). A failed one that
    unpacked nothing (a package not found) has nothing to remove, and waits for no other build's lock."""
    new = _unpacked(cache) - before
    if not new and not stopped:  # a stopped uv may have left a half-unpacked wheel outside `archive-vN`
        return
    if cache is not None and new:
        with _cache_lock(cache) as locked:
            if locked:
                ids = [path.name.encode() for path in new]
                for path in new:
                    remove_tree(path)
                for pointer in cache.glob("wheels-v*/**/*"):  # an entry's pointer names its archive's id
                    with contextlib.suppress(OSError):
                        if pointer.is_file() and not pointer.is_symlink() and pointer.stat().st_size <= 1 << 20 \
                                and any(i in pointer.read_bytes() for i in ids):
                            pointer.unlink()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([uv, "cache", "prune", "--no-config"], capture_output=True, env=env,
                       stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S, check=False)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[bool]:
    """uv's own cache lock (`.lock`: builds hold it shared, `uv cache clean` and `prune` exclusively), held
    exclusively; False where it could not be had within `BUILD_TIMEOUT_S`."""
    try:
        fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.1)
        yield True
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove `path` and everything under it, however deep (`shutil.rmtree` recurses: a wheel's chain of 1,100
    nested folders made it raise RecursionError, whatever `ignore_errors` says); never fails."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["rm", "-rf", "--", str(path)], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=BUILD_TIMEOUT_S, check=False)
