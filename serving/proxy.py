"""The trusted proxy in front of a served bundle: every request checked against the contract's inputs, every
answer against the family's contract (`TaskFamily.check_answer`), and counted in the Prometheus metrics.

What a client gets: the bundle's answer when it is valid; 400 for a request the contract does not take (the
family's `check_request`: shapes, types) or JSON that BentoML's parser refuses (`parse_request`), 413 for one
too large, 408 for one too slow to arrive, all found by the proxy before the bundle sees it (and a request whose
client left is never sent: 499); 502 when the bundle failed, answered anything but 200 (its own 4xx too: the
request was valid) or broke the contract (wrong item count, NaN, a negative forecast, not numbers, not JSON, too
large); 503 when nothing is served, the version was replaced while answering, or `MAX_WAITING` requests already
wait for it, or their bodies fill `MAX_HELD_BYTES` (`BACKLOG`), all counted as `unavailable`; 503 too when
`MAX_READING` requests are still arriving (`BUSY`) or arriving bodies fill `MAX_HELD_BYTES` (`FULL`), both counted
as the clients'; every 503 with Retry-After. `ProductionServer` inherits it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.service import SandboxedService
from serving.batching import GONE, Batcher, parse_request
from testbed.errors import ContractViolation
from testbed.text import printable

if TYPE_CHECKING:
    from evaluation.contract import Contract
    from evaluation.family import TaskFamily
    from serving.metrics import ServingMetrics
    from workflow.promote import Approved

__all__ = ["Proxy", "Served", "served_schema", "ABANDONED", "BACKLOG", "BUSY", "FULL", "REQUEST_TIMEOUT_S",
           "MAX_REQUEST_BYTES", "MAX_WAITING", "MAX_READING", "MAX_HELD_BYTES", "body_deadline_s"]

REQUEST_TIMEOUT_S = 60
"""How long the proxy waits for the served bundle's answer to one request."""
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
PARSE_IN_THREAD_BYTES = 64 << 10
"""Bodies larger than this are parsed and checked in a worker thread, not in the event loop."""


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


def served_schema(manifest: dict, contract: Contract) -> bytes:
    """What /schema.json answers (`bentoml.SyncHTTPClient` builds its calls from it): the contract's API as the
    approved bundle's `bento.yaml` declares it (checked against the contract at submission; the bytes evaluated),
    on the contract's route, the only one the proxy serves. Never what the running bundle answers: it could tell
    clients, once promoted, that the API is elsewhere, and every call would fail where /metrics counts nothing."""
    schema = manifest.get("schema")
    schema = schema if isinstance(schema, dict) else {}
    routes = [{**r, "route": contract.route} for r in schema.get("routes") or []
              if isinstance(r, dict) and r.get("name") == contract.api]
    return json.dumps({**schema, "routes": routes[:1], "paths": {contract.route: {"mounted": False}}}).encode()


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _unanswered(error: str) -> bytes:
    """The proxy's 502 body when the served bundle sent no whole answer (`error`: what the channel saw)."""
    return _error(f"the served bundle did not answer ({error[:200]})")


class _Held:
    """One request's share of the body bytes the proxy holds (`Proxy._held`, at most MAX_HELD_BYTES), counted in
    the event loop while it is read, parsed and waits for its answer (from `wait()` on, also in
    `Proxy._held_waiting`: the bytes the bundle's pace decides how long the proxy holds)."""

    def __init__(self, proxy: Proxy):
        self.proxy, self.size, self.waiting = proxy, 0, False

    def fits(self, size: int) -> bool:
        return self.proxy._held + size <= MAX_HELD_BYTES

    def take(self, size: int) -> bool:
        if not self.fits(size):
            return False
        self.proxy._held += size
        self.size += size
        return True

    def wait(self) -> None:
        """The request is read and checked: from now on it waits for the bundle."""
        self.proxy._held_waiting += self.size
        self.waiting = True

    def refused(self, size: int) -> tuple[int, bytes]:
        """What a request whose next `size` bytes do not fit gets: `FULL` (the clients') when bodies still
        arriving would fill the bound by themselves, else `BACKLOG` (the bundle's: requests it has not answered
        yet hold the bytes)."""
        arriving = self.proxy._held - self.proxy._held_waiting
        return FULL if arriving + size > MAX_HELD_BYTES else BACKLOG

    def release(self) -> None:
        self.proxy._held -= self.size
        if self.waiting:
            self.proxy._held_waiting -= self.size
        self.size, self.waiting = 0, False


def body_deadline_s(declared: str, arrived: int = 0) -> float:
    """Seconds a body of `declared` length (the Content-Length header; '' when chunked, then by the `arrived`
    bytes) may take to arrive, counted from the start of its reading."""
    size = int(declared) if declared.isdigit() else arrived
    return min(BODY_TIMEOUT_S, BODY_GRACE_S + size / MIN_UPLOAD_BYTES_PER_S)


