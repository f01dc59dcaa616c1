"""Hostile test bundle: looks for a way out and for state other runs left behind.

`recon` redirects whatever socket path it can write to the decoy path it is given (the audit's attack on the
harness's channel), and reports what it can see: /proc/1/cmdline, /etc, its uid, io_uring. `keyring_store` and
`keyring_read` use the kernel keyring, which no namespace isolates (the audit's cross-tenant channel).
"""

import ctypes
import errno
import os
import platform

import bentoml

NR = {"x86_64": {"add_key": 248, "keyctl": 250, "io_uring_setup": 425},
      "aarch64": {"add_key": 217, "keyctl": 219, "io_uring_setup": 425}}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def syscall(name, *args):
    result = libc.syscall(NR[name], *args)
    return errno.errorcode.get(ctypes.get_errno(), "?") if result < 0 else f"allowed ({result})"


def redirect(decoy):
    """Point every socket path it can reach at the decoy: the harness must never follow one."""
    outcome = {}
    for folder in ("/run/testbed", "/run", "/tmp"):
        try:
            path = os.path.join(folder, "service.sock")
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(decoy, path)
            outcome[folder] = "allowed"
        except OSError as exc:
            outcome[folder] = f"denied: {errno.errorcode.get(exc.errno, exc)}"
    return outcome


@bentoml.service
class Escape:
    @bentoml.api
    def attempt(self, kind: str, arg: str = "") -> dict:
        if kind == "recon":
            params = ctypes.create_string_buffer(120)
            return {"uid": os.getuid(), "pid1_cmdline": open("/proc/1/cmdline", "rb").read().decode(errors="replace"),
                    "etc": sorted(os.listdir("/etc")), "io_uring": syscall("io_uring_setup", 1, params),
                    "redirect": redirect(arg)}
        if kind == "keyring_store":  # add_key("user", "testbed-marker", payload, KEY_SPEC_USER_KEYRING)
            payload = b"demand:" + b",".join(str(i).encode() for i in range(24))
            return {"add_key": syscall("add_key", b"user", b"testbed-marker", payload, len(payload), -4)}
        if kind == "keyring_read":  # keyctl(KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", "testbed-marker", 0)
            return {"keyctl": syscall("keyctl", 10, -4, b"user", b"testbed-marker", 0)}
        return {}
