"""The harness's request channel against a raw Unix-socket server that misbehaves on request: answers kept alive,
cut at the cap, the budget or the deadline, hung up mid-answer, closed while idle. Fast: no sandbox."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from sandbox.channel import Budget, Channel

DEADLINE_S = 5


def _answer(route: str) -> list[tuple[bytes, float]]:
    """What the server writes for `route`: (bytes, seconds to wait first) pieces."""
    def head(length: int | str, status: str = "200 OK") -> bytes:
        framing = b"transfer-encoding: chunked" if length == "chunked" else f"content-length: {length}".encode()
        return f"HTTP/1.1 {status}\r\n".encode() + framing + b"\r\n\r\n"

    return {
        "/ok": [(head(2) + b"ok", 0)],
        "/chunked": [(head("chunked") + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 0)],
        "/big": [(head(1000) + b"x" * 1000, 0)],
        "/short": [(head(100) + b"only this", 0)],
        "/trickle": [(head(1000), 0)] + [(b"x", 0.3)] * 100,
        "/fail": [(head(4, "500 Internal Server Error") + b"boom", 0)],
    }[route]


@pytest.fixture
def server(tmp_path):
    """A server on a Unix socket: answers each request by its route, closes after `/short` and `/trickle`, and
    hangs up a connection idle for 0.2 s. Yields (socket path, connections accepted)."""
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    accepted = []

    def handle(conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while True:
                try:
                    while b"\r\n\r\n" not in buffer:
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffer += data
                except (TimeoutError, OSError):
                    return  # idle: hang up
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                route = head.split(b" ")[1].decode()
                try:
                    for piece, wait in _answer(route):
                        time.sleep(wait)
                        conn.sendall(piece)
                except OSError:
                    return
                if route in ("/short", "/trickle"):
                    return

    def serve() -> None:
        while True:
            try:
                conn = listener.accept()[0]
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield path, accepted
    listener.close()


def post(channel: Channel, route: str, deadline_s: float = DEADLINE_S):
    return channel.post(route, b"{}", "application/json", time.monotonic() + deadline_s)


def test_answers_come_back_whole_over_one_kept_alive_connection(server):
    path, accepted = server
    channel = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    assert [post(channel, "/ok")[:2] for _ in range(5)] == [(200, b"ok")] * 5
    assert post(channel, "/chunked")[:2] == (200, b"abcde")
    assert len(accepted) == 1
    status, body, _, error = post(channel, "/fail")
    assert (status, body, error) == (500, b"boom", "HTTP 500: boom")
    channel.close()


def test_an_answer_past_the_cap_or_the_budget_is_cut_and_its_connection_dropped(server):
    path, accepted = server
    capped = Channel(path, cap=999, budget=Budget(1 << 20))
    status, body, _, error = post(capped, "/big")
    assert (status, body) == (0, None) and error == "oversize: the response passed 999 bytes"
    assert post(capped, "/ok")[:2] == (200, b"ok") and len(accepted) == 2  # a fresh connection for the next
    spent = Channel(path, cap=1 << 20, budget=Budget(1500))
    assert post(spent, "/big")[0] == 200
    assert post(spent, "/big")[3] == "oversize: the run's responses passed their total cap"
    # an answer's own cap (its items' allowance, see `Phase.answer_bytes_per_item`), below the channel's
    own = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    assert own.post("/big", b"{}", "application/json", time.monotonic() + DEADLINE_S, cap=500)[3] == \
        "oversize: the response passed 500 bytes"
    assert own.post("/big", b"{}", "application/json", time.monotonic() + DEADLINE_S, cap=1 << 30)[0] == 200


def test_a_hang_up_mid_answer_is_an_error_not_a_short_answer(server):
    path, _ = server
    channel = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    status, body, _, error = post(channel, "/short")
    assert (status, body) == (0, None)
    assert error == "truncated: the service hung up 91 bytes short of the length it announced"
    assert post(channel, "/ok")[:2] == (200, b"ok")


def test_a_trickling_answer_is_cut_at_the_deadline(server):
    path, _ = server
    channel = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    start = time.monotonic()
    status, body, _, error = post(channel, "/trickle", deadline_s=1)
    assert (status, body) == (0, None) and error.startswith("deadline")
    assert time.monotonic() - start < 2


def test_a_connection_the_service_closed_while_idle_is_replaced(server):
    path, accepted = server
    channel = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    assert post(channel, "/ok")[0] == 200
    time.sleep(0.5)  # the server hangs up after 0.2 s idle
    assert post(channel, "/ok")[:2] == (200, b"ok") and len(accepted) == 2


def test_each_thread_has_its_own_connection(server):
    path, accepted = server
    channel = Channel(path, cap=1 << 20, budget=Budget(1 << 20))
    barrier = threading.Barrier(3)
    results = []

    def worker():
        barrier.wait()
        results.extend(post(channel, "/ok")[:2] for _ in range(3))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(200, b"ok")] * 9 and len(accepted) == 3
    channel.close()
