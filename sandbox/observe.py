"""What the harness observes of a sandbox from outside its reach: the evidence verdicts are made of.

- the service's output, drained continuously from a pipe into a bounded tail (the bundle cannot truncate what
  the harness already read, nor fill the host's disk with it);
- reports of the worker's audit hook on a second pipe, read as they come (attempts on harness paths);
- the network namespace's own counters (`/proc/<pid>/net/snmp`, `snmp6`), which only the kernel writes: any
  packet sent, route refused or TCP connection opened inside the empty namespace is a network attempt;
- memory sampled from the process tree where there is no cgroup to read the peak from;
- the bundle's files the service opened, reported by the kernel (inotify on the unpacked bundle's folders):
  which model file the service really loads, whatever the bundle holds or says.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import posixpath
import select
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from testbed.text import printable

__all__ = ["Evidence", "Opened", "OutputTail", "Reports", "Watch", "network_counters"]

NET_FIELDS = {("Ip", "OutRequests"), ("Ip", "OutNoRoutes"), ("Tcp", "ActiveOpens"), ("Udp", "OutDatagrams"),
              ("Ip6OutRequests", None), ("Ip6OutNoRoutes", None)}


@dataclass
class Evidence:
    """What the harness saw happen, never what the bundle said."""

    network: dict[str, int] = field(default_factory=dict)
    """Non-zero counters of the sandbox's network namespace (attempts to reach any network)."""
    harness_paths: list[str] = field(default_factory=list)
    """Harness paths the bundle tried to open (from the audit hook's pipe: best effort, never erasable)."""
    oom_kills: int = 0
    """Processes the kernel stopped at the memory cgroup's limit."""
    host_oom_kills: int = 0
    """Processes of the sandbox the kernel's OOM killer stopped while its memory cgroup never reached its limit: the
    host was out of memory, not the sandbox (the machinery's failure, never the bundle's: `SandboxedService.evidence`
    raises `InfrastructureFailure` for it after a run)."""
    pid_limit_hits: int = 0
    """Forks refused at the pids cgroup's limit."""
    memory_over_mb: float = 0
    """Without a memory cgroup: MiB the sandbox held (its processes' proportional share, its `/tmp` and
    `/dev/shm`) when the harness stopped it for holding more than its memory limit (0: it never did)."""
    oversize: list[str] = field(default_factory=list)
    """Responses the harness cut at the size cap."""
    opened: list[str] | None = None
    """The bundle's files the service opened, as member paths of the `.bento` archive (`Opened`); None where
    the host offers no inotify."""


