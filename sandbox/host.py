"""What each sandbox holds on the host, so that tenants share nothing: its own unprivileged uid from a reserved
range (`sandbox.uids`), its own cgroups (memory with memfd/shm/tmpfs pages, and processes), and a private
working folder. Each is released when the sandbox stops; what a killed harness left behind is swept by the next
one (keyed by the owner's process id, which is dead by then).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

__all__ = ["Cgroups", "sweep_stale", "RUN_PREFIX"]

RUN_PREFIX = "testbed-run-"
"""Private working folders are `<tmp>/testbed-run-<harness pid>-<random>`."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")
"""The cgroup v1 controllers a sandbox needs for its limits to be cgroups (a `cpu` group is added where it can be)."""
CPU_PERIOD_US = 100_000
"""The CFS period of a sandbox's CPU quota (the kernel's default): `cpus` cores' worth of time in each."""
FREEZE_WITHIN_S = 0.02
"""Most seconds `Cgroups.paused` waits for the sandbox to freeze (measured: 1.7 ms for 9 spinning threads, at
most 4.6 ms); a process in uninterruptible sleep can hold it off, and the pause is then given up."""
LIMIT_SLACK_BYTES = 1 << 20
"""How far under its memory limit a group's peak may stay and still have reached it: the kernel's OOM killer acts
for a group when a charge would take it past its limit, and those charges are of a page or a few (a huge page's
is refused without it), so the peak was then within kilobytes of the limit (measured: at it, to the byte)."""


