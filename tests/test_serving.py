"""The serving proxy in front of a served bundle, with a test double for the bundle's channel: what clients get
and what /metrics counts when the bundle misbehaves. (The real bundle in the real sandbox: test_lifecycle.py.)"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import serving.admission
import serving.proxy
from evaluation.families import open_family
from serving.admission import MAX_WAITING, Admission
from serving.batching import CLOSED, Batcher
from serving.metrics import ServingMetrics
from serving.proxy import Proxy
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
    version, crashed, closing, inflight, answered_at, timed_out = "7", False, False, 0, 0.0, 0

    def __init__(self, answer):
        self.channel, self.lock = FakeChannel(answer), threading.Lock()
        self.service = type("Alive", (), {"alive": lambda self: True})()


class Front(Proxy):
    """The proxy alone, on the bike pilot's contract, in front of a fake served bundle."""

    def __init__(self, answer, batching: bool):
        self.family = open_family(get_pilot("bike-demand"), PROJECT_ROOT / "data", verify=False)
        self.contract, self.metrics = self.family.contract, ServingMetrics("bike-demand")
        self.pilot, self.model, self.reason = "bike-demand", "testbed-bike-demand", ""
        self.admission = Admission()
        self.late_s = get_pilot("bike-demand").service_level.p95_latency_ms / 1000
        self.served = FakeServed(answer)
        self._batcher = Batcher(lambda body, items: self._call(self.served, body, items), list(self.contract.inputs)
                                ) if batching else None

    ready = True

    def _crashed(self, served) -> None:
        raise AssertionError("the fake bundle never dies")


def request(windows: int = 1) -> dict:
    """A valid bike-demand request: 168 steps of 13 history features, 24 of 12 future ones per window."""
    return {"history": np.ones((windows, 168, 13)).tolist(), "future": np.ones((windows, HORIZON, 12)).tolist()}


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
    (lambda body, items: (200, json.dumps([["1.5"] * HORIZON] * items).encode()), "not a numeric array"),
    (lambda body, items: (200, json.dumps([[True] * HORIZON] * items).encode()), "not a numeric array"),
    (lambda body, items: (200, b"[" * 700 + b"]" * 700), "broke the contract"),
    (lambda body, items: (200, b"[" + b"1.0," * 2_000_000 + b"1.0]"), "did not answer (oversize"),
])
def test_a_bad_answer_is_a_502_counted_as_the_bundles_error(answer, words, batching):
    """The proxy checked the request, so whatever the bundle answers that is not a valid answer (its own 4xx, the
    wrong number of items, NaN, a negative forecast, not JSON, strings or booleans for numbers, nesting that
    breaks a parser, too many bytes) is a 502 naming what broke, and /metrics counts it as an `error`."""
    front = Front(answer, batching)
    [got] = post(front, {"json": request()})
    assert got.status_code == 502 and words in got.json()["error"], got.text
    assert outcomes(front) == {"error": 1.0}


@pytest.mark.parametrize("batching", [True, False])
def test_the_clients_own_mistakes_are_4xx_and_never_reach_the_bundle(batching, monkeypatch):
    front = Front(honest, batching)
    monkeypatch.setattr(serving.admission, "MAX_REQUEST_BYTES", 100_000)
    answered = post(front, {"json": request(2)}, {"json": {"history": [[1]], "future": []}},
                    {"content": b"not json"}, {"json": request(20)})  # the last ~170 kB
    assert [r.status_code for r in answered] == [200, 400, 400, 413]
    front.admission.waiting = MAX_WAITING  # as many requests already wait for the model
    assert [r.status_code for r in post(front, {"json": request()})] == [503]
    assert front.served.channel.calls == [2]
    assert outcomes(front) == {"ok": 1.0, "client_error": 3.0, "unavailable": 1.0}


def bentoml_parser(body, items):
    """A bundle whose API parses requests as BentoML's does (`model_validate_json`: pydantic_core's parser)."""
    import pydantic_core

    try:
        pydantic_core.from_json(body)
    except ValueError as exc:
        return 400, json.dumps({"error": str(exc)}).encode()
    return honest(body, items)


VALID = json.dumps(request())


@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("body", [
    b"\xef\xbb\xbf" + VALID.encode(),  # a UTF-8 byte-order mark
    VALID.encode("utf-16"),
    VALID.encode("utf-32"),
    (VALID[:-1] + ', "note": "\\ud800"}').encode(),  # a lone surrogate escape
    (VALID[:-1] + ', "\\udc00": 1}').encode(),
    VALID[:-1].encode() + b', "note": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8
    (VALID[:-1] + ', "deep": ' + "[" * 300 + "]" * 300 + "}").encode(),  # past pydantic_core's nesting limit
], ids=["bom", "utf-16", "utf-32", "surrogate", "surrogate-key", "utf8-surrogate", "deep"])
def test_json_that_bentoml_refuses_is_the_clients_400_not_the_bundles_error(body, batching):
    """Python's `json` takes bodies BentoML's parser refuses with 400; the proxy forwarded them and counted the
    bundle's 400 as its `error` (502), so any client could push the error rate `monitor` shows to 1.0. The
    proxy parses as BentoML does: such a body is the client's 400, never sent, in either mode."""
    front = Front(bentoml_parser, batching)
    [got] = post(front, {"content": body, "headers": {"content-type": "application/json"}})
    assert got.status_code == 400 and "byte-order mark" in got.json()["error"], got.text
    assert front.served.channel.calls == [] and outcomes(front) == {"client_error": 1.0}


def test_a_lone_surrogate_in_a_text_input_is_refused_before_batching():
    """With --batching the proxy merges the parsed inputs and writes them again, escaping a lone surrogate as
    `\\ud800`, which the bundle's BentoML refuses: a text input holding one failed its whole batch."""
    from serving.batching import parse_request

    assert isinstance(parse_request(b'{"texts": ["ok \\ud800"]}', ["texts"]), str)
    assert parse_request(b'{"texts": ["ok \\ud83d\\ude00"]}', ["texts"]) == ({"texts": ["ok \U0001f600"]}, 1)


