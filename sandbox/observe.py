"""What the harness observes of a sandbox from outside its reach: the evidence verdicts are made of.

- the service's output, drained continuously from a pipe into a bounded tail (the bundle cannot truncate what
  the harness already read, nor fill the host's disk with it);
- reports of the worker's audit hook on a second pipe, read as they come (attempts on harness paths);
- the network namespace's own counters (`/proc/<pid>/net/snmp`, `snmp6`), which only the kernel writes: any
  packet sent, route refused or TCP connection opened inside the empty namespace is a network attempt;
- memory sampled from the process tree where there is no cgroup to read the peak from.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

import psutil

__all__ = ["Evidence", "OutputTail", "Reports", "Watch", "network_counters"]

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
    pid_limit_hits: int = 0
    """Forks refused at the pids cgroup's limit."""
    oversize: list[str] = field(default_factory=list)
    """Responses the harness cut at the size cap."""


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

    def text(self) -> str:
        return bytes(self.data[-self.keep:]).decode(errors="replace")


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
    and, without a memory cgroup, the resident memory of its process tree."""

    def __init__(self, pid: int, sample_memory: bool):
        super().__init__(daemon=True)
        self.pid, self.sample_memory, self.peak, self.stop = pid, sample_memory, 0, threading.Event()
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
            rss = 0
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss
            self.peak = max(self.peak, rss)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None