class OutputTail(threading.Thread):
    """Drains a pipe to its end, keeping the last `keep` bytes."""

    def __init__(self, fd: int, keep: int = 200_000):
        super().__init__(daemon=True)
        self.fd, self.keep, self.data, self.total = fd, keep, bytearray(), 0

    def run(self) -> None:
        with contextlib.suppress(OSError), os.fdopen(self.fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                self.total += len(chunk)
                self.data += chunk
                if len(self.data) > 2 * self.keep:
                    del self.data[:-self.keep]

    def text(self, limit: int | None = None) -> str:
        """The last `limit` bytes kept (at most `keep`), as text safe to show; when the service printed more, a
        first line says how much is left out (a flood of output pushes out what came before it, such as the
        traceback of an error)."""
        keep = min(self.keep, limit or self.keep)
        left_out = self.total - min(len(self.data), keep)
        shown = printable(bytes(self.data[-keep:]).decode(errors="replace"))
        return (f"[the {left_out:,} bytes the service printed before these are left out]\n" if left_out > 0 else
                "") + shown


class Reports(threading.Thread):
    """Reads the worker's report lines (`open PATH`) and keeps those that name a forbidden path."""

    def __init__(self, fd: int, forbidden: list[str]):
        super().__init__(daemon=True)
        self.fd, self.forbidden, self.hits = fd, [p.rstrip("/") for p in forbidden], []

    def run(self) -> None:
        with contextlib.suppress(OSError), os.fdopen(self.fd, "rb") as pipe:
            while line := pipe.readline(4096):  # bounded: a line without an end is read in pieces
                path = line.decode(errors="replace").rstrip("\n").partition(" ")[2]
                if len(self.hits) < 20 and any(path == p or path.startswith(p + "/") for p in self.forbidden):
                    self.hits.append(path)


def network_counters(pid: int) -> dict[str, int]:
    """Counters of the network namespace `pid` lives in (empty if it cannot be read)."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        lines = open(f"/proc/{pid}/net/snmp").read().splitlines()
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            proto, names = header.split(":", 1)
            for name, value in zip(names.split(), values.split(":", 1)[1].split(), strict=False):
                if (proto, name) in NET_FIELDS and value.lstrip("-").isdigit():
                    counts[f"{proto}{name}"] = int(value)
    with contextlib.suppress(OSError):
        for line in open(f"/proc/{pid}/net/snmp6").read().splitlines():
            name, _, value = line.partition(" ")
            if (name, None) in NET_FIELDS:
                counts[name] = int(value.strip())
    return {k: v for k, v in counts.items() if v}


class Watch(threading.Thread):
    """Samples the sandbox every 0.2 s: its network counters (from a process inside its network namespace)
    and, without a memory cgroup, the memory it holds: its processes' proportional share of their resident pages
    (a page shared by forks counted once in all) and what its `/tmp` and `/dev/shm` hold. Past `limit` bytes
    it calls `over` once (which stops the sandbox), having noted what it held (`over_limit`)."""

    def __init__(self, pid: int, sample_memory: bool, limit: int = 0, over: Callable[[], object] | None = None):
        super().__init__(daemon=True)
        self.pid, self.sample_memory, self.peak, self.stop = pid, sample_memory, 0, threading.Event()
        self.limit, self.over, self.over_limit = limit, over, 0
        self.network: dict[str, int] = {}
        self._inside: int | None = None
        self._own_ns = _netns(os.getpid())

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        if self._inside is None:
            self._inside = next((p.pid for p in tree if _netns(p.pid) not in (None, self._own_ns)), None)
        if self._inside is not None:
            for key, value in network_counters(self._inside).items():
                self.network[key] = max(value, self.network.get(key, 0))
        if self.sample_memory:
            held = sum(_proportional(proc) for proc in tree) + self._tmpfs_used()
            self.peak = max(self.peak, held)
            if self.limit and held > self.limit and not self.over_limit:
                self.over_limit = held
                if self.over is not None:
                    self.over()

    def _tmpfs_used(self) -> int:
        """Bytes the sandbox's own `/tmp` and `/dev/shm` hold (seen through a process inside it; 0 where none is)."""
        used = 0
        for mount in ("tmp", "dev/shm") if self._inside is not None else ():
            with contextlib.suppress(OSError):
                st = os.statvfs(f"/proc/{self._inside}/root/{mount}")
                used += (st.f_blocks - st.f_bfree) * st.f_frsize
        return used

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


def _proportional(proc: psutil.Process) -> int:
    """A process's proportional set size (each resident page divided among the processes sharing it), or its
    resident size where the kernel will not say."""
    with contextlib.suppress(psutil.Error):
        try:
            return proc.memory_full_info().pss
        except (psutil.AccessDenied, AttributeError):
            return proc.memory_info().rss
    return 0


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


IN_OPEN, IN_ISDIR, IN_ONLYDIR = 0x20, 0x40000000, 0x01000000
PACE_S = 0.5
"""Shortest time between two drains of the event queue (16,384 events by default: an honest service's opens fit)."""
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


class Opened(threading.Thread):
    """The files under `root` that any process opens, as the kernel reports them (inotify `IN_OPEN` on every
    folder `watch` is given; the watches see opens through the sandbox's read-only mount of the same folders).
    Set up before the service is told its bundle, so nothing it loads is missed. `paths()`: the files opened,
    relative to `root`; None only where the host offers no inotify instance. Nothing a bundle does turns that
    into "not observed": the bounds are above what an accepted archive can hold (`Limits.max_members`), and a
    folder the kernel will not watch (its watch limit), or events lost to a flooded queue, only go unseen."""

    def __init__(self, root: Path, max_watches: int = 20_100, max_paths: int = 20_100):
        super().__init__(daemon=True, name="testbed-opened")
        self.root, self.max_watches, self.max_paths = root, max_watches, max_paths
        self._folders: dict[int, str] = {}
        self._paths: set[str] = set()
        self._seen: set[tuple[int, bytes]] = set()
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observed = self._fd >= 0
        self._wake_r, self._wake_w = os.pipe()

    def watch(self, folder: Path) -> None:
        if self._observed and len(self._folders) < self.max_watches:
            wd = self._add(self._fd, os.fsencode(folder), IN_OPEN | IN_ONLYDIR)
            if wd >= 0:
                self._folders[wd] = folder.relative_to(self.root).as_posix()

    def run(self) -> None:
        """Drain the events at most every `PACE_S`, at the lowest CPU priority (nice is per thread on Linux): a
        service opening files in a loop costs the harness a bounded share of a core and only loses its own events
        to the kernel's full queue. `poll`, unlike `select`, takes descriptors of any number."""
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        stop, either = select.poll(), select.poll()
        stop.register(self._wake_r, select.POLLIN)
        for fd in (self._wake_r, self._fd) if self._fd >= 0 else (self._wake_r,):
            either.register(fd, select.POLLIN)
        while True:
            either.poll()  # events, or the stop
            if self._fd >= 0:
                self._drain()
            if stop.poll(PACE_S * 1000):  # the pace, cut short by the stop
                if self._fd >= 0:
                    self._drain()  # what came before the stop
                return

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            for offset in _offsets(data):
                wd, mask, _, size = _EVENT.unpack_from(data, offset)
                key = (wd, data[offset + _EVENT.size:offset + _EVENT.size + size])
                if key in self._seen or mask & IN_ISDIR or wd not in self._folders:
                    continue  # most events of a busy service repeat a file already seen
                self._seen.add(key)
                name = key[1].split(b"\0", 1)[0]
                if name and len(self._paths) < self.max_paths:
                    self._paths.add(posixpath.normpath(posixpath.join(self._folders[wd], os.fsdecode(name))))

    def paths(self) -> list[str] | None:
        """Stop watching (once the service has stopped) and return what was opened."""
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
            if self.is_alive():
                self.join(timeout=5)
            for fd in (self._wake_w, self._wake_r, self._fd):
                if fd >= 0:
                    os.close(fd)
            self._wake_w = self._fd = -1
        return sorted(self._paths) if self._observed else None


def _offsets(data: bytes):
    offset = 0
    while offset + _EVENT.size <= len(data):
        yield offset
        offset += _EVENT.size + _EVENT.unpack_from(data, offset)[3]
