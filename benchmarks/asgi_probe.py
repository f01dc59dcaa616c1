"""BentoML's own request path, in-process: the bundle's app as the sandbox's worker serves it (BentoML's ASGI
app as `sandbox.worker.app_of` sets it up), called directly, with no socket and no sandbox. Beside the bare API
call and the sandboxed round trip, it splits a request's time three ways: the model, BentoML's server (its
middlewares, validation, serialisation, thread hop) and what the harness adds (Unix socket, HTTP, sandbox).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

__all__ = ["app_single_p50_ms"]


def app_single_p50_ms(service, route: str, bodies: list[bytes], content_type: str) -> float:
    """Median milliseconds of one request of `bodies` through the service's app, set up as the sandbox's worker
    sets it up (after one warm-up request)."""
    from sandbox.worker import app_of

    return asyncio.run(_measure(app_of(service), route, bodies, content_type))


async def _measure(app, route: str, bodies: list[bytes], content_type: str) -> float:
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                       inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the service did not start: {started}")
    await _request(app, route, bodies[0], content_type)
    times = []
    for body in bodies:
        start = time.perf_counter()
        await _request(app, route, body, content_type)
        times.append(time.perf_counter() - start)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    lifespan.cancel()
    return 1000 * float(np.median(times))


async def _request(app, route: str, body: bytes, content_type: str) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": route, "raw_path": route.encode(), "query_string": b"", "root_path": "", "state": {},
             "server": ("sandbox", 80), "client": ("harness", 1),
             "headers": [(b"host", b"sandbox"), (b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode())]}
    delivered = False

    async def receive():
        nonlocal delivered
        if delivered:  # nothing more to read: the client stays connected
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    sent = []
    await app(scope, receive, _append(sent))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    if status != 200:
        raise RuntimeError(f"HTTP {status} from the app: {b''.join(m.get('body', b'') for m in sent)[:200]!r}")


def _append(sent: list):
    async def send(message):
        sent.append(message)

    return send