async def _body(request: Request, held: _Held, deadline: anyio.CancelScope) -> bytes | tuple[int, bytes] | None:
    """The request's body, or None when it is larger than MAX_REQUEST_BYTES (read no further); `FULL` or `BACKLOG`
    (`_Held.refused`) as soon as its bytes would not fit beside what the proxy holds (the declared length, then
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


class _Client:
    """When a request's client left (monotonic), or None while it waits: set by `_unless_gone`, read by the worker
    thread about to make the request's call (an attribute read: no lock needed)."""

    left_at: float | None = None


async def _unless_gone(request: Request, answer: Awaitable[tuple[int, bytes]], client: _Client) -> tuple[int, bytes]:
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


class Served:
    """One approved bundle running in the sandbox."""

    def __init__(self, ok: Approved, service: SandboxedService, schema: bytes = b'{"routes": []}'):
        self.ok, self.service, self.version, self.schema = ok, service, ok.version, schema
        """`schema`: what /schema.json answers for it (`served_schema`)."""
        self.channel = service.channel()
        self.inflight, self.crashed, self.closing, self.lock = 0, False, False, threading.Lock()
        self.died_at = 0.0
        """When the proxy or the watcher found it dead (monotonic)."""
        self.answered_at, self.timed_out = time.monotonic(), 0
        """When it last answered a call (or started), and how many calls timed out since (`hung`)."""

    def hung(self) -> bool:
        """Stuck for good, not slow: at least two calls timed out and none was answered for twice
        REQUEST_TIMEOUT_S."""
        return self.timed_out >= 2 and time.monotonic() - self.answered_at > 2 * REQUEST_TIMEOUT_S

    def close(self, drain_s: float = 10) -> None:
        """Stop it once its calls are answered (at most `drain_s`): it was replaced, withdrawn or refused."""
        self.closing = True
        deadline = time.monotonic() + drain_s
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        self.channel.close()
        self.service.stop()
        self.service.close()


