"""Serving benchmark (part of `make bench`): the forecasting example in production, through `testbed serve`'s
proxy and the sandbox, on loopback.

1. Saturation, without and with adaptive batching: `concurrency` closed-loop clients send single-window
   requests for `saturate_s` seconds; throughput and p50/p99 latency.
2. Steady rate, with batching (`testbed serve --batching`): one request every 1/rate s for `steady_s` seconds
   (open loop: latency counted from the scheduled send time, so a stall is not hidden); errors must be 0.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

__all__ = ["serving_benchmark", "serving_markdown"]


def _stats(latencies: list[float], errors: int, wall: float) -> dict:
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {"requests": len(latencies) + errors, "errors": errors, "wall_s": wall,
            "throughput_rps": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def _saturate(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    latencies, errors, lock, stop = [], [0], threading.Lock(), time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                ok = c.post("/forecast", content=bodies[i % len(bodies)],
                            headers={"content-type": "application/json"}).status_code == 200
                with lock:
                    latencies.append(time.perf_counter() - t0) if ok else errors.__setitem__(0, errors[0] + 1)
                i += concurrency

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _stats(latencies, errors[0], time.perf_counter() - started) | {"concurrency": concurrency}


def _steady(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict:
    latencies, errors, lock = [], [0], threading.Lock()
    local = threading.local()

    def send(i: int, due: float) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=30)
        try:
            ok = local.client.post("/forecast", content=bodies[i % len(bodies)],
                                   headers={"content-type": "application/json"}).status_code == 200
        except httpx.HTTPError:
            ok = False
        with lock:
            latencies.append(time.perf_counter() - due) if ok else errors.__setitem__(0, errors[0] + 1)

    n, start = int(rate * seconds), time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(n):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(send, i, due)
    wall = time.perf_counter() - start
    return _stats(latencies, errors[0], wall) | {"target_rps": rate, "duration_s": seconds}


def serving_benchmark(ws, spec, submission: str, *, rate: float = 50, steady_s: float = 60,
                      saturate_s: float = 15, concurrency: int = 16) -> dict:
    """Approve and promote `submission` (already evaluated), then measure it served; returns the figures."""
    from evaluation.families import open_family
    from evaluation.tracking import MlflowTracker
    from serving.server import ProductionServer, running
    from workflow.promote import Production
    from workflow.review import ReviewBook

    ReviewBook(ws).record(MlflowTracker(ws), submission, "approve", by="bench", note="serving benchmark",
                          rubric=[{"goal": i, "score": 3, "justification": "bench"}
                                  for i in range(1, len(spec.policy_goals) + 1)])
    Production(ws).promote(submission, by="bench")
    from evaluation.families.forecasting.contract import encode_request

    fam = open_family(spec, ws.data_dir)
    data = fam.load("test")  # production serving speaks the contract's JSON, one window per request
    bodies = [encode_request(data.history[i:i + 1], data.future[i:i + 1], binary=False) for i in range(60)]
    assert all(len(json.loads(b)["history"]) == 1 for b in bodies[:3])
    o = fam.options
    out = {"pilot": spec.id, "submission": submission,
           "request": f"one window ({o.history} steps of history, {o.horizon} ahead)"}
    for batching in (False, True):
        server = ProductionServer(ws, spec.id, poll_s=3600, batching=batching, log=lambda line: None)
        with running(server) as url:
            _saturate(url, bodies, concurrency, 3)  # warm-up
            key = "batching" if batching else "no_batching"
            out[f"saturation_{key}"] = _saturate(url, bodies, concurrency, saturate_s)
            if batching:
                out["steady_batching"] = _steady(url, bodies, rate, steady_s)
                scraped = httpx.get(url + "/metrics").text
                out["batch_items_mean"] = _mean_batch(scraped)
        print(json.dumps({key: out[f"saturation_{key}"]}), flush=True)
    out["batching_speedup"] = (out["saturation_batching"]["throughput_rps"]
                               / max(1e-9, out["saturation_no_batching"]["throughput_rps"]))
    return out


def _mean_batch(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    sums = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("testbed_batch_items_")}
    return sums.get("testbed_batch_items_sum", 0) / max(1, sums.get("testbed_batch_items_count", 0))


def serving_markdown(r: dict) -> list[str]:
    s, b, n = r["steady_batching"], r["saturation_batching"], r["saturation_no_batching"]
    return [
        "", "## Serving (testbed serve: proxy → sandbox, loopback)", "",
        f"Pilot `{r['pilot']}`, production bundle `{r['submission']}`, each request {r['request']}.", "",
        "| measurement | rate (req/s) | p50 (ms) | p99 (ms) | requests | errors |", "|---|---|---|---|---|---|",
        f"| steady rate {s['target_rps']:g} req/s for {s['duration_s']:g} s, batching on | {s['throughput_rps']:.1f} | "
        f"{s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['requests']} | {s['errors']} |",
        f"| saturation, {n['concurrency']} clients, no batching | {n['throughput_rps']:.1f} | {n['p50_ms']:.1f} | "
        f"{n['p99_ms']:.1f} | {n['requests']} | {n['errors']} |",
        f"| saturation, {b['concurrency']} clients, adaptive batching | {b['throughput_rps']:.1f} | "
        f"{b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['requests']} | {b['errors']} |", "",
        f"Adaptive batching: {r['batching_speedup']:.2f}× the throughput (mean {r['batch_items_mean']:.1f} windows "
        "per call into the sandbox under saturation and the steady run).",
    ]
