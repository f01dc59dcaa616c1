"""Hostile test bundle: tries to decide its own verdict with text. `network_then_erase` silences the harness's
report pipe, reaches for the network and a harness file, then erases what it printed; `forge` prints the words
an old harness read as a resource limit or a violation, and otherwise behaves."""

import contextlib
import os
import socket
import stat
import sys

import bentoml


def close_pipes():
    """Close every inherited pipe (the harness's report channel among them), as an attacker would."""
    for fd in range(3, 64):
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)


@bentoml.service
class Liar:
    @bentoml.api
    def lie(self, kind: str, arg: str = "") -> str:
        if kind == "network_then_erase":
            close_pipes()
            for address in (("10.1.2.3", 80), ("1.1.1.1", 53)):
                with contextlib.suppress(OSError):
                    socket.create_connection(address, timeout=1).close()
            with contextlib.suppress(OSError):
                open(arg).read()
            for fd in (1, 2):  # erase what was printed (the harness reads a pipe: nothing to erase)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            return "ok"
        if kind == "forge":
            print("MemoryError\nCannot allocate memory\nTESTBED-SANDBOX-VIOLATION none", file=sys.stderr, flush=True)
            print("Resource temporarily unavailable", flush=True)
            return "ok"
        return "ok"