class Proxy:
    """The proxy's half of `ProductionServer`: the routes, and calls into the served bundle (`served`)."""

    served: Served | None
    family: TaskFamily
    contract: Contract
    metrics: ServingMetrics
    pilot: str
    model: str
    reason: str
    """Why nothing is ready (shown by /readyz and in 503 answers)."""
    late_s: float
    """How long a request may wait for the bundle (queued or in a call) before its client's departure counts as
    the bundle's failure (`error`, not `client_error`): the pilot's p95 latency target. A bundle that hangs
    must not look healthy because its clients give up before REQUEST_TIMEOUT_S (bentoml's clients after 30 s)."""
    _batcher: Batcher | None
    _waiting: int
    _reading: int
    _held: int
    """Bytes of request bodies in the proxy now (`_Held`)."""
    _held_waiting: int
    """The part of `_held` whose requests wait for the bundle."""

    def _call(self, served: Served, body: bytes, items: int) -> tuple[int, bytes]:
        """One call into the served bundle with `items` items; its answer checked (`_checked`)."""
        per_item = self.family.answer_bytes_per_item
        with served.lock:
            served.inflight += 1
        try:
            status, out, _, error = served.channel.post(self.contract.route, body, "application/json",
                                                        time.monotonic() + REQUEST_TIMEOUT_S,
                                                        cap=per_item * items if per_item else None)
            if status:
                with served.lock:
                    served.answered_at, served.timed_out = time.monotonic(), 0
                self.metrics.batch.labels(self.pilot, served.version).observe(items)
                return self._checked(status, out, items, error)
            if error.startswith(("TimeoutError", "deadline")):
                with served.lock:
                    served.timed_out += 1
            if served.closing:  # stopped under this call: replaced or withdrawn, not crashed
                return 503, _error(f"version {served.version} was taken out of service while answering; retry")
            if not served.service.alive():
                self._crashed(served)
                return 503, _error(self.reason)
            return 502, _unanswered(error)
        finally:
            with served.lock:
                served.inflight -= 1

    def _checked(self, status: int, out: bytes, items: int, error: str) -> tuple[int, bytes]:
        """What the client gets for the bundle's answer: a valid one as it is, anything else a 502 saying what
        broke. The proxy has checked the request, so the bundle's own 4xx is its failure, not the client's."""
        if status != 200:
            return 502, _error(f"the served bundle failed ({error[:300]})")
        try:
            if out.lstrip()[:1] not in (b"[", b"{"):
                raise ContractViolation("the answer is not JSON")
            self.family.check_answer(out, items)
        except ContractViolation as exc:
            return 502, _error(f"the served bundle broke the contract: {printable(exc.problem[:300])}")
        return 200, out

    async def _api(self, request: Request) -> Response:
        started = time.perf_counter()
        served = self.served
        outcome = None
        try:
            answer = await self._answer(request, served, self._batcher)
            status, out = answer
            if answer is ABANDONED:  # the bundle kept the client waiting past the service level: its failure
                outcome = "error"
            elif answer is BUSY or answer is FULL:  # other clients' uploads fill the proxy: not the bundle's failure
                outcome = "client_error"
        except Exception as exc:  # noqa: BLE001 - every request gets an answer, and is counted
            while isinstance(exc, ExceptionGroup) and exc.exceptions:  # from `_unless_gone`'s task group
                exc = exc.exceptions[0]
            status, out = 502, _error(f"the proxy could not get an answer ({type(exc).__name__})")
        self.metrics.observe(served.version if served else "none", status, time.perf_counter() - started, outcome)
        return Response(out, status, media_type="application/json",
                        headers={"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None)

    async def _answer(self, request: Request, served: Served | None, batcher: Batcher | None) -> tuple[int, bytes]:
        """(status, body) for one API request: 503 when nothing is served or too many requests are in the proxy;
        413, 408 or 400 for a request that is too large, too slow to arrive or not what the contract takes (its
        client's mistake, never sent to the bundle; 499 when the client left: `ABANDONED` when it had waited for
        the bundle longer than `late_s`); else the bundle's checked answer."""
        if served is None or served.crashed:
            return 503, _error(self.reason or "not ready")
        if self._reading >= MAX_READING:
            return BUSY
        held = _Held(self)
        try:
            return await self._read(request, served, batcher, held)
        finally:
            held.release()

    async def _read(self, request: Request, served: Served, batcher: Batcher | None, held: _Held
                    ) -> tuple[int, bytes]:
        """`_answer` once the request may be read: its body's bytes counted in `held` until it is answered."""
        self._reading += 1
        began = anyio.current_time()
        try:
            with anyio.fail_after(body_deadline_s(request.headers.get("content-length", ""))) as deadline:
                body = await _body(request, held, deadline)
        except TimeoutError:
            return 408, _error(f"the request's body did not arrive within {deadline.deadline - began:.3g} s (a body "
                               f"may take {BODY_GRACE_S:g} s plus its length at {MIN_UPLOAD_BYTES_PER_S >> 10} KiB/s, "
                               f"at most {BODY_TIMEOUT_S} s)")
        except ClientDisconnect:
            return GONE
        finally:
            self._reading -= 1
        if body is FULL or body is BACKLOG:
            return body
        if body is None:
            return 413, _error(f"the request is larger than {MAX_REQUEST_BYTES} bytes; send fewer items per request")
        if self._waiting >= MAX_WAITING:
            return 503, _error(f"overloaded: {MAX_WAITING} requests are waiting for the model; retry later")
        self._waiting += 1
        try:
            checked = (await anyio.to_thread.run_sync(self._request, body) if len(body) > PARSE_IN_THREAD_BYTES
                       else self._request(body))
            if isinstance(checked, str):
                return 400, _error(checked)
            (inputs, items), client, handed = checked, _Client(), time.monotonic()
            held.wait()
            del checked  # without batching the body is sent: its parsed form (up to ~20x its bytes) is not kept

            def send() -> tuple[int, bytes]:  # in a worker thread: never sent once the client has left
                return GONE if client.left_at is not None else self._call(served, body, items)

            waiting = batcher.submit(inputs, items) if batcher is not None else anyio.to_thread.run_sync(send)
            del inputs
            answer = await _unless_gone(request, waiting, client)
            if answer is not GONE and answer[0] >= 500:  # the bundle failed it, its client there or not
                return answer
            if client.left_at is not None:
                return ABANDONED if client.left_at - handed > self.late_s else GONE
            return answer
        except ClientDisconnect:
            return GONE
        finally:
            self._waiting -= 1

    def _request(self, body: bytes) -> tuple[dict, int] | str:
        """The request's contract inputs and item count, or what is wrong with it (`TaskFamily.check_request`)."""
        parsed = parse_request(body, list(self.contract.inputs))
        if isinstance(parsed, str):
            return parsed
        try:
            self.family.check_request(*parsed)
        except ContractViolation as exc:
            return exc.problem
        except Exception as exc:  # noqa: BLE001 - whatever a client sent: its request, not the bundle's failure
            return f"the request does not fit the contract ({type(exc).__name__})"
        return parsed

    async def _schema(self, request: Request) -> Response:
        served = self.served
        if served is None or served.crashed:
            return JSONResponse({"error": self.reason or "not ready"}, 503)
        return Response(served.schema, 200, media_type="application/json")  # never asked of the bundle

    async def _readyz(self, request: Request) -> Response:
        if self.ready:
            return Response(f"ready: {self.model} version {self.served.version}\n")
        return Response(f"not ready: {self.reason or 'the served bundle is not running'}\n", 503)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/healthz", lambda request: Response("ok\n")),
            Route("/readyz", self._readyz),
            Route("/metrics", lambda request: Response(self.metrics.exposition(),
                                                       media_type="text/plain; version=0.0.4")),
            Route("/schema.json", self._schema),
            Route(self.contract.route, self._api, methods=["POST"]),
        ])