class Cgroups:
    """A cgroup v1 `memory` and `pids` group of its own for one sandbox, under this harness's groups, and a `cpu`
    group holding it to `cpus` cores where that hierarchy is there too. `available` is False where memory and
    pids groups cannot be made (not root, cgroup v2 only, read-only): rlimits then apply."""

    def __init__(self, name: str, memory_mb: int, max_processes: int, cpus: float = 0) -> None:
        self.paths: dict[str, Path] = {}
        try:
            for ctl in CONTROLLERS:
                self.paths[ctl] = _make_group(ctl, name)
            memory = self.paths["memory"]
            (memory / "memory.limit_in_bytes").write_text(str(memory_mb << 20))
            if (memory / "memory.memsw.limit_in_bytes").exists():  # swap accounting: no way around by swapping
                (memory / "memory.memsw.limit_in_bytes").write_text(str(memory_mb << 20))
            (self.paths["pids"] / "pids.max").write_text(str(max_processes))
        except OSError:
            self.remove()
            return
        if cpus > 0:
            try:
                self.paths["cpu"] = _make_group("cpu", name)
                (self.paths["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (self.paths["cpu"] / "cpu.cfs_quota_us").write_text(str(max(1000, round(cpus * CPU_PERIOD_US))))
            except OSError:  # no cpu hierarchy here: the spec's CPUs are then only what Ray schedules by
                if "cpu" in self.paths:
                    _rmdir(self.paths.pop("cpu"))
        if not ("cpu" in self.paths and (self.paths["cpu"] / "cpuacct.usage").exists()):
            with contextlib.suppress(OSError):  # cpuacct in a hierarchy of its own: a group there to count CPU
                self.paths["cpuacct"] = _make_group("cpuacct", name)
        with contextlib.suppress(OSError):  # to stop the sandbox while the node's speed is timed (`paused`)
            self.paths["freezer"] = _make_group("freezer", name)

    @property
    def available(self) -> bool:
        return set(CONTROLLERS) <= set(self.paths)

    @property
    def cpu_bounded(self) -> bool:
        return "cpu" in self.paths

    @property
    def procs_files(self) -> list[str]:
        """`cgroup.procs` files the sandbox's first process writes its pid to, before anything else runs."""
        return [str(p / "cgroup.procs") for p in self.paths.values()]

    def _read(self, ctl: str, file: str) -> str:
        try:
            return (self.paths[ctl] / file).read_text()
        except (OSError, KeyError):
            return ""

    def peak_memory_bytes(self) -> int:
        return self._bytes("memory.max_usage_in_bytes")

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer stopped in this group at its memory limit (the group reached it:
        `reached_memory_limit`)."""
        return self._oom_killed() if self.reached_memory_limit() else 0

    def host_oom_kills(self) -> int:
        """Processes of this group the OOM killer stopped while the group never reached its own memory limit: the
        host was out of memory (or a group above this one, at its limit), not the sandbox."""
        return 0 if self.reached_memory_limit() else self._oom_killed()

    def _oom_killed(self) -> int:
        """`memory.oom_control`'s `oom_kill`: the group's processes "killed by any kind of OOM killer" (the
        kernel's cgroup documentation), its own limit's, a group's above it, or the whole host's."""
        fields = dict(line.split() for line in self._read("memory", "memory.oom_control").splitlines())
        return int(fields.get("oom_kill", 0))

    def reached_memory_limit(self) -> bool:
        """Whether the group's memory, or memory and swap, reached its limit at some point: a charge refused there
        (`failcnt`), or its peak within `LIMIT_SLACK_BYTES` of the limit. Not `failcnt` alone: with both limits
        set (`__init__`), the kernel charges memory and swap first and does not count refusals there (measured,
        6.18: a group limited to 64 MiB whose process the OOM killer stopped at it kept both failcnt 0, its peaks
        at 64 MiB). True where no limit can be read (so no proof the host's OOM killer chose it)."""
        limits = 0
        for counter in ("memory", "memory.memsw"):
            limit, peak = self._bytes(f"{counter}.limit_in_bytes"), self._bytes(f"{counter}.max_usage_in_bytes")
            limits += bool(limit)
            if self._bytes(f"{counter}.failcnt") or (limit and peak >= limit - LIMIT_SLACK_BYTES):
                return True
        return not limits

    def _bytes(self, file: str) -> int:
        """A number of the memory group's file (0 where it cannot be read)."""
        text = self._read("memory", file).strip()
        return int(text) if text.isdigit() else 0

    def pid_limit_hits(self) -> int:
        """Forks refused because the group was at its process limit."""
        events = dict(line.split() for line in self._read("pids", "pids.events").splitlines())
        return int(events.get("max", 0))

    def cpu_used_s(self) -> float | None:
        """CPU seconds everything in the group has used (threads and processes that ended included: the kernel's
        `cpuacct.usage`), or None where there is no cpuacct group."""
        for ctl in ("cpuacct", "cpu"):
            used = self._read(ctl, "cpuacct.usage").strip()
            if used.isdigit():
                return int(used) / 1e9
        return None

    def cpu_throttled(self) -> int:
        """CFS periods in which the group used up its CPU quota and was held back until the next one."""
        stat = dict(line.split() for line in self._read("cpu", "cpu.stat").splitlines())
        return int(stat.get("nr_throttled", 0))

    @contextlib.contextmanager
    def paused(self, within_s: float = FREEZE_WITHIN_S) -> Iterator[bool]:
        """Every process of the sandbox stopped by the kernel (the v1 freezer) while the block runs; yields
        whether they all were within `within_s` (False without a freezer group: the block then runs beside
        them). Always thawed after: a frozen process does not even die of SIGKILL."""
        group = self.paths.get("freezer")
        if group is None:
            yield False
            return
        try:
            yield _freeze(group, within_s)
        finally:
            _thaw(group)

    def kill_all(self) -> None:
        """SIGKILL every process in the group until none is left (forks racing the kill included)."""
        if "freezer" in self.paths:
            _thaw(self.paths["freezer"])
        if "pids" in self.paths:
            _empty(self.paths["pids"])

    def remove(self) -> None:
        self.kill_all()
        for group in self.paths.values():
            _rmdir(group)
        self.paths = {}


def _make_group(ctl: str, name: str) -> Path:
    parent = _own_group(ctl) / "testbed"
    parent.mkdir(exist_ok=True)
    group = parent / name
    group.mkdir()
    return group


def _own_group(ctl: str) -> Path:
    """This process's group in a v1 hierarchy (sandboxes nest under it, so its own limits still bound them)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if ctl in names.split(","):
            return CGROUP_ROOT / ctl / path.lstrip("/")
    raise OSError(f"no cgroup v1 {ctl} hierarchy")


def _freeze(group: Path, within_s: float) -> bool:
    try:
        (group / "freezer.state").write_text("FROZEN")
        deadline = time.monotonic() + within_s
        while (group / "freezer.state").read_text().strip() != "FROZEN":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        return True
    except OSError:
        return False


def _thaw(group: Path) -> None:
    with contextlib.suppress(OSError):
        (group / "freezer.state").write_text("THAWED")


def _empty(group: Path) -> None:
    for _ in range(100):
        try:
            pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _rmdir(group: Path) -> None:
    for _ in range(50):  # a killed process leaves the group a moment after it dies
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def _dead(path: Path, name: str) -> bool:
    """Whether the harness that made `path` (named `<pid>-...`) is gone: its pid is free, or reused since."""
    try:
        pid, made = int(name.split("-")[0]), path.stat().st_mtime
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > made + 1
    except (ValueError, OSError):
        return False
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def sweep_stale() -> None:
    """Remove the working folders and cgroups that harnesses killed mid-run left behind."""
    for path in Path(tempfile.gettempdir()).glob(RUN_PREFIX + "*"):
        if _dead(path, path.name.removeprefix(RUN_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
    for ctl in ("freezer", "pids", "memory", "cpu", "cpuacct"):  # thawed first, then killed through pids
        with contextlib.suppress(OSError):
            for group in (_own_group(ctl) / "testbed").iterdir():
                if group.is_dir() and _dead(group, group.name):
                    _thaw(group)
                    _empty(group)
                    _rmdir(group)