@pytest.mark.parametrize("inputs, words", [
    ({"history": np.ones((1, 5, 13)).tolist(), "future": np.ones((1, HORIZON, 12)).tolist()}, "shape"),
    ({"history": [["abc"]], "future": [[1]]}, "must be numbers"),
    ({"history": [None], "future": [None]}, "must be numbers"),
    ({"history": [[1, [2]]], "future": [[1]]}, "must be numbers"),  # ragged
    ({**request(), "history": [[[float("nan")] * 13] * 167 + [[None] * 13]]}, "not null"),
])
def test_a_request_the_contract_does_not_take_is_a_400_the_bundle_never_sees(inputs, words):
    """A careless client must not raise the bundle's error rate: the family checks shapes and types first."""
    front = Front(honest, batching=True)
    [got] = post(front, {"content": json.dumps(inputs).encode()})
    assert got.status_code == 400 and words in got.json()["error"]
    assert front.served.channel.calls == [] and outcomes(front) == {"client_error": 1.0}


def test_requests_written_other_ways_are_still_the_contracts():
    """What common clients send is taken: integers of any size for numbers, base64 wrapped across lines."""
    import base64

    front = Front(honest, batching=True)
    huge = request()
    huge["history"][0][0][0] = 10**30
    [got] = post(front, {"content": json.dumps(huge).encode()})
    assert got.status_code == 200
    detection = open_family(get_pilot("cctv-road-users"), PROJECT_ROOT / "data", verify=False)
    frame = (PROJECT_ROOT / "data/coco-street/images").glob("*.jpg").__next__().read_bytes()
    detection.check_request({"images": [base64.encodebytes(frame).decode()]}, 1)  # 76-character lines


def test_a_client_that_leaves_while_it_waits_is_answered_at_once():
    """The wait is cancelled as soon as the client disconnects: 499, its place among MAX_WAITING freed."""
    import time

    front = Front(lambda body, items: (time.sleep(2), honest(body, items))[1], batching=True)
    started = time.monotonic()
    assert leave_after(front, 0.2) == 499
    assert time.monotonic() - started < 1.5 and front.admission.waiting == front.admission.reading == 0


def leave_after(front: Front, seconds: float) -> int:
    """One valid request whose client hangs up `seconds` after sending it; the status the proxy gave it."""
    return asyncio.run(leaving(front, seconds))


async def leaving(front: Front, seconds: float) -> int:
    """`leave_after` in the running event loop."""
    body = json.dumps(request()).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    scope = {"type": "http", "method": "POST", "path": "/forecast", "query_string": b"", "root_path": "",
             "headers": [(b"content-length", str(len(body)).encode())], "scheme": "http", "server": ("127.0.0.1", 1)}
    sent = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(seconds)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await front.app()(scope, receive, send)
    return sent[0]["status"]


@pytest.mark.parametrize("batching", [True, False])
def test_a_client_that_gives_up_on_a_hanging_bundle_counts_as_the_bundles_error(batching):
    """A bundle that hangs must not look healthy on /metrics because its clients time out before the proxy does
    (bentoml.SyncHTTPClient gives up after 30 s, the proxy after REQUEST_TIMEOUT_S): a client that left after
    waiting for the bundle longer than the pilot's p95 latency target was failed by it (`error`); one that left
    sooner is its own impatience (`client_error`, like any 499). Without --batching the call went on in its worker
    thread and its answer was counted `ok`, for a client that had left."""
    import time

    front = Front(lambda body, items: (time.sleep(1), honest(body, items))[1], batching=batching)
    assert front.late_s == 0.25
    assert leave_after(front, 0.6) == 499
    assert outcomes(front) == {"error": 1.0}
    time.sleep(0.5)  # the call into the bundle ends
    assert leave_after(front, 0.05) == 499
    assert outcomes(front) == {"error": 1.0, "client_error": 1.0}
    assert front.admission.waiting == front.admission.reading == 0


def test_a_request_whose_client_left_while_it_waited_for_a_worker_thread_is_never_sent():
    """Without --batching each call runs in one of anyio's worker threads; a request queued for one was sent
    when a thread freed, whether or not its client was still there. It is dropped (499), and counted as the
    batcher counts one dropped from its queue: the bundle's `error` once it kept the client past `late_s`."""
    import time

    import anyio

    front = Front(lambda body, items: (time.sleep(1), honest(body, items))[1], batching=False)

    async def main():
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # all threads busy but one
        staying = asyncio.create_task(leaving(front, 10))
        await asyncio.sleep(0.05)
        return await asyncio.gather(staying, leaving(front, 0.1), leaving(front, 0.5))

    assert asyncio.run(main()) == [200, 499, 499]
    assert front.served.channel.calls == [1]  # the staying client's call alone
    assert outcomes(front) == {"ok": 1.0, "client_error": 1.0, "error": 1.0}
    assert front.admission.waiting == front.admission.reading == 0


