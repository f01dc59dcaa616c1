"""The serving proxy in front of a served bundle, with a test double for the bundle's channel: what clients get
and what /metrics counts when the bundle misbehaves. (The real bundle in the real sandbox: test_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import serving.proxy
from evaluation.families import open_family
from serving.batching import Batcher
from serving.metrics import ServingMetrics
from serving.proxy import MAX_WAITING, Proxy
from testbed.config import PROJECT_ROOT
from workflow.catalogue import get_pilot

HORIZON = 24


class FakeChannel:
    """Answers every call with `answer(body, items)` -> (status, body); records the calls."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def post(self, route, body, content_type, deadline, cap=None):
        items = len(json.loads(body)["history"])
        self.calls.append(items)
        status, out = self.answer(body, items)
        if cap is not None and len(out) > cap:
            return 0, None, 0.0, f"oversize: the response passed {cap} bytes"
        return status, out, 0.001, "" if status == 200 else f"HTTP {status}: {out[:300].decode(errors='replace')}"


class FakeServed:
    version, crashed, inflight = "7", False, 0

    def __init__(self, answer):
        self.channel, self.lock = FakeChannel(answer), threading.Lock()
        self.service = type("Alive", (), {"alive": lambda self: True})()


class Front(Proxy):
    """The proxy alone, on the bike pilot's contract, in front of a fake served bundle."""

    def __init__(self, answer, batching: bool):
        self.family = open_family(get_pilot("bike-demand"), PROJECT_ROOT / "data", verify=False)
        self.contract, self.metrics = self.family.contract, ServingMetrics("bike-demand")
        self.pilot, self.model, self.reason, self._waiting = "bike-demand", "testbed-bike-demand", "", 0
        self.served = FakeServed(answer)
        self._batcher = Batcher(lambda body, items: self._call(self.served, body, items), list(self.contract.inputs)
                                ) if batching else None

    ready = True

    def _crashed(self, served) -> None:
        raise AssertionError("the fake bundle never dies")


def request(windows: int = 1) -> dict:
    return {"history": np.ones((windows, 168, 9)).tolist(), "future": np.ones((windows, HORIZON, 8)).tolist()}


def post(front: Front, *requests: dict) -> list[httpx.Response]:
    """Each request (httpx `post` keywords) to the proxy's API in turn, in one event loop."""
    async def main():
        transport = httpx.ASGITransport(app=front.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return [await client.post("/forecast", **r) for r in requests]

    return asyncio.run(main())


def honest(body, items):
    return 200, json.dumps([[5.0] * HORIZON] * items).encode()


def outcomes(front: Front) -> dict[str, float]:
    text = front.metrics.exposition().decode()
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "testbed_requests_total"}


@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("answer, words", [
    (lambda body, items: (400, b'{"error": "your request is wrong (it is not)"}'), "the served bundle failed"),
    (lambda body, items: (200, json.dumps([[5.0] * HORIZON] * (items + 1)).encode()), "broke the contract"),
    (lambda body, items: (200, json.dumps([[float("nan")] * HORIZON] * items).encode()), "NaN"),
    (lambda body, items: (200, json.dumps([[-1.0] * HORIZON] * items).encode()), "negative"),
    (lambda body, items: (200, b"\x93NUMPY" + b"\0" * 100), "not JSON"),
    (lambda body, items: (200, b"[" * 700 + b"]" * 700), "broke the contract"),
    (lambda body, items: (200, b"[" + b"1.0," * 2_000_000 + b"1.0]"), "did not answer (oversize"),
])
def test_a_bad_answer_is_a_502_counted_as_the_bundles_error(answer, words, batching):
    """The proxy checked the request, so whatever the bundle answers that is not a valid answer (its own 4xx, the
    wrong number of items, NaN, a negative forecast, not JSON, nesting that breaks a parser, too many bytes) is a
    502 naming what broke, and /metrics counts it as an `error`: `monitor` sees it."""
    front = Front(answer, batching)
    [got] = post(front, {"json": request()})
    assert got.status_code == 502 and words in got.json()["error"], got.text
    assert outcomes(front) == {"error": 1.0}


@pytest.mark.parametrize("batching", [True, False])
def test_the_clients_own_mistakes_are_4xx_and_never_reach_the_bundle(batching, monkeypatch):
    front = Front(honest, batching)
    monkeypatch.setattr(serving.proxy, "MAX_REQUEST_BYTES", 100_000)
    answered = post(front, {"json": request(2)}, {"json": {"history": [[1]], "future": []}},
                    {"content": b"not json"}, {"json": request(20)})  # the last ~170 kB
    assert [r.status_code for r in answered] == [200, 400, 400, 413]
    front._waiting = MAX_WAITING  # as many requests already wait for the model
    assert [r.status_code for r in post(front, {"json": request()})] == [503]
    assert front.served.channel.calls == [2]
    assert outcomes(front) == {"ok": 1.0, "client_error": 3.0, "unavailable": 1.0}
