"""uv run within bounds: time, and the bytes it writes on the host while it builds a bundle's environment.

A wheel is a zip: 4 MiB of one held 4 GiB of zeros, which uv unpacked into its cache on the host before the
sandbox, and its disk limits, even started. uv is therefore watched while it runs (`/proc/PID/io`), and once
more after it ended but before it is reaped (a uv that wrote past the bound and finished between two looks is
refused all the same). Past a bound it is stopped, and what it added to its cache is removed: the packages it
unpacked there by name (`uv cache clean`, which also removes what points at them: a finished entry that
`uv cache prune` would keep), then whatever no finished entry holds (a half-unpacked wheel). Both wait for
other builds using the cache (uv's own lock); a package another build unpacked at the same time is cleaned too
and is unpacked again the next time it is needed.

    problem, returncode, output = run_bounded([uv, "pip", "install", ...], env)
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["run_bounded", "BUILD_TIMEOUT_S", "MAX_BUILD_WRITE_BYTES"]

BUILD_TIMEOUT_S = 1800
MAX_BUILD_WRITE_BYTES = 32 << 30
"""Most bytes uv may write while it builds one environment (the wheels it unpacks into its cache, then the
environment); past it uv is stopped, what it added to its cache removed, the bundle refused."""
POLL_S = 0.25
"""How often a running uv's bytes written are read."""


def run_bounded(cmd: list[str], env: dict[str, str]) -> tuple[str, int, str]:
    """Run uv's `cmd`: what went past a bound ("" when it ended within them; else it was stopped and its cache
    additions removed), its exit status and its output (stdout and stderr)."""
    cache = _cache_dir(cmd[0], env)
    before = _unpacked(cache)
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        try:
            problem = _bounded(proc)
        finally:
            proc.kill()  # a no-op when it ended (it is not reaped yet: the pid is still its own)
            proc.wait()
        if problem:
            _forget(cmd[0], env, cache, before)
        log.seek(0)
        return problem, proc.returncode, log.read().decode(errors="replace")


def _bounded(proc: subprocess.Popen) -> str:
    """Wait for `proc` to end, without reaping it; what went past a bound ("" when it ended within them)."""
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with _exit_watch(proc.pid) as ended:
        while True:
            done = ended(POLL_S)
            if _written(proc.pid) > MAX_BUILD_WRITE_BYTES:  # read before the reaping, once it ended too
                return (f"unpack to more than {MAX_BUILD_WRITE_BYTES >> 20} MiB (a wheel is a zip: a small one can "
                        "hold far more); stopped there")
            if done:
                return ""
            if time.monotonic() > deadline:
                return f"took longer than {BUILD_TIMEOUT_S} s to install"


@contextlib.contextmanager
def _exit_watch(pid: int):
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
    """Bytes process `pid` has written so far (its threads and reaped children included: `wchar` of
    /proc/PID/io, still readable once it ended and before it is reaped); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/io") as io:
            return next((int(line.split()[1]) for line in io if line.startswith("wchar:")), 0)
    except (OSError, ValueError):
        return 0


def _cache_dir(uv: str, env: dict[str, str]) -> Path | None:
    """uv's cache folder (`UV_CACHE_DIR`, or its default); None where uv cannot say."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([uv, "cache", "dir", "--no-config"], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=60, check=True).stdout.strip()
        return Path(out) if out else None
    return None


def _unpacked(cache: Path | None) -> set[Path]:
    """The wheels unpacked in uv's cache (`archive-vN/ID/`)."""
    return set(cache.glob("archive-v*/*")) if cache is not None else set()


def _forget(uv: str, env: dict[str, str], cache: Path | None, before: set[Path]) -> None:
    """Remove what a stopped uv added to its cache (see the module's docstring)."""
    names = sorted({info.name.split("-")[0] for new in _unpacked(cache) - before for info in new.glob("*.dist-info")
                    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._]*-[^/]*\.dist-info", info.name)})
    steps = [[uv, "cache", "clean", "--no-config", "--", *names]] if names else []
    for cmd in [*steps, [uv, "cache", "prune", "--no-config"]]:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(cmd, capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S,
                           check=False)