def test_clients_slow_to_upload_are_not_counted_against_the_bundle(monkeypatch):
    """Requests whose bodies are still arriving fill the proxy by the clients' doing, not the bundle's: an honest
    client refused for them is not the bundle's failure (before, one client trickling MAX_WAITING bodies made
    every other client's 503 an `unavailable` and `monitor` showed an error rate of 1.0 for a bundle that had
    seen no request). Requests that wait for the bundle are still its own (`unavailable` beyond MAX_WAITING)."""
    monkeypatch.setattr(serving.admission, "MAX_WAITING", 2)
    monkeypatch.setattr(serving.admission, "MAX_READING", 2)
    monkeypatch.setattr(serving.admission, "BODY_TIMEOUT_S", 0.5)
    front = Front(honest, batching=True)
    scope = {"type": "http", "method": "POST", "path": "/forecast", "headers": [(b"content-length", b"100000")],
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 1)}

    async def main():
        async def trickle():
            await asyncio.sleep(1)
            return {"type": "http.request", "body": b"{", "more_body": True}

        async def send(message):
            pass

        slow = [asyncio.create_task(front.app()(scope, trickle, send)) for _ in range(2)]
        await asyncio.sleep(0.1)
        transport = httpx.ASGITransport(app=front.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            got = await client.post("/forecast", json=request())
        await asyncio.gather(*slow)
        return got

    got = asyncio.run(main())
    assert got.status_code == 503 and front.served.channel.calls == []
    assert outcomes(front) == {"client_error": 3.0}  # the two slow uploads (408) and the client refused for them


def test_a_version_taken_out_of_service_mid_call_is_a_503_not_a_crash():
    """A promotion, rollback or rejection stops the old bundle under a running call: that call gets 503 (retry),
    and nothing reports the old version as crashed (Front._crashed would fail the test)."""
    front = Front(lambda body, items: (0, b""), batching=False)
    front.served.closing = True
    [got] = post(front, {"json": request()})
    assert got.status_code == 503 and "taken out of service" in got.json()["error"]


def test_a_client_that_leaves_is_not_the_bundles_error(monkeypatch):
    """A client hanging up mid-upload, or one slower than BODY_TIMEOUT_S, is its own outcome (499, 408)."""
    front = Front(honest, batching=True)
    monkeypatch.setattr(serving.admission, "BODY_TIMEOUT_S", 0.2)
    scope = {"type": "http", "method": "POST", "path": "/forecast", "headers": [(b"content-length", b"100000")],
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 1)}

    def status(receive) -> int:
        sent = []

        async def send(message):
            sent.append(message)

        asyncio.run(front.app()(scope, receive, send))
        return sent[0]["status"]

    async def hang_up():
        return {"type": "http.disconnect"}

    async def trickle():
        await asyncio.sleep(1)
        return {"type": "http.request", "body": b"{", "more_body": True}

    assert status(hang_up) == 499 and status(trickle) == 408
    assert front.served.channel.calls == [] and outcomes(front) == {"client_error": 2.0}


