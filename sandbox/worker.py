"""The only testbed code that runs INSIDE the sandbox: load the vendor's bento and serve it on a Unix socket.

Standard library, BentoML and uvicorn only (the testbed's packages are not mounted here). Isolation is
enforced from outside by bubblewrap and rlimits; the audit hook below only *reports* attempts to reach the
network or the city's paths, so the harness can give the verdict `sandbox_violation`.

Usage (by the harness): python -I worker.py TAG SOCKET [FORBIDDEN_PATH ...]
"""

import os
import socket
import sys

VIOLATION = "TESTBED-SANDBOX-VIOLATION"
_reported = set()


def _report(what):
    if what not in _reported:
        _reported.add(what)
        print(f"{VIOLATION} {what}", file=sys.stderr, flush=True)


def _audit_hook(forbidden):
    def hook(event, args):
        if event == "socket.connect":
            sock, address = args[0], args[1]
            if getattr(sock, "family", None) != socket.AF_UNIX:
                _report(f"network connection attempt to {address!r}")
                raise PermissionError("network access is not allowed in the testbed sandbox")
        elif event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
            path = os.fsdecode(args[0])
            if any(path == p or path.startswith(p + "/") for p in forbidden):
                _report(f"attempt to read harness path {path!r}")

    return hook


def main():
    tag, socket_path, forbidden = sys.argv[1], sys.argv[2], tuple(sys.argv[3:])
    sys.addaudithook(_audit_hook(forbidden))
    import bentoml
    import uvicorn

    service = bentoml.load(tag)
    uvicorn.run(service.to_asgi(), uds=socket_path, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
