"""A small seccomp filter for the sandbox: no new user namespaces.

Without it, an unprivileged process can still create a user namespace in which it holds every capability:
no host access follows, but most kernel privilege escalations start there. The filter refuses
`clone`/`unshare` with CLONE_NEWUSER, answers `clone3` with ENOSYS (its flags sit in memory a filter cannot
read; libc then falls back to `clone`, as under Docker's default profile), and refuses syscalls of any other
ABI (32-bit or x32 calls from a 64-bit process). Raw classic BPF, so no libseccomp is needed.
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["user_namespace_filter"]

CLONE_NEWUSER = 0x10000000
_ARCH = {  # machine -> (AUDIT_ARCH, unshare, clone, clone3)
    "x86_64": (0xC000003E, 272, 56, 435),
    "aarch64": (0xC00000B7, 97, 220, 435),
}
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000


def user_namespace_filter(machine: str | None = None) -> bytes | None:
    """The BPF program for this machine's architecture (None where it is not known: no filter)."""
    arch = _ARCH.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, unshare, clone, clone3 = arch
    # Jump offsets count from the next instruction. Labels: 10 allow, 11 refuse (EPERM), 12 ENOSYS.
    prog = [
        (_LD, 0, 0, 4),                       # 0: A = seccomp_data.arch
        (_JEQ, 1, 0, audit_arch),             # 1: native ABI -> 3, else -> 2
        (_RET, 0, 0, _ERRNO | errno.EPERM),   # 2: refuse foreign ABIs
        (_LD, 0, 0, 0),                       # 3: A = syscall number
        (_JGE, 6, 0, 0x40000000),             # 4: x32 ABI -> 11
        (_JEQ, 6, 0, clone3),                 # 5: clone3 -> 12
        (_JEQ, 1, 0, unshare),                # 6: unshare -> 8
        (_JEQ, 0, 2, clone),                  # 7: clone -> 8, else -> 10
        (_LD, 0, 0, 16),                      # 8: A = low 32 bits of args[0] (the flags)
        (_JSET, 1, 0, CLONE_NEWUSER),         # 9: CLONE_NEWUSER -> 11, else -> 10
        (_RET, 0, 0, _ALLOW),                 # 10: allow
        (_RET, 0, 0, _ERRNO | errno.EPERM),   # 11: refuse
        (_RET, 0, 0, _ERRNO | errno.ENOSYS),  # 12: not implemented
    ]
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)
