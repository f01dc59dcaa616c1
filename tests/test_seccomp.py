"""The seccomp program is well formed, and refuses exactly what it should (interpreted here, no kernel)."""

import errno
import struct

import pytest

from sandbox.seccomp import _ARCH, CLONE_NEWUSER, user_namespace_filter

ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS


def run(program: bytes, arch: int, nr: int, flags: int = 0) -> int:
    """A tiny classic-BPF interpreter for the instructions the filter uses."""
    prog = [struct.unpack("<HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    data = struct.pack("<iIQ6Q", nr, arch, 0, flags, 0, 0, 0, 0, 0)
    pc, acc = 0, 0
    for _ in range(len(prog)):
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc, pc = struct.unpack_from("<I", data, k)[0], pc + 1
        elif code in (0x15, 0x35, 0x45):
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc = pc + 1 + (jt if hit else jf)
        elif code == 0x06:
            return k
        assert 0 <= pc < len(prog), "jump out of the program"
    raise AssertionError("no return reached")


@pytest.mark.parametrize("machine", sorted(_ARCH))
def test_filter_decisions(machine):
    audit_arch, unshare, clone, clone3 = _ARCH[machine]
    program = user_namespace_filter(machine)
    assert run(program, audit_arch, clone, flags=0x3D0F00) == ALLOW  # a thread
    assert run(program, audit_arch, clone, flags=CLONE_NEWUSER) == EPERM
    assert run(program, audit_arch, unshare, flags=CLONE_NEWUSER | 0x20000) == EPERM
    assert run(program, audit_arch, unshare, flags=0x400) == ALLOW  # CLONE_FS, harmless
    assert run(program, audit_arch, clone3) == ENOSYS
    assert run(program, audit_arch, 0) == ALLOW and run(program, audit_arch, 39) == ALLOW
    assert run(program, 0x40000003, 1) == EPERM  # i386 ABI from a 64-bit process
    assert run(program, audit_arch, 0x40000000 | unshare) == EPERM  # x32


def test_unknown_architecture_gets_no_filter():
    assert user_namespace_filter("sparc64") is None
