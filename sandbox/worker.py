"""The only testbed code that runs INSIDE the sandbox: load the vendor's bento and serve it on the socket the
harness created and handed in as a file descriptor.

Standard library, BentoML and uvicorn only (the testbed's packages are not mounted here). Isolation is
enforced from outside by bubblewrap, cgroups, rlimits and seccomp; verdicts come from what the harness observes
outside. The audit hook below only *reports*, on a pipe the harness reads as it is written, the paths the
service tried to open that do not exist here (the harness matches them against its own paths, which the
sandbox is never told). It runs in the vendor's process, so it is best effort: a report, once sent, cannot be
taken back, but a determined bundle can stop further reports.

Usage (by the harness): python -I worker.py TAG SOCKET_FD REPORT_FD
"""

import os
import sys

_seen = set()


def _audit_hook(report):
    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path not in _seen and len(_seen) < 10_000 and not os.path.lexists(path):
                _seen.add(path)
                try:
                    os.write(report, f"open {path}\n".encode(errors="replace"))
                except OSError:
                    pass

    return hook


def main():
    tag, socket_fd, report_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.addaudithook(_audit_hook(report_fd))
    import bentoml
    import uvicorn

    service = bentoml.load(tag)
    uvicorn.run(service.to_asgi(), fd=socket_fd, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
