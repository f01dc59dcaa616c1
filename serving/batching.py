"""Adaptive batching in the trusted proxy, along the contract's batch axis.

BentoML's own adaptive batching (`@bentoml.api(batchable=True)`) batches a single input argument; the
forecasting contract has two (`history`, `future`), so BentoML refuses to batch it. Every task contract sends
its items along the first axis of each input and returns one output item per input item, so the proxy can
batch any of them: while a call is in the sandbox, arriving requests queue; the next call takes all of them
(up to `max_items` items). Under light load a request goes alone at once (no added wait); under load the
batches grow and the per-call cost is shared. A merged call that fails is retried request by request, all at
once, so one bad request never fails its neighbours (with a bundle that answers one call at a time, those merged
with a request that hangs time out with it: the bundle's failure). A request whose client left while it waited
is dropped. The JSON work (merging, splitting) runs in the calling thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import pydantic_core

__all__ = ["Batcher", "Call", "parse_request", "GONE", "CLOSED"]

Call = Callable[[bytes, int], tuple[int, bytes]]
"""Sends one JSON body holding `items` items to the sandboxed API (in a worker thread); returns (status, body)."""


def parse_request(body: bytes, inputs: list[str]) -> tuple[dict, int] | str:
    """A request's contract inputs and its item count, or what is wrong with it (the proxy's 400): a JSON object
    whose `inputs` are lists of the same, non-zero length (the contract's batch axis). JSON as the served API
    parses it: BentoML's `model_validate_json` (pydantic_core's parser) refuses a byte-order mark, UTF-16 or
    UTF-32, a lone surrogate escape (`"\\ud800"`) and nesting deeper than its limit, all of which Python's
    `json` takes; the proxy forwards such a body, so it must refuse it first, as the client's mistake."""
    try:
        pydantic_core.from_json(body)  # what the bundle's BentoML refuses is the client's mistake, never sent
    except ValueError as exc:
        return (f"the body is not JSON as the API takes it ({str(exc)[:200]}); send UTF-8 JSON without a byte-order "
                "mark or lone surrogate escapes")
    try:
        payload = json.loads(body, parse_int=float)  # numbers as the tensors take them (1e30 or 10**30 alike)
    except (ValueError, RecursionError) as exc:
        return f"the body is not JSON ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(payload, dict) or any(not isinstance(payload.get(k), list) for k in inputs):
        return f"the body must be a JSON object with the list inputs {', '.join(inputs)}"
    sizes = {len(payload[k]) for k in inputs}
    if len(sizes) != 1 or 0 in sizes:
        return f"the inputs {', '.join(inputs)} must hold the same, non-zero number of items"
    return {k: payload[k] for k in inputs}, sizes.pop()


GONE = (499, b'{"error": "the client closed the connection before it was answered"}')
"""What a request whose client left gets (counted as the client's; a queued one is never sent to the bundle)."""
CLOSED = (503, b'{"error": "the version in service changed while the request waited; retry"}')
"""What a request still queued when its batcher is closed (a promotion, rollback or withdrawal) gets."""


@dataclass
class _Job:
    payload: dict
    items: int
    future: asyncio.Future
    """Cancelled when the client leaves (`serving.proxy`): the job is then skipped, never sent."""


class Batcher:
    def __init__(self, call: Call, inputs: list[str], *, max_items: int = 64, concurrency: int = 2):
        self.call, self.inputs, self.max_items = call, list(inputs), max_items
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def submit(self, payload: dict, items: int) -> tuple[int, bytes]:
        """The answer to one request; cancelling the wait drops the request if it is still queued. A closed
        batcher answers `CLOSED` (the request was read while the version in service changed)."""
        if self._closed:
            return CLOSED
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._wake, self._slots = asyncio.Event(), asyncio.Semaphore(self._concurrency)
            self._task = self._loop.create_task(self._dispatch())
        job = _Job(payload, items, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._wake.set()
        return await job.future

    def close(self) -> None:
        """Stop dispatching (from any thread): the queued requests get `CLOSED`; calls already made finish."""
        def stop() -> None:
            self._task.cancel()
            while self._pending:
                job = self._pending.popleft()
                if not job.future.done():
                    job.future.set_result(CLOSED)

        self._closed = True
        if self._task is not None and not self._task.done() and self._loop is not None:
            self._loop.call_soon_threadsafe(stop)

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            batch: list[_Job] = []
            total = 0
            while not batch:
                while not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                while self._pending and (not batch or total + self._pending[0].items <= self.max_items):
                    job = self._pending.popleft()
                    if not job.future.done():  # its client has left: never sent
                        batch.append(job)
                        total += job.items
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[_Job]) -> None:
        try:
            results = await self._send(batch)
            if len(batch) > 1 and any(status != 200 for status, _ in results):
                await asyncio.gather(*(self._alone(job) for job in batch))  # isolate the request at fault
            else:
                for job, result in zip(batch, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every waiting request must get an answer
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        finally:
            self._slots.release()

    async def _alone(self, job: _Job) -> None:
        """`job` sent on its own, beside the others of its failed batch: each answered as soon as it can be."""
        result = (await self._send([job]))[0]
        if not job.future.done():
            job.future.set_result(result)

    async def _send(self, batch: list[_Job]) -> list[tuple[int, bytes]]:
        """One call carrying `batch`, its answer split per job; the JSON work runs in the worker thread too."""
        payloads = [(job.payload, job.items) for job in batch]
        return await anyio.to_thread.run_sync(self._exchange, payloads)

    def _exchange(self, payloads: list[tuple[dict, int]]) -> list[tuple[int, bytes]]:
        merged = {k: [x for payload, _ in payloads for x in payload[k]] for k in self.inputs}
        total = sum(items for _, items in payloads)
        status, body = self.call(json.dumps(merged).encode(), total)
        if status != 200 or len(payloads) == 1:
            return [(status, body)] * len(payloads)
        try:
            out = json.loads(body)
        except (ValueError, RecursionError):  # whatever the bundle sent: never an exception for the waiting clients
            out = None
        if not isinstance(out, list) or len(out) != total:
            error = b'{"error": "the served bundle broke the contract: one output item per input item"}'
            return [(502, error)] * len(payloads)
        results, start = [], 0
        for _, items in payloads:
            results.append((200, json.dumps(out[start:start + items]).encode()))
            start += items
        return results
