"""What the serving proxy lets in, before the bundle sees anything: how many requests may still be arriving and
how many may wait for the bundle, the bytes their bodies may hold, and how long a body may take to arrive. Each
refusal says who caused it, so /metrics counts it for the clients or for the bundle (`BUSY`, `FULL`: the clients';
`BACKLOG` and a full `MAX_WAITING`: the bundle's, whose pace decides how long requests wait). Everything here is
counted in the proxy's event loop (`Admission`)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable

import anyio
from starlette.requests import ClientDisconnect, Request

from serving.batching import GONE

__all__ = ["Admission", "Client", "Held", "unless_gone", "error_body", "body_deadline_s", "ABANDONED", "BACKLOG",
           "BUSY", "FULL", "MAX_REQUEST_BYTES", "MAX_WAITING", "MAX_READING", "MAX_HELD_BYTES", "RETRY_AFTER_S"]

MAX_REQUEST_BYTES = 64 << 20
"""The largest request body the proxy reads (413 beyond it)."""
MAX_WAITING = 256
"""Requests read in full that wait for the served bundle, at most; more get 503 at once (the bundle's
`unavailable`: it does not keep up)."""
MAX_READING = 256
"""Requests whose bodies are still arriving, at most; more get 503 at once, counted as `client_error`: clients slow
to send fill these places, never the bundle."""
MAX_HELD_BYTES = 128 << 20
"""The bytes of request bodies the proxy holds at once (arriving, parsed, waiting for the bundle), at most; a
request that would pass it gets 503 (`FULL` or `BACKLOG`, by who fills it). With --batching, requests whose
clients left can still be in a call to the bundle, beyond it: at most two calls of `max_batch` items (the
batcher's concurrency). A body's parsed form takes up to ~20 times its bytes (measured: 19x
for a body of zeros, 8x for `1.0, `), so this keeps requests near 2.5 GiB of the proxy's memory: MAX_WAITING alone
let 256 requests of up to 64 MiB each (16 GiB of bodies, over 300 GiB parsed) in. At least MAX_REQUEST_BYTES."""
RETRY_AFTER_S = 1
"""What every 503 tells clients to wait before they retry (`Retry-After`)."""
BODY_TIMEOUT_S = 30
"""How long a client may take to send its request's body at most (408 beyond); less for a short one
(`body_deadline_s`)."""
BODY_GRACE_S = 5.0
MIN_UPLOAD_BYTES_PER_S = 64 << 10
"""A body may take BODY_GRACE_S plus its bytes at this rate (a 1 Mbit/s link sends twice as fast), at most
BODY_TIMEOUT_S: its declared length's bytes, or for a chunked body (no length) the bytes that have arrived, so
its deadline moves on with each chunk. A client trickling a short body holds one of the MAX_READING places for
seconds, not for BODY_TIMEOUT_S."""


BUSY = (503, b'{"error": "overloaded: too many requests are still being sent to the proxy; retry later"}')
"""What a request gets when MAX_READING requests' bodies are still arriving (counted as `client_error`)."""
FULL = (503, b'{"error": "overloaded: the requests in the proxy hold too many bytes; retry later, or send fewer '
             b'items per request"}')
"""What a request gets when the bodies still arriving would pass MAX_HELD_BYTES with its own (counted as
`client_error`: the bytes are what clients are sending, whatever the bundle does)."""
BACKLOG = (503, b'{"error": "overloaded: the requests waiting for the model hold too many bytes; retry later"}')
"""What a request gets when the bodies of requests the bundle has not answered yet fill MAX_HELD_BYTES (counted as
`unavailable`, the bundle's: how long they are held is its pace, as with MAX_WAITING)."""
ABANDONED = (499, b'{"error": "the client closed the connection while it waited for the model"}')
"""What a request whose client left after waiting longer than `Proxy.late_s` for the bundle gets (its status is
a 499 like `GONE`'s, but /metrics counts it as the bundle's `error`)."""


def error_body(message: str) -> bytes:
    """A JSON error answer's body."""
    return json.dumps({"error": message}).encode()


class Admission:
    """The proxy's counts of what it holds, and the refusals they call for (counted in the event loop)."""

    def __init__(self) -> None:
        self.reading = 0
        """Requests whose bodies are arriving now (at most MAX_READING)."""
        self.waiting = 0
        """Requests read in full that wait for their answer now (at most MAX_WAITING)."""
        self.held = 0
        """Bytes of request bodies in the proxy now, at most MAX_HELD_BYTES (`Held`)."""
        self.held_waiting = 0
        """The part of `held` whose requests wait for the bundle."""

    async def receive(self, request: Request, held: Held) -> bytes | tuple[int, bytes]:
        """The request's body, its bytes counted in `held`; or what its client gets instead: `BUSY` when
        MAX_READING bodies are arriving already, 413 for one larger than MAX_REQUEST_BYTES, 408 for one too slow
        to arrive (`body_deadline_s`), `FULL` or `BACKLOG` when its bytes do not fit (`Held.refused`), `GONE`
        when the client left."""
        if self.reading >= MAX_READING:
            return BUSY
        self.reading += 1
        began = anyio.current_time()
        try:
            with anyio.fail_after(body_deadline_s(request.headers.get("content-length", ""))) as deadline:
                body = await read_body(request, held, deadline)
        except TimeoutError:
            return 408, error_body(f"the request's body did not arrive within {deadline.deadline - began:.3g} s (a "
                                   f"body may take {BODY_GRACE_S:g} s plus its length at "
                                   f"{MIN_UPLOAD_BYTES_PER_S >> 10} KiB/s, at most {BODY_TIMEOUT_S} s)")
        except ClientDisconnect:
            return GONE
        finally:
            self.reading -= 1
        if body is None:
            return 413, error_body(f"the request is larger than {MAX_REQUEST_BYTES} bytes; send fewer items per "
                                   "request")
        return body

    def queue(self) -> tuple[int, bytes] | None:
        """Take a place among the requests that wait for the bundle (`leave` gives it back), or the 503 a request
        gets when MAX_WAITING wait already (the bundle's: it does not keep up)."""
        if self.waiting >= MAX_WAITING:
            return 503, error_body(f"overloaded: {MAX_WAITING} requests are waiting for the model; retry later")
        self.waiting += 1
        return None

    def leave(self) -> None:
        """A request that had a place (`queue`) was answered."""
        self.waiting -= 1


class Held:
    """One request's share of the body bytes the proxy holds (`Admission.held`, at most MAX_HELD_BYTES), counted in
    the event loop while it is read, parsed and waits for its answer (from `wait()` on, also in
    `Admission.held_waiting`: the bytes the bundle's pace decides how long the proxy holds)."""

    def __init__(self, admission: Admission):
        self.admission, self.size, self.waiting = admission, 0, False

    def fits(self, size: int) -> bool:
        return self.admission.held + size <= MAX_HELD_BYTES

    def take(self, size: int) -> bool:
        if not self.fits(size):
            return False
        self.admission.held += size
        self.size += size
        return True

    def wait(self) -> None:
        """The request is read and checked: from now on it waits for the bundle."""
        self.admission.held_waiting += self.size
        self.waiting = True

    def refused(self, size: int) -> tuple[int, bytes]:
        """What a request whose next `size` bytes do not fit gets: `FULL` (the clients') when bodies still
        arriving would fill the bound by themselves, else `BACKLOG` (the bundle's: requests it has not answered
        yet hold the bytes)."""
        arriving = self.admission.held - self.admission.held_waiting
        return FULL if arriving + size > MAX_HELD_BYTES else BACKLOG

    def release(self) -> None:
        self.admission.held -= self.size
        if self.waiting:
            self.admission.held_waiting -= self.size
        self.size, self.waiting = 0, False


def body_deadline_s(declared: str, arrived: int = 0) -> float:
    """Seconds a body of `declared` length (the Content-Length header; '' when chunked, then by the `arrived`
    bytes) may take to arrive, counted from the start of its reading."""
    size = int(declared) if declared.isdigit() else arrived
    return min(BODY_TIMEOUT_S, BODY_GRACE_S + size / MIN_UPLOAD_BYTES_PER_S)


async def read_body(request: Request, held: Held, deadline: anyio.CancelScope) -> bytes | tuple[int, bytes] | None:
    """The request's body, or None when it is larger than MAX_REQUEST_BYTES (read no further); `FULL` or `BACKLOG`
    (`Held.refused`) as soon as its bytes would not fit beside what the proxy holds (the declared length, then
    each chunk as it arrives). A chunked body moves `deadline` on by the bytes of each chunk (`body_deadline_s`)."""
    declared = request.headers.get("content-length", "")
    began = deadline.deadline - body_deadline_s(declared)
    if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
        return None
    if declared.isdigit() and not held.fits(int(declared)):
        return held.refused(int(declared))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        if not held.take(len(chunk)):
            return held.refused(len(chunk))
        chunks.append(chunk)
        if not declared.isdigit():
            deadline.deadline = began + body_deadline_s(declared, size)
    return b"".join(chunks)


class Client:
    """When a request's client left (monotonic), or None while it waits: set by `unless_gone`, read by the worker
    thread about to make the request's call (an attribute read: no lock needed)."""

    left_at: float | None = None


async def unless_gone(request: Request, answer: Awaitable[tuple[int, bytes]], client: Client) -> tuple[int, bytes]:
    """`answer`'s result, or `GONE` when the client disconnected before there was one (`client.left_at` says
    when): the wait is cancelled, which drops the request if it is still queued (for a batch, or for a worker
    thread) and frees its place among the MAX_WAITING. A call already in a worker thread cannot be cancelled: it
    is waited for (its place held while the bundle works on it), and its answer returned, though no client will
    read it (a failure in it is still the bundle's)."""
    result = GONE
    async with anyio.create_task_group() as group:
        async def wait() -> None:
            nonlocal result
            result = await answer
            group.cancel_scope.cancel()

        async def listen() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            client.left_at = time.monotonic()
            group.cancel_scope.cancel()

        group.start_soon(wait)
        group.start_soon(listen)
    return result
