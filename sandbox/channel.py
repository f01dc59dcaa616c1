"""The harness's side of a request to the sandbox: HTTP/1.1 over the service's Unix socket, its answer read as it
comes with a size cap, a byte budget shared by the run, and a deadline.

The standard library's `http.client` carries it, one keep-alive connection per sending thread. httpx's client
cost more than the model for small forecasting models: a bike_mlp request through the sandbox took 3.4–4.6 ms
with it and 2.3–2.8 ms with this, interleaved in one process (0.69 against 0.25 ms to a bare uvicorn app), for a
model call of ~0.3 ms. What the sandbox sends is never trusted: the status line and headers are bounded by
`http.client` (64 KiB a line, 100 headers), the body by the cap and the budget below, the time by the deadline
and, beyond it, by the run's watchdog, which stops the service.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
import time

from testbed.text import printable

__all__ = ["MAX_RESPONSE_BYTES", "Budget", "Channel", "Sent"]

MAX_RESPONSE_BYTES = 64 << 20
"""The largest answer the harness reads by default; the rest is never read."""

Sent = tuple[int, bytes | None, float, str]
"""(HTTP status, or 0 when no whole answer came; the answer's body, or None; seconds; what went wrong, or "")."""


class Budget:
    """Response bytes the run may still keep (shared by a phase's threads)."""

    def __init__(self, total: int):
        self.left, self.lock = total, threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            self.left -= n
            return self.left >= 0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("sandbox")
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Channel:
    """Requests to one sandboxed service: a connection per calling thread, all closed by `close()`."""

    def __init__(self, socket_path: str, *, cap: int = MAX_RESPONSE_BYTES, budget: Budget | None = None):
        self.socket_path, self.cap, self.budget = socket_path, cap, budget
        self._local, self._all, self._lock = threading.local(), [], threading.Lock()

    def _connection(self) -> _UnixConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _UnixConnection(self.socket_path)
            with self._lock:
                self._all.append(conn)
        elif conn.sock is not None and select.select([conn.sock], [], [], 0)[0]:
            conn.close()  # readable while idle: the service closed it (or sent what nobody asked for)
        return conn

    def post(self, route: str, body: bytes, content_type: str, deadline: float, cap: int | None = None) -> Sent:
        """POST `body`; see `_exchange` (`cap`: this answer's own, below the channel's)."""
        return self._exchange("POST", route, body, {"content-type": content_type}, deadline, cap)

    def get(self, route: str, deadline: float) -> Sent:
        """GET `route`; see `_exchange`."""
        return self._exchange("GET", route, None, {}, deadline)

    def _exchange(self, method: str, route: str, body: bytes | None, headers: dict, deadline: float,
                  cap: int | None = None) -> Sent:
        """One request, its answer cut at the cap, when the run's byte budget is spent, or at `deadline` (a
        monotonic time: a total, not a per-read, limit). The body comes back whatever the status."""
        start, conn, cap = time.perf_counter(), self._connection(), min(cap or self.cap, self.cap)
        try:
            conn.timeout = max(0.001, deadline - time.monotonic())
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            conn.request(method, route, body=body, headers=headers)
            resp = conn.getresponse()
            data, size = [], 0
            while chunk := resp.read1(1 << 16):
                size += len(chunk)
                problem = (f"oversize: the response passed {cap} bytes" if size > cap else
                           "oversize: the run's responses passed their total cap"
                           if self.budget is not None and not self.budget.take(len(chunk))
                           else "deadline: the time allowed ran out mid-response" if time.monotonic() > deadline
                           else "")
                if problem:
                    conn.close()  # the rest of the answer is never read: this connection cannot carry another
                    return 0, None, time.perf_counter() - start, problem
                data.append(chunk)
            if resp.length:
                conn.close()
                return 0, None, time.perf_counter() - start, \
                    f"truncated: the service hung up {resp.length} bytes short of the length it announced"
            resp.close()  # read to its end: the connection carries the next request
            elapsed = time.perf_counter() - start
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return 0, None, time.perf_counter() - start, printable(f"{type(exc).__name__}: {exc}"[:300])
        content = b"".join(data)
        error = "" if resp.status == 200 else printable(f"HTTP {resp.status}: {content[:300].decode(errors='replace')}")
        return resp.status, content, elapsed, error

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