def test_a_short_body_trickled_holds_its_place_for_seconds_not_the_whole_timeout(monkeypatch):
    """A client that declares a short body and sends it a byte at a time (a slow-upload attack on the MAX_READING
    places) gets 408 once the body's length at the least upload rate has passed, not after BODY_TIMEOUT_S; a long
    body keeps up to BODY_TIMEOUT_S. A chunked body (no length) is held to the bytes that have arrived: trickled,
    it is cut off as soon; sent at the least rate or faster, it may take longer than the first deadline."""
    from serving.admission import body_deadline_s

    assert body_deadline_s("1000") < 6 and body_deadline_s(str(64 << 20)) == serving.admission.BODY_TIMEOUT_S
    assert body_deadline_s("") == serving.admission.BODY_GRACE_S and body_deadline_s("", 1000) < 6
    assert body_deadline_s("", 64 << 20) == serving.admission.BODY_TIMEOUT_S
    monkeypatch.setattr(serving.admission, "BODY_GRACE_S", 0.2)
    front = Front(honest, batching=True)

    def sent_by(headers: list, receive) -> tuple[list, float]:
        scope = {"type": "http", "method": "POST", "path": "/forecast", "headers": headers,
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 1)}
        sent = []

        async def send(message):
            sent.append(message)

        began = time.monotonic()
        asyncio.run(front.app()(scope, receive, send))
        return sent, time.monotonic() - began

    async def trickle():
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"{", "more_body": True}

    for headers in ([(b"content-length", b"100")], []):
        sent, took = sent_by(headers, trickle)
        assert sent[0]["status"] == 408 and took < 3
        assert "KiB/s" in json.loads(sent[1]["body"])["error"]

    body = json.dumps(request()).encode()
    monkeypatch.setattr(serving.admission, "MIN_UPLOAD_BYTES_PER_S", len(body) // 2)
    parts = [body[i:i + len(body) // 8] for i in range(0, len(body), len(body) // 8)]

    async def steady():  # the whole body in ~0.5 s: 4× the least rate, but longer than BODY_GRACE_S
        await asyncio.sleep(0.05)
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    sent, took = sent_by([(b"content-type", b"application/json")], steady)
    assert sent[0]["status"] == 200 and took > 0.3 and front.served.channel.calls == [1]


def test_a_failed_batch_is_retried_all_at_once_and_a_departed_client_is_dropped():
    """After a merged call fails, each request goes alone and concurrently: a hanging one no longer delays its
    neighbours' retries. A queued request whose client left (its wait cancelled) is never sent; closing the
    batcher (a new version in service) answers what is still queued with 503."""
    import time

    sent, done = [], []

    def call(body: bytes, items: int):
        history = json.loads(body)["history"]
        sent.append(history)
        if "slow" in history:
            time.sleep(0.3 if items > 1 else 1.0)
            return 502, b'{"error": "hung"}'
        return 200, json.dumps([[h] for h in history]).encode()

    async def main():
        batcher = Batcher(call, ["history", "future"], max_items=64, concurrency=1)

        async def client(name):
            result = await batcher.submit({"history": [name], "future": [0]}, 1)
            done.append(name)
            return result

        first = asyncio.create_task(client("first"))  # occupies the only slot while the others queue
        await asyncio.sleep(0)
        rest = [asyncio.create_task(client(n)) for n in ("slow", "b", "c")]
        away = asyncio.create_task(client("away"))
        await asyncio.sleep(0)
        away.cancel()  # what the proxy does when the client disconnects
        answered = await asyncio.gather(first, *rest)
        busy = asyncio.create_task(client("slow"))  # holds the slot for a second
        await asyncio.sleep(0.1)
        late = asyncio.create_task(client("late"))
        await asyncio.sleep(0)
        batcher.close()
        await busy
        after = await client("after")  # read before the swap, submitted after it: no new dispatcher
        assert after == CLOSED and batcher._task.done()
        return answered, await late

    answered, late = asyncio.run(main())
    assert [status for status, _ in answered] == [200, 502, 200, 200] and late == CLOSED
    assert done.index("b") < done.index("slow") and done.index("c") < done.index("slow")
    assert not any("away" in h for h in sent)


class SandboxDouble:
    """A served bundle's process for `ProductionServer.check`: its observers, its exit status."""

    def __init__(self):
        self.network, self.harness_paths, self.oom_kills, self.stopped, self.status = {}, [], 0, False, None
        self.host_oom_kills = 0
        self.proc = SimpleNamespace(poll=lambda: self.status)

    def evidence(self, live=False):
        from sandbox.observe import Evidence

        assert live  # read while it serves: never the watch of opened files, which reading ends
        return Evidence(network=dict(self.network), harness_paths=list(self.harness_paths), oom_kills=self.oom_kills,
                        host_oom_kills=self.host_oom_kills)

    def channel(self):
        return SimpleNamespace(close=lambda: None)

    def alive(self):
        return not self.stopped and self.status is None

    def stop(self, grace_s=3.0):
        self.stopped = True

    def close(self):
        pass

    def log_tail(self, limit):
        return "Segmentation fault"


def watched_server(ws, **kw):
    """A ProductionServer whose registry (`alias[0]` in service) and sandbox are doubles; `launched` lists the
    versions started."""
    from serving.proxy import Served
    from serving.server import ProductionServer

    def approved(version):
        return SimpleNamespace(version=version, bundle=b"", submission=SimpleNamespace(id=f"bike-demand-{version}"),
                               sha256="ab" * 32, run=SimpleNamespace(run_id="r" * 32), review=None)

    alias, launched, logs = ["1"], [], []
    server = ProductionServer(ws, "bike-demand", poll_s=3600, log=logs.append, **kw)
    server.production = SimpleNamespace(resolve=lambda pilot: approved(alias[0]),
                                        current_version=lambda pilot: alias[0],
                                        book=SimpleNamespace(latest=lambda *a: None), history=lambda pilot: [],
                                        submission_of=lambda pilot, version: f"bike-demand-{version}")
    server.production.review_of = lambda submission: server.production.book.latest(submission, None)
    server._launch = lambda ok: launched.append(ok.version) or Served(ok, SandboxDouble())
    server._swap(server._launch(approved("1")))
    return server, alias, launched, logs


def test_a_served_bundle_caught_trying_what_the_sandbox_forbids_is_stopped_and_never_served_again(ws):
    """Evaluation rejects a bundle that tries the network or the city's files (`sandbox_violation`); one that
    behaves there and tries in production (it can tell them apart) was contained but never reported: the
    watcher reads the same observers while it serves, stops it, says so, and does not start it again."""
    server, alias, launched, logs = watched_server(ws, recheck_s=0, restart_s=0)
    server.check()
    assert server.ready and launched == ["1"]  # nothing seen: served on
    first = server.served.service
    first.network["TcpActiveOpens"] = 1  # the kernel's counters of its network namespace
    server.check()
    assert server.served is None and first.stopped and "tried to reach the network" in server.reason
    assert any("SANDBOX VIOLATION by version 1" in line for line in logs)
    server.check()
    assert server.served is None and launched == ["1"]  # the alias still names it: not started again
    alias[0] = "2"  # an operator rolls back or promotes another version
    server.check()
    assert server.ready and server.served.version == "2" and launched == ["1", "2"]
    server.served.service.harness_paths.append("/srv/testbed/home/submissions")  # the audit hook's report
    server.check()
    assert server.served is None and "harness paths" in server.reason
    alias[0] = "3"
    server.check()
    server.served.service.status = 128 + 31  # killed by the seccomp filter (SIGSYS, through bubblewrap)
    server.check()
    assert server.served is None and "forbidden system call" in server.reason and launched == ["1", "2", "3"]


def test_a_version_rolled_back_while_it_started_is_never_served(ws):
    """The watcher read the alias, started that version (seconds to minutes) and swapped it in whatever had
    happened meanwhile: a rollback, another promotion or the server stopping. It checks again after the start;
    what production no longer names is stopped, never served, and the version in service stays."""
    from serving.proxy import Served

    server, alias, launched, logs = watched_server(ws, recheck_s=0)
    started = []

    def launch_while_rolled_back(ok):
        launched.append(ok.version)
        alias[0] = "1"  # the operator rolls back while version 2 starts
        started.append(Served(ok, SandboxDouble()))
        return started[-1]

    server._launch = launch_while_rolled_back
    alias[0] = "2"
    server.check()
    assert server.served.version == "1" and launched == ["1", "2"] and started[0].service.stopped
    assert any("production moved while it did" in line for line in logs)
    server._stop.set()  # a start that ends after the server was told to stop is not swapped in either
    alias[0] = "3"
    server._launch = lambda ok: launched.append(ok.version) or started.append(Served(ok, SandboxDouble())) or \
        started[-1]
    server.check()
    assert server.served.version == "1" and started[-1].service.stopped


def test_a_version_taken_out_of_service_gets_no_new_call(ws):
    """A request that took hold of the served version before it was replaced (or refused, or withdrawn) and
    reached a worker thread afterwards was still sent to it, and kept its drain busy: once it is closing it
    gets a 503, never the bundle."""
    server, alias, launched, logs = watched_server(ws)
    served = server.served
    sent = []
    served.channel = SimpleNamespace(post=lambda *a, **kw: sent.append(a) or (200, b"[]", 0.0, ""),
                                     close=lambda: None)
    served.closing = True
    status, body = server._call(served, b"{}", 1)
    assert status == 503 and b"taken out of service" in body and not sent and served.inflight == 0


def test_a_registry_that_fails_keeps_the_version_in_service(ws):
    """The tracking store failing (a 503) read as "no production alias", and the watcher withdrew the version in
    service. It raises now: the watcher says it will retry and serves on."""
    import threading

    from mlflow.exceptions import MlflowException

    server, alias, launched, logs = watched_server(ws)

    def down(pilot):
        raise MlflowException("API request failed: 503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE")

    server.production.current_version, server.poll_s = down, 0.01
    watching = threading.Thread(target=server._watch)
    watching.start()
    time.sleep(0.2)
    server._stop.set()
    watching.join(timeout=5)
    assert server.ready and server.served.version == "1" and launched == ["1"]
    assert logs and all("could not check the production alias" in line and "503" in line for line in logs)


def test_a_served_bundle_that_dies_is_started_again_after_restart_s(ws):
    """A bundle that dies (a crash on one input, the memory limit after a leak) was left dead until an operator
    restarted `testbed serve`: one request could take production down for good. The watcher starts the same
    version again once `restart_s` has passed since it died (503 meanwhile)."""
    server, alias, launched, logs = watched_server(ws, restart_s=3600)
    server.served.service.status = 139  # SIGSEGV, through bubblewrap
    server.check()
    assert not server.ready and "exited unexpectedly (killed by SIGSEGV)" in server.reason and launched == ["1"]
    server.check()
    assert not server.ready and launched == ["1"]  # not before restart_s
    server.restart_s = 0
    server.check()
    assert server.ready and server.served.version == "1" and launched == ["1", "1"]
    assert logs[-1] == "started version 1 (bike-demand-1) again after it exited; serving it"
    server.restart_s = 3600
    server.served.service.status, server.served.service.oom_kills = 137, 1  # its memory cgroup's limit, after a leak
    server.check()
    assert not server.ready and "stopped: memory limit reached" in server.reason, server.reason
    server.restart_s = 0
    server.check()
    assert server.ready and launched == ["1", "1", "1"]
    server.restart_s = 3600
    server.served.service.status, server.served.service.host_oom_kills = 137, 1  # the host's OOM killer, not its own
    server.check()
    assert not server.ready and "stopped: the host ran out of memory" in server.reason, server.reason
    assert "not the bundle's doing" in logs[-1]


def test_a_launch_that_fails_midway_leaves_no_sandbox_behind(ws, monkeypatch):
    """The watcher tries a refused launch again every `recheck_s`: a start that fails midway (no uid left to
    lease, a cgroup or bubblewrap error, an archive refused at import) must stop and clean up what it started
    (its process, uid lease, cgroups, private folder), as a start that never gets ready does."""
    import serving.server

    seen = []

    class Failing:
        def __init__(self, *args, **kw):
            pass

        def start(self):
            seen.append("start")
            raise RuntimeError("no sandbox uid is free")

        def stop(self):
            seen.append("stop")

        def close(self):
            seen.append("close")

    server, *_ = watched_server(ws)
    monkeypatch.setattr(serving.server, "SandboxedService", Failing)
    monkeypatch.setattr(serving.server.ProductionServer, "_environment", lambda self, ok: (None, b"{}"))
    with pytest.raises(RuntimeError, match="no sandbox uid"):
        serving.server.ProductionServer._launch(server, server.served.ok)
    assert seen == ["start", "stop", "close"]


def test_a_version_caught_trying_the_forbidden_while_it_starts_is_never_started_again(ws, monkeypatch):
    """Only the version in service was checked for violations: one that tried the network while starting, and
    died, was refused as "did not become ready" and its code run again every `recheck_s`. It is marked as a
    violation, said so, and the watcher never starts it again."""
    import serving.server

    starts = []

    class Violating(SandboxDouble):
        def __init__(self, *args, **kw):
            super().__init__()
            self.stopped_by_us = False

        def start(self):
            starts.append(1)
            self.network["TcpActiveOpens"] = 1  # tried the network, then exited
            self.status = 1

        def wait_ready(self, timeout):
            return None

    server, alias, launched, logs = watched_server(ws, recheck_s=0)
    monkeypatch.setattr(serving.server, "SandboxedService", Violating)
    monkeypatch.setattr(serving.server.ProductionServer, "_environment", lambda self, ok: (None, b"{}"))
    server._launch = lambda ok: serving.server.ProductionServer._launch(server, ok)
    alias[0] = "2"
    server.check()
    assert server.served.version == "1" and starts == [1] and "tried to reach the network" in server._violated["2"]
    assert any("SANDBOX VIOLATION by version 2" in line and "while it started" in line for line in logs)
    server.check()
    server.check()
    assert starts == [1] and server.served.version == "1"  # never run again; version 1 stays in service


def test_a_bundle_that_answers_nothing_for_two_timeouts_is_stopped_and_started_again(ws):
    """A bundle stuck for good (a deadlock, a call that never returns in a bundle answering one call at a time)
    kept /readyz at 200 and failed every request after REQUEST_TIMEOUT_S, forever. Once at least two calls have
    timed out and no call has been answered for twice REQUEST_TIMEOUT_S, the watcher stops it and starts it
    again (`restart_s`); one slow call, or calls answered in between, are not a hang."""
    server, alias, launched, logs = watched_server(ws, restart_s=3600)
    served = server.served
    answers = [(0, None, 60.0, "TimeoutError: timed out")] * 2
    served.channel = SimpleNamespace(post=lambda *a, **kw: answers.pop(0), close=lambda: None)
    body = json.dumps(request()).encode()
    assert server._call(served, body, 1)[0] == 502
    served.answered_at -= 2 * serving.proxy.REQUEST_TIMEOUT_S + 1
    server.check()
    assert server.served is served and server.ready  # one timed-out call: slow, not stuck
    assert server._call(served, body, 1)[0] == 502
    server.check()
    assert not server.ready and served.service.stopped and "answered no call" in server.reason, server.reason
    assert launched == ["1"]
    server.restart_s = 0
    server.check()
    assert server.ready and launched == ["1", "1"] and server.served is not served
    assert logs[-1] == "started version 1 (bike-demand-1) again after it exited; serving it"


def test_the_schema_clients_build_their_calls_from_is_the_approved_bundles_own_declaration():
    """`bentoml.SyncHTTPClient` builds its calls from /schema.json. Forwarded from the running bundle, a bundle
    could, once promoted, tell every client the API is elsewhere (a route the proxy does not serve): all calls
    failed with 404 while /metrics counted nothing and `monitor` showed an error rate of 0. The proxy answers the
    contract's API as the approved bundle's `bento.yaml` declares it (checked at submission, in the bytes
    evaluated), and never asks the bundle."""
    from serving.proxy import served_schema

    declared = {"name": "Svc", "type": "service", "paths": {"/forecast": {"mounted": False}, "/other": {}},
                "routes": [{"name": "forecast", "route": "/forecast", "input": {"properties": {}}, "output": {}},
                           {"name": "other", "route": "/other", "input": {}, "output": {}}]}
    front = Front(honest, batching=True)
    front.served.schema = served_schema({"schema": declared}, front.contract)
    front.served.channel.get = lambda *a, **kw: (200, b'{"routes": [{"name": "forecast", "route": "/elsewhere"}]}',
                                                 0.0, "")

    async def main():
        transport = httpx.ASGITransport(app=front.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
            return await client.get("/schema.json")

    got = asyncio.run(main())
    assert got.status_code == 200
    assert got.json()["routes"] == [declared["routes"][0]]  # the contract's API only: the proxy serves no other


@pytest.mark.parametrize("args, batches", [([], False), (["--batching"], True)])
def test_serving_merges_clients_requests_only_when_the_operator_asks(ws, monkeypatch, args, batches):
    """One merged call carries several clients' items, which a bundle could pass from one client to another:
    `testbed serve` sends each request alone unless `--batching` is given, and so does a ProductionServer."""
    from typer.testing import CliRunner

    from cli.app import app

    server = watched_server(ws, **({"batching": True} if batches else {}))[0]
    assert isinstance(server._batcher, Batcher) is batches
    made = {}

    class Stop(Exception):
        pass

    def capture(*a, **kw):
        made.update(kw)
        raise Stop

    monkeypatch.setattr("serving.server.ProductionServer", capture)
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = CliRunner().invoke(app, ["serve", "bike-demand", "--port", str(port), *args])
    assert isinstance(result.exception, Stop) and made["batching"] is batches, result.output


def test_why_nothing_is_served_writes_a_quoted_notes_terminal_codes_out(ws):
    """/readyz, every 503 and the server's log say why nothing is served, which may quote a rejecting evaluator's
    note: its terminal codes are written out, so a client or operator printing it does not run them."""
    server, alias, _, logs = watched_server(ws)
    server.log("refusing to serve version 1: rejected by kim: 'bad\x1b[2J\x1b]0;owned\x07'")
    assert "\x1b" not in logs[-1] and "\\x1b[2J" in logs[-1]  # the operator's terminal alike
    server._swap(None, "refusing to serve version 1: rejected by kim: 'bad\x1b[2J\x1b]0;owned\x07'")

    async def readyz():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app()), base_url="http://t") as client:
            return await client.get("/readyz")

    answer = asyncio.run(readyz())
    assert answer.status_code == 503 and "\\x1b[2J" in answer.text and "\x1b" not in answer.text, answer.text


@pytest.mark.parametrize("batching", [True, False])
def test_metrics_expose_readiness_and_the_items_of_each_call_into_the_bundle(ws, batching):
    """README (`testbed serve`): /metrics has `testbed_ready` (1 while a version is served, 0 once none is: what
    `monitor` shows as READY or NOT READY) and `testbed_batch_items`, a histogram of the items per call into the
    bundle (`monitor` and `make bench` read its mean batch): one observation per call, summing to the items sent."""
    server, *_ = watched_server(ws, batching=batching)
    server.served.channel = FakeChannel(honest)
    server.served.channel.close = lambda: None
    windows = [1, 2, 3]

    async def main(*windows: int):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app()), base_url="http://p") as client:
            answers = await asyncio.gather(*(client.post("/forecast", json=request(n)) for n in windows))
            return [r.status_code for r in answers], (await client.get("/metrics")).text

    def samples(text: str) -> dict[str, list[tuple[dict, float]]]:
        found: dict[str, list[tuple[dict, float]]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                found.setdefault(s.name, []).append((s.labels, s.value))
        return found

    statuses, text = asyncio.run(main(*windows))
    assert statuses == [200] * len(windows)
    scraped, calls = samples(text), server.served.channel.calls
    assert scraped["testbed_ready"] == [({"pilot": "bike-demand"}, 1.0)]
    version = {"pilot": "bike-demand", "model_version": "1"}
    assert scraped["testbed_batch_items_sum"] == [(version, float(sum(windows)))]
    assert scraped["testbed_batch_items_count"] == [(version, float(len(calls)))]
    assert 1 <= len(calls) <= len(windows) and sum(calls) == sum(windows)
    if not batching:
        assert sorted(calls) == windows  # each request its own call

    server._swap(None, "withdrawn")
    statuses, text = asyncio.run(main(1))
    assert statuses == [503] and samples(text)["testbed_ready"] == [({"pilot": "bike-demand"}, 0.0)]
    assert samples(text)["testbed_batch_items_count"] == [(version, float(len(calls)))]  # nothing sent since


def test_the_version_in_service_stops_once_its_latest_review_no_longer_clears_it_or_cannot_be_read(ws):
    """The watcher stopped the version in service only on a rejection: an approval that no longer clears it (a
    new one without the override of its failed `suspected_lookup` gate, which promotion refuses) kept it served,
    and so did a review trail that cannot be read (cut, or the run's tags a rejection ahead of the trail: every
    read refuses), the watcher logging the error each round. A new review is checked as a promotion checks it;
    what cannot be confirmed is not served, and is served again once it is."""
    from testbed.errors import AuditError, Refused

    server, alias, launched, logs = watched_server(ws, recheck_s=0)
    served = server.served
    review = SimpleNamespace(decision="approve", hash="b" * 64, submission="bike-demand-1", by="lee", at="now")
    checked: list[str] = []

    def refused(submission, version):
        checked.append(version)
        raise Refused(f"{submission} failed hard gates (suspected_lookup): it cannot be served whatever its review")

    server.production.book = SimpleNamespace(latest=lambda *a: review)
    server.production.approved = refused
    server.check()  # approved again, but without the override the gate failed on
    assert checked == ["1"] and server.served is None and not server.ready and served.service.stopped
    assert "failed hard gates (suspected_lookup)" in server.reason and any("suspected_lookup" in line for line in logs)

    def cut(*a):
        raise AuditError("entry 3, which MLflow run r's testbed.review tags recorded, was never written to the trail")

    server.production.book, server.production.approved = SimpleNamespace(latest=cut), lambda s, v: refused(s, v)
    server.production.resolve = lambda pilot: server.production.approved("bike-demand-1", alias[0])
    server.check()
    assert server.served is None and launched == ["1"]  # refused again: still nothing served

    server.production.resolve = lambda pilot: SimpleNamespace(
        version=alias[0], bundle=b"", submission=SimpleNamespace(id="bike-demand-1"), sha256="ab" * 32,
        run=SimpleNamespace(run_id="r" * 32), review=review)
    server.production.book = SimpleNamespace(latest=lambda *a: review)
    server.check()  # the trail mended, the approval clears it: served again, and not checked again each round
    assert server.ready and launched == ["1", "1"]
    checked.clear()
    server.check()
    assert server.ready and checked == [] and launched == ["1", "1"]

    server.production.book = SimpleNamespace(latest=cut)  # the version in service: its trail cannot be read now
    server.check()
    assert server.served is None and not server.ready and "never written to the trail" in server.reason
    assert any("never written to the trail" in line and "stopped serving" in line for line in logs)


def test_a_move_the_production_trail_cannot_confirm_stops_what_was_served_and_starts_nothing(ws):
    """A rollback cut short (the alias and the registry's tag moved, the trail's line never written) or a trail
    cut by hand makes every read of the production trail refuse; the watcher then raised each round before any
    check and served on the version the operator moved away from, even once an evaluator rejected it. Now the
    version moved away from is stopped, nothing is started, and serving resumes once the trail reads again."""
    from workflow.ledger import CutShort

    server, alias, launched, logs = watched_server(ws, recheck_s=0)
    served = server.served

    def cut(pilot):
        raise CutShort("entry 4, which the registered model's testbed.production.0004 tag recorded, was never "
                       "written to the trail")

    server.production.history = cut
    alias[0] = "2"
    server.check()
    assert server.served is None and not server.ready and served.service.stopped and launched == ["1"]
    assert "production trail cannot be read" in server.reason and "never written" in server.reason
    assert sum("production trail cannot be read" in line for line in logs) == 1
    server.check()  # said once
    assert sum("production trail cannot be read" in line for line in logs) == 1 and launched == ["1"]
    server.production.history = lambda pilot: []  # the operator repeated the rollback: the trail reads again
    server.check()
    assert server.ready and server.served.version == "2" and launched == ["1", "2"]


def test_a_version_kept_while_its_successor_cannot_start_still_stops_once_rejected(ws):
    """When the version the alias moved to cannot be started (refused, or not ready in time), the server keeps
    the one it served; but it checked that one's review only while the alias named it, so one rejected as the
    operator rolled away from it (the watcher seeing both in one round) was served on, retried every round. It is
    checked as the version in service is: a rejection stops it, and nothing is served until the successor starts."""
    from testbed.errors import Refused

    server, alias, launched, logs = watched_server(ws, recheck_s=3600)
    served, start = server.served, server._launch

    def not_ready(ok):
        if ok.version == "2":
            raise Refused("version 2 (bike-demand-2) did not become ready within 60 s in the sandbox: no output")
        return start(ok)

    server._launch = not_ready
    alias[0] = "2"
    server.check()  # approved as before: kept while its successor cannot start
    assert server.served is served and server.ready
    assert any("refusing to serve version 2" in line and "still serving version 1" in line for line in logs)
    server.production.book = SimpleNamespace(latest=lambda submission, run: SimpleNamespace(
        decision="reject", submission="bike-demand-1", by="lee", at="now", hash="c" * 64)
        if submission == "bike-demand-1" else None)
    server.check()
    assert server.served is None and not server.ready and served.service.stopped
    assert "rejected" in server.reason and any("was rejected by lee" in line for line in logs)


def test_a_version_refused_on_its_review_is_served_at_the_next_check_once_approved(ws):
    """The alias moved to a version whose review refuses it: the watcher checked it again only when the trail moved
    or after `recheck_s` (30 s), though the README promises an approval is served at the next check. Its
    submission's review is watched as the version in service's is."""
    from testbed.errors import Refused

    server, alias, launched, logs = watched_server(ws, recheck_s=3600)
    reviews = {"bike-demand-2": SimpleNamespace(decision="reject", hash="d" * 64)}
    server.production.book = SimpleNamespace(latest=lambda submission, run: reviews.get(submission))
    resolve = server.production.resolve

    def refusing(pilot):
        if reviews.get(f"bike-demand-{alias[0]}", SimpleNamespace(decision="approve")).decision != "approve":
            raise Refused(f"bike-demand-{alias[0]} was rejected by lee at now: no")
        return resolve(pilot)

    server.production.resolve = refusing
    alias[0] = "2"
    server.check()
    assert server.served.version == "1" and launched == ["1"]  # kept: version 2 refused
    server.check()
    assert launched == ["1"] and sum("refusing to serve version 2" in line for line in logs) == 1
    reviews["bike-demand-2"] = SimpleNamespace(decision="approve", hash="e" * 64)  # an evaluator approves it
    server.check()
    assert server.ready and server.served.version == "2" and launched == ["1", "2"]


def test_a_refusal_stands_when_the_refused_versions_submission_cannot_be_read(ws):
    """Watching the refused version's review is a shortcut: a registry version that cannot be read (deleted, or
    the store failing) leaves the refusal as it was, said once, rechecked after `recheck_s`."""
    from mlflow.exceptions import MlflowException

    from testbed.errors import Refused

    server, alias, launched, logs = watched_server(ws, recheck_s=3600)

    def refused(pilot):
        raise Refused("the production alias names version 2, but the trail's last move put version 1 in production")

    def gone(pilot, version):
        raise MlflowException(f"Model Version (name=testbed-bike-demand, version={version}) not found",
                              error_code="RESOURCE_DOES_NOT_EXIST")

    server.production.resolve, server.production.submission_of, alias[0] = refused, gone, "2"
    server.check()
    server.check()
    assert server.served.version == "1" and launched == ["1"]
    assert sum("refusing to serve version 2" in line for line in logs) == 1


def test_monitor_says_an_address_that_is_no_url_is_not_a_service():
    """httpx refuses a malformed address with InvalidURL, which is no httpx.HTTPError: `scrape` let it through
    as a traceback."""
    from serving.monitor import scrape
    from testbed.errors import NotFound

    with pytest.raises(NotFound, match="Invalid port"):
        scrape("http://127.0.0.1:30OO")


@pytest.mark.parametrize("batching", [True, False])
def test_the_request_bytes_the_proxy_holds_at_once_are_bounded(monkeypatch, batching):
    """MAX_WAITING requests of up to MAX_REQUEST_BYTES each, parsed at up to ~20 times their bytes, could take
    the host's memory: a request whose body would pass MAX_HELD_BYTES beside those in the proxy gets 503 with
    Retry-After, whether its length is declared or found as it arrives; the bytes are counted until each request
    is answered, then freed. Who is counted for it depends on who holds the bytes: requests waiting for a slow
    bundle are its backlog (`unavailable`, as a full MAX_WAITING is; counted as the clients' before, so a bundle
    that kept up with nothing looked healthy), bodies still arriving are the clients' (`client_error`)."""
    import time

    held, largest = serving.admission.MAX_HELD_BYTES, serving.admission.MAX_REQUEST_BYTES
    assert held == 128 << 20 >= largest  # README; the largest request fits
    monkeypatch.setattr(serving.admission, "MAX_HELD_BYTES", 100_000)
    front = Front(lambda body, items: (time.sleep(0.5), honest(body, items))[1], batching)
    body = json.dumps(request(3)).encode()
    assert 30_000 < len(body) < 40_000  # two fit, a third does not
    arrived = asyncio.Event()

    async def chunked(wait_for=None):
        yield body[:20_000]
        await (wait_for.wait() if wait_for else asyncio.sleep(0))
        yield body[20_000:]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=front.app()), base_url="http://p") as client:
            held = [asyncio.create_task(client.post("/forecast", content=body)) for _ in range(2)]
            await asyncio.sleep(0.2)  # both read, waiting for the bundle
            backlog = [await client.post("/forecast", content=body), await client.post("/forecast", content=chunked())]
            answered = await asyncio.gather(*held)
            uploading = [asyncio.create_task(client.post("/forecast", content=chunked(arrived))) for _ in range(4)]
            await asyncio.sleep(0.2)  # four bodies half sent: 80 kB still arriving
            full = await client.post("/forecast", content=body)
            arrived.set()
            return answered, backlog, full, await asyncio.gather(*uploading), await client.post("/forecast",
                                                                                              content=body)

    answered, backlog, full, uploaded, after = asyncio.run(main())
    assert [r.status_code for r in answered] == [200, 200] and after.status_code == 200
    assert [r.status_code for r in backlog] == [503, 503] and full.status_code == 503
    assert all(r.headers["retry-after"] == "1" for r in [*backlog, full])
    assert all("waiting for the model" in r.json()["error"] for r in backlog) and "send fewer" in full.json()["error"]
    # two fit once all arrived; the other two's last chunks found the first two waiting for the bundle: its backlog
    assert sorted(r.status_code for r in uploaded) == [200, 200, 503, 503]
    assert outcomes(front) == {"ok": 5.0, "unavailable": 4.0, "client_error": 1.0} and front.admission.held == 0
    assert front.admission.held_waiting == 0


def test_a_bundle_failure_counts_as_its_error_though_the_client_left():
    """Without --batching a call under way runs to its end. When its client left early (within the p95 target)
    and the bundle's answer broke the contract, the failure is still the bundle's (`error`), as it was before
    disconnects were watched during the call; a valid answer for a client gone early stays the client's 499."""
    import time

    broken = Front(lambda body, items: (time.sleep(0.3), (200, b"[[NaN]]"))[1], batching=False)
    fine = Front(lambda body, items: (time.sleep(0.3), honest(body, items))[1], batching=False)
    broken.late_s = fine.late_s = 1.0
    assert leave_after(broken, 0.1) == 502 and outcomes(broken) == {"error": 1.0}
    assert leave_after(fine, 0.1) == 499 and outcomes(fine) == {"client_error": 1.0}
