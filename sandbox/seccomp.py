"""The sandbox's seccomp filter: a denylist in the spirit of Docker's default profile, in raw classic BPF (no
libseccomp needed).

Three answers besides "allow":

- **kill** (`SECCOMP_RET_KILL_PROCESS`): system calls a model server never makes and escapes start with: the
  kernel keyring (shared by every process of a uid, outside any namespace), BPF, ptrace, mounts, kernel modules,
  kexec, swap, clock and reboot. The process dies by SIGSYS before the call runs, which the harness observes
  from outside as the exit signal: the evidence for a `sandbox_violation` verdict that the bundle cannot erase.
- **EPERM**: calls that libraries may probe and must see refused gracefully (NUMA policy, perf events,
  userfaultfd, setns, other processes' memory, the kernel log), new user namespaces through `clone`/`unshare`,
  `AF_VSOCK` sockets (to the hypervisor and other VMs: outside any network namespace),
  and every call of a foreign ABI (32-bit or x32 calls from a 64-bit process).
- **ENOSYS**: `clone3` (its flags sit in memory a filter cannot read; libc then falls back to `clone`) and
  `io_uring_*` (libuv and others fall back to ordinary I/O, as on an old kernel).
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["sandbox_filter", "KILL", "REFUSE", "NOT_IMPLEMENTED", "SYSCALLS"]

CLONE_NEWUSER = 0x10000000
AF_VSOCK = 40
"""Sockets to the hypervisor and other VMs of a host, which no network namespace covers: refused (EPERM)."""
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
SYSCALLS: dict[str, tuple[int | None, int | None]] = {  # name -> (x86_64, aarch64); None: not on that ABI
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218), "bpf": (321, 280),
    "ptrace": (101, 117), "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266), "iopl": (172, None),
    "ioperm": (173, None), "open_by_handle_at": (304, 265), "quotactl": (179, 60), "quotactl_fd": (443, 443),
    "lookup_dcookie": (212, 18), "uselib": (134, None), "vhangup": (153, 58), "nfsservctl": (180, 42),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "kcmp": (312, 272), "setns": (308, 268),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "pidfd_getfd": (438, 438),
    "process_madvise": (440, 440), "get_mempolicy": (239, 236), "set_mempolicy": (238, 237), "mbind": (237, 235),
    "move_pages": (279, 239), "migrate_pages": (256, 238), "syslog": (103, 116), "name_to_handle_at": (303, 264),
    "fanotify_init": (300, 262), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "clone3": (435, 435), "unshare": (272, 97), "clone": (56, 220),
    "socket": (41, 198),
}
KILL = ("keyctl", "add_key", "request_key", "bpf", "ptrace", "kexec_load", "kexec_file_load", "init_module",
        "finit_module", "delete_module", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen",
        "fsconfig", "fsmount", "fspick", "mount_setattr", "swapon", "swapoff", "reboot", "acct", "settimeofday",
        "clock_settime", "clock_adjtime", "iopl", "ioperm", "open_by_handle_at", "quotactl", "quotactl_fd",
        "lookup_dcookie", "uselib", "vhangup", "nfsservctl")
"""Never needed by a model server: the process is killed (SIGSYS), the harness records a violation."""
REFUSE = ("perf_event_open", "userfaultfd", "kcmp", "setns", "process_vm_readv", "process_vm_writev",
          "pidfd_getfd", "process_madvise", "get_mempolicy", "set_mempolicy", "mbind", "move_pages", "migrate_pages",
          "syslog", "name_to_handle_at", "fanotify_init")
"""Probed by some libraries: refused with EPERM."""
NOT_IMPLEMENTED = ("io_uring_setup", "io_uring_enter", "io_uring_register", "clone3")
"""Answered ENOSYS, so that callers fall back as on an older kernel."""

_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW, RET_KILL_PROCESS, RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000


def sandbox_filter(machine: str | None = None) -> bytes | None:
    """The BPF program for this machine's architecture (None where it is not known: no filter)."""
    machine = machine or platform.machine()
    if machine not in AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    nr = {name: nums[column] for name, nums in SYSCALLS.items() if nums[column] is not None}
    # (instruction, jump-if-true label, jump-if-false label); labels resolve to offsets below.
    prog: list[tuple[int, str | None, str | None, int]] = [
        (_LD, None, None, 4),                           # A = seccomp_data.arch
        (_JEQ, "native", "eperm", AUDIT_ARCH[machine]),
    ]
    labels = {"native": 2}
    prog += [(_LD, None, None, 0),                      # A = syscall number
             (_JGE, "eperm", None, 0x40000000)]         # x32 ABI
    for group, label in ((KILL, "kill"), (REFUSE, "eperm"), (NOT_IMPLEMENTED, "enosys")):
        prog += [(_JEQ, label, None, nr[name]) for name in group if name in nr]
    prog += [(_JEQ, "domain", None, nr["socket"]),
             (_JEQ, "flags", None, nr["unshare"]),
             (_JEQ, "flags", "allow", nr["clone"])]
    labels["domain"] = len(prog)
    prog += [(_LD, None, None, 16),                     # A = args[0] (the address family)
             (_JEQ, "eperm", "allow", AF_VSOCK)]
    labels["flags"] = len(prog)
    prog += [(_LD, None, None, 16),                     # A = low 32 bits of args[0] (the flags)
             (_JSET, "eperm", "allow", CLONE_NEWUSER)]
    for label, ret in (("allow", RET_ALLOW), ("kill", RET_KILL_PROCESS), ("eperm", RET_ERRNO | errno.EPERM),
                       ("enosys", RET_ERRNO | errno.ENOSYS)):
        labels[label] = len(prog)
        prog.append((_RET, None, None, ret))
    out = []
    for pc, (code, jt, jf, k) in enumerate(prog):
        offsets = [0 if label is None else labels[label] - pc - 1 for label in (jt, jf)]
        assert all(0 <= o < 256 for o in offsets), "jump out of range"
        out.append(struct.pack("<HBBI", code, *offsets, k))
    return b"".join(out)

