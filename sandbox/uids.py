"""Each sandbox's own unprivileged uid, leased from a range reserved for sandboxes (`TESTBED_SANDBOX_UIDS`, by
default `DEFAULT_UIDS`) that no host account may use: two sandboxes never share a uid, and a uid's leftover
processes (of a killed harness's sandbox) are killed when it is leased again. The lease is an flock, which the
kernel drops when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pwd
import re
import tempfile
from pathlib import Path

import psutil

from testbed.errors import ResourceUnavailable, SandboxUnavailable

__all__ = ["DEFAULT_UIDS", "UidLease", "uid_range"]

DEFAULT_UIDS = "1600000000-1600004095"
"""The uids reserved for sandboxes when `TESTBED_SANDBOX_UIDS` is unset."""


def uid_range() -> range:
    """Uids reserved for sandboxes (`TESTBED_SANDBOX_UIDS=FIRST-LAST`); no host account may use them, since a
    uid's processes are killed when it is leased (SandboxUnavailable for a range that is malformed or holds an
    account, uid 0 included)."""
    return _reserved(os.environ.get("TESTBED_SANDBOX_UIDS") or DEFAULT_UIDS)


@functools.lru_cache(maxsize=8)
def _reserved(setting: str) -> range:
    """`uid_range` for one setting, checked against the host's accounts once per process (every sandbox start
    leases a uid: the account list, which NSS may fetch from a directory service, is not read each time)."""
    found = re.fullmatch(r"\s*([0-9]{1,10})\s*-\s*([0-9]{1,10})\s*", setting)
    first, last = (int(found[1]), int(found[2])) if found else (0, -1)
    if not found or not first <= last < (1 << 32) - 1:  # (uid_t)-1 is no uid
        raise SandboxUnavailable(f"{setting!r} is not a range of uids FIRST-LAST",
                                 where="TESTBED_SANDBOX_UIDS",
                                 fix=f"give two uids with FIRST <= LAST, e.g. {DEFAULT_UIDS}, or unset it")
    reserved = range(first, last + 1)
    taken = sorted(uid for uid in {p.pw_uid for p in pwd.getpwall()} | {os.getuid()} if uid in reserved)
    if taken:
        names = ", ".join(f"{u} ({_account(u)})" for u in taken[:3])
        raise SandboxUnavailable(f"{setting} holds uids of host accounts: {names}; a sandbox's "
                                 "uid has its processes killed when leased", where="TESTBED_SANDBOX_UIDS",
                                 fix=f"reserve uids no account uses (e.g. {DEFAULT_UIDS}), or unset it")
    return reserved


def _account(uid: int) -> str:
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(uid).pw_name
    return "this process"


def _lock_dir() -> Path:
    path = Path("/run/testbed-sandbox") if os.access("/run", os.W_OK) else \
        Path(tempfile.gettempdir()) / f"testbed-sandbox-{os.geteuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class UidLease:
    """One uid of the reserved range, held (an flock) while the sandbox lives. The kernel drops the lock when
    the holder dies, so a killed harness leaves nothing to clean; the uid's leftovers are swept on lease."""

    def __init__(self) -> None:
        self.uid, self._fd = -1, -1
        folder = _lock_dir()
        reserved = uid_range()
        for uid in reserved:
            fd = os.open(folder / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.uid, self._fd = uid, fd
            _kill_uid(uid)  # a sandbox of a killed harness may have left a process behind
            return
        raise ResourceUnavailable(f"all {len(reserved)} sandbox uids are in use",
                                  where="TESTBED_SANDBOX_UIDS", fix="run fewer sandboxes at once, or widen the range")

    def release(self) -> None:
        """Give the uid back (its processes are gone: the sandbox's cgroup was emptied, or its PID namespace)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _kill_uid(uid: int) -> None:
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.info["uids"] and uid in proc.info["uids"]:
                proc.kill()
