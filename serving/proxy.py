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
as the clients'; every 503 with Retry-After (the bounds: `serving.admission`). `ProductionServer` inherits it.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox.service import SandboxedService
from serving.admission import ABANDONED, BUSY, FULL, RETRY_AFTER_S, Admission, Client, Held, error_body, unless_gone
from serving.batching import GONE, Batcher, parse_request
from testbed.errors import ContractViolation
from testbed.text import printable

if TYPE_CHECKING:
    from evaluation.contract import Contract
    from evaluation.family import TaskFamily
    from serving.metrics import ServingMetrics
    from workflow.promote import Approved

__all__ = ["Proxy", "Served", "served_schema", "REQUEST_TIMEOUT_S"]

REQUEST_TIMEOUT_S = 60
"""How long the proxy waits for the served bundle's answer to one request."""
PARSE_IN_THREAD_BYTES = 64 << 10
"""Bodies larger than this are parsed and checked in a worker thread, not in the event loop."""


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


def _unanswered(error: str) -> bytes:
    """The proxy's 502 body when the served bundle sent no whole answer (`error`: what the channel saw)."""
    return error_body(f"the served bundle did not answer ({error[:200]})")


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
    admission: Admission
    """What the proxy holds now, and what it lets in (`serving.admission`)."""
    _batcher: Batcher | None

    def _call(self, served: Served, body: bytes, items: int) -> tuple[int, bytes]:
        """One call into the served bundle with `items` items; its answer checked (`_checked`)."""
        per_item = self.family.answer_bytes_per_item
        with served.lock:
            if served.closing:  # replaced, refused or withdrawn since the request came in: never sent to it
                return 503, error_body(f"version {served.version} was taken out of service; retry")
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
                return 503, error_body(f"version {served.version} was taken out of service while answering; retry")
            if not served.service.alive():
                self._crashed(served)
                return 503, error_body(self.reason)
            return 502, _unanswered(error)
        finally:
            with served.lock:
                served.inflight -= 1

    def _checked(self, status: int, out: bytes, items: int, error: str) -> tuple[int, bytes]:
        """What the client gets for the bundle's answer: a valid one as it is, anything else a 502 saying what
        broke. The proxy has checked the request, so the bundle's own 4xx is its failure, not the client's."""
        if status != 200:
            return 502, error_body(f"the served bundle failed ({error[:300]})")
        try:
            if out.lstrip()[:1] not in (b"[", b"{"):
                raise ContractViolation("the answer is not JSON")
            self.family.check_answer(out, items)
        except ContractViolation as exc:
            return 502, error_body(f"the served bundle broke the contract: {printable(exc.problem[:300])}")
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
            status, out = 502, error_body(f"the proxy could not get an answer ({type(exc).__name__})")
        self.metrics.observe(served.version if served else "none", status, time.perf_counter() - started, outcome)
        return Response(out, status, media_type="application/json",
                        headers={"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None)

    async def _answer(self, request: Request, served: Served | None, batcher: Batcher | None) -> tuple[int, bytes]:
        """(status, body) for one API request: 503 when nothing is served or too many requests are in the proxy;
        413, 408 or 400 for a request that is too large, too slow to arrive or not what the contract takes (its
        client's mistake, never sent to the bundle; 499 when the client left: `ABANDONED` when it had waited for
        the bundle longer than `late_s`); else the bundle's checked answer."""
        if served is None or served.crashed:
            return 503, error_body(self.reason or "not ready")
        held = Held(self.admission)
        try:
            body = await self.admission.receive(request, held)
            if isinstance(body, tuple):
                return body
            refused = self.admission.queue()
            if refused:
                return refused
            try:
                return await self._wait(request, served, batcher, held, body)
            finally:
                self.admission.leave()
        finally:
            held.release()

    async def _wait(self, request: Request, served: Served, batcher: Batcher | None, held: Held, body: bytes
                    ) -> tuple[int, bytes]:
        """`_answer` once the request is read and has its place among those that wait for the bundle."""
        try:
            checked = (await anyio.to_thread.run_sync(self._request, body) if len(body) > PARSE_IN_THREAD_BYTES
                       else self._request(body))
            if isinstance(checked, str):
                return 400, error_body(checked)
            (inputs, items), client, handed = checked, Client(), time.monotonic()
            held.wait()
            del checked  # without batching the body is sent: its parsed form (up to ~20x its bytes) is not kept

            def send() -> tuple[int, bytes]:  # in a worker thread: never sent once the client has left
                return GONE if client.left_at is not None else self._call(served, body, items)

            waiting = batcher.submit(inputs, items) if batcher is not None else anyio.to_thread.run_sync(send)
            del inputs
            answer = await unless_gone(request, waiting, client)
            if answer is not GONE and answer[0] >= 500:  # the bundle failed it, its client there or not
                return answer
            if client.left_at is not None:
                return ABANDONED if client.left_at - handed > self.late_s else GONE
            return answer
        except ClientDisconnect:
            return GONE

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
