"""Fail fast on a service address where nothing listens: Ray and MLflow retry a dead address for minutes
(`ray.init` ~10 min, MLflow's HTTP client ~4 min) before a traceback."""

from __future__ import annotations

import socket

from testbed.errors import ResourceUnavailable

__all__ = ["require_listener", "speaks_http1"]


def require_listener(host: str, port: int, *, what: str, where: str, fix: str, timeout_s: float = 5.0) -> None:
    """Raise `ResourceUnavailable` (naming `what`, `where` and the `fix`) unless a TCP connection to host:port
    opens within `timeout_s`."""
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout_s).close()
    except OSError as exc:
        raise ResourceUnavailable(f"no {what} answers at {host}:{port} ({exc.strerror or type(exc).__name__})",
                                  where=where, fix=fix) from None


def speaks_http1(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether what listens at host:port answers a plain HTTP/1.0 request as a web server does (gRPC servers,
    such as Ray's GCS, answer in HTTP/2 frames or not at all)."""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout_s) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: testbed\r\n\r\n")
            return conn.recv(8).startswith(b"HTTP/1.")
    except OSError:
        return False
