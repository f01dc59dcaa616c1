"""The seccomp program is well formed, and refuses exactly what it should (interpreted here, no kernel)."""

import errno
import struct

import pytest

from sandbox.seccomp import AF_VSOCK, AUDIT_ARCH, CLONE_NEWUSER, KILL, NOT_IMPLEMENTED, REFUSE, SYSCALLS, sandbox_filter

ALLOW, KILLED = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS


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
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
        assert 0 <= pc < len(prog), "jump out of the program"
    raise AssertionError("no return reached")


@pytest.mark.parametrize("machine", sorted(AUDIT_ARCH))
def test_filter_decisions(machine):
    column = 0 if machine == "x86_64" else 1
    nr = {name: nums[column] for name, nums in SYSCALLS.items() if nums[column] is not None}
    arch, program = AUDIT_ARCH[machine], sandbox_filter(machine)
    assert run(program, arch, nr["clone"], flags=0x3D0F00) == ALLOW  # a thread
    assert run(program, arch, nr["clone"], flags=CLONE_NEWUSER) == EPERM
    assert run(program, arch, nr["unshare"], flags=CLONE_NEWUSER | 0x20000) == EPERM
    assert run(program, arch, nr["unshare"], flags=0x400) == ALLOW  # CLONE_FS, harmless
    assert run(program, arch, nr["socket"], flags=AF_VSOCK) == EPERM  # to the hypervisor: no namespace covers it
    for family in (1, 2, 10, 16):  # unix, inet, inet6, netlink: the network namespace contains them
        assert run(program, arch, nr["socket"], flags=family) == ALLOW
    for name in KILL:
        if name in nr:
            assert run(program, arch, nr[name]) == KILLED, name
    for name in REFUSE:
        assert run(program, arch, nr[name]) == EPERM, name
    for name in NOT_IMPLEMENTED:
        assert run(program, arch, nr[name]) == ENOSYS, name
    denied = {nr[n] for n in (*KILL, *REFUSE, *NOT_IMPLEMENTED) if n in nr} | {nr["clone"], nr["unshare"]}
    for allowed in set(range(0, 460)) - denied:  # read, write, mmap, socket(AF_INET), memfd_create, ... allowed
        assert run(program, arch, allowed) == ALLOW, allowed
    assert run(program, 0x40000003, 1) == EPERM  # i386 ABI from a 64-bit process
    assert run(program, arch, 0x40000000 | nr["unshare"]) == EPERM  # x32


def test_the_docker_default_essentials_are_refused():
    for name in ("keyctl", "add_key", "request_key", "bpf", "ptrace", "mount", "kexec_load", "io_uring_setup",
                 "perf_event_open", "userfaultfd", "setns", "init_module", "open_by_handle_at"):
        assert name in KILL + REFUSE + NOT_IMPLEMENTED, name
    # README: the keyring, BPF, ptrace, mounts, modules, kexec and clock calls kill the service; io_uring, perf
    # events, NUMA policy, setns and userfaultfd are refused
    assert {"keyctl", "bpf", "ptrace", "mount", "init_module", "kexec_load", "clock_settime"} <= set(KILL)
    assert {"perf_event_open", "set_mempolicy", "mbind", "setns", "userfaultfd"} <= set(REFUSE)
    assert "io_uring_setup" in REFUSE + NOT_IMPLEMENTED


def test_unknown_architecture_gets_no_filter():
    assert sandbox_filter("sparc64") is None
