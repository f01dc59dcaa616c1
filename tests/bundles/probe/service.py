"""Hostile test bundle: tries to reach the network and the host's files, and reports what it got."""

import os
import socket

import bentoml


def attempt(target: str) -> str:
    kind, _, arg = target.partition(":")
    try:
        if kind == "tcp":
            host, port = arg.rsplit(":", 1)
            socket.create_connection((host, int(port)), timeout=2).close()
        elif kind == "read":
            with open(arg, "rb") as fh:
                fh.read(16)
        elif kind == "list":
            os.listdir(arg)
        elif kind == "write":
            with open(arg, "w") as fh:
                fh.write("x")
        elif kind == "bigfile":
            with open(arg, "wb") as fh:
                for _ in range(64):
                    fh.write(b"\0" * (1 << 20))
        elif kind == "userns":
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                raise PermissionError(os.strerror(ctypes.get_errno()))
        elif kind == "thread":
            import threading

            worker = threading.Thread(target=lambda: None)
            worker.start()
            worker.join()
        elif kind == "vsock":  # to the hypervisor (CID 2): outside any network namespace
            socket.socket(40, socket.SOCK_STREAM).close()
        elif kind == "shm":  # POSIX shared memory, as multiprocessing and torch use it
            from multiprocessing import shared_memory

            shared_memory.SharedMemory(create=True, size=1 << 20).unlink()
        elif kind == "dns":
            socket.getaddrinfo(arg, 80)
        elif kind == "import":
            __import__(arg)
        return "allowed"
    except Exception as exc:  # noqa: BLE001 - the point is to report any refusal
        return f"denied: {type(exc).__name__}"


@bentoml.service
class Probe:
    @bentoml.api
    def probe(self, targets: list[str]) -> dict:
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
        return {"uid": os.getuid(), "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
                "no_new_privs": status["NoNewPrivs"].strip(), "bentofile_env": os.environ.get("PROBE_FROM_BENTOFILE"),
                "results": {t: attempt(t) for t in targets}}
