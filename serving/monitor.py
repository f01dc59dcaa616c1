"""`testbed monitor`: the live service against the pilot's service level, from its Prometheus `/metrics`
(parsed with `prometheus_client.parser`). Two scrapes `window_s` apart give rates over that window; one scrape
gives averages since the server started. The result also becomes the "In service" block of the production
version's scorecard page (`workflow.pages.refresh_scorecard`)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from evaluation.tracking import registered_model_name
from pilots.spec import PilotSpec
from testbed.errors import NotFound

__all__ = ["scrape", "Scrape", "summarize", "quantile"]


class Scrape:
    """One reading of `/metrics`: samples by name and labels."""

    def __init__(self, text: str, at: float):
        self.at = at
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[s.name].append((s.labels, s.value))

    def total(self, name: str, **match: str) -> float:
        return sum(v for labels, v in self.samples.get(name, []) if all(labels.get(k) == m for k, m in match.items()))

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        out: dict[float, float] = defaultdict(float)
        for labels, v in self.samples.get(f"{name}_bucket", []):
            if all(labels.get(k) == m for k, m in match.items()):
                out[float(labels["le"])] += v
        return dict(out)

    def info(self, name: str) -> dict[str, str]:
        found = self.samples.get(f"{name}_info") or [({}, 0)]
        return found[0][0]


def scrape(url: str, pilot: str | None = None) -> Scrape:
    """One reading of the testbed service at `url`; with `pilot`, refused unless that pilot is what it serves."""
    fix = "start the service with `testbed serve PILOT` (or give its address with --url)"
    try:
        r = httpx.get(url.rstrip("/") + "/metrics", timeout=10)
        r.raise_for_status()
        reading = Scrape(r.text, time.time())
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is no HTTPError
        raise NotFound(f"no metrics at {url}/metrics ({exc})", where=url, fix=fix) from None
    except ValueError:
        raise NotFound(f"{url}/metrics is not Prometheus metrics", where=url, fix=fix) from None
    served = next((labels.get("pilot") for labels, _ in reading.samples.get("testbed_ready", [])), None)
    if served is None:
        raise NotFound(f"{url} is not a testbed service (no testbed_* metrics)", where=url, fix=fix)
    if pilot is not None and served != pilot:
        raise NotFound(f"the service at {url} serves pilot {served}, not {pilot}", where=url,
                       fix=f"`testbed monitor {served} --url {url}`, or give the address of {pilot}'s service")
    return reading


def quantile(buckets: dict[float, float], q: float) -> float:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (NaN when empty)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return math.nan
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * ((rank - below) / max(count - below, 1e-12))
        lower, below = bound, count
    return lower


def summarize(spec: PilotSpec, now: Scrape, before: Scrape | None = None) -> dict:
    """Latency, throughput and error rate of the version in service, against `spec.service_level`. Requests the
    proxy refused as the client's mistakes (4xx) are counted apart (`client_errors`), never in the error rate:
    a client cannot dilute the bundle's failures with bad requests. When the server restarted between `before`
    and `now`, the figures are since its start, as with one reading (differences would go negative)."""
    info = now.info("testbed_bundle")
    version = info.get("model_version", "none")
    if before is not None and before.total("testbed_started_time_seconds") != now.total("testbed_started_time_seconds"):
        before = None  # the server restarted between the readings: its counters began again (since-start figures)
    match = {"model_version": version}

    def delta(fn, *args, **kw):
        value = fn(now, *args, **kw)
        return value if before is None else value - fn(before, *args, **kw)

    started = now.total("testbed_started_time_seconds")
    window = (now.at - before.at) if before else max(1e-9, now.at - started)
    requests = delta(Scrape.total, "testbed_requests_total", **match)
    refused = delta(Scrape.total, "testbed_requests_total", outcome="client_error", **match)
    served = requests - refused  # a client's refused request is no measure of the bundle: not in the error rate
    failed = sum(delta(Scrape.total, "testbed_requests_total", outcome=o, **match) for o in ("error", "unavailable"))
    ok_buckets = now.buckets("testbed_request_duration_seconds", outcome="ok", **match)
    if before:
        earlier = before.buckets("testbed_request_duration_seconds", outcome="ok", **match)
        ok_buckets = {b: v - earlier.get(b, 0) for b, v in ok_buckets.items()}
    items = delta(Scrape.total, "testbed_batch_items_sum", **match)
    calls = delta(Scrape.total, "testbed_batch_items_count", **match)
    p50, p95, p99 = (1000 * quantile(ok_buckets, q) for q in (.5, .95, .99))
    error_rate = failed / served if served else math.nan
    sl = spec.service_level
    rows = [
        {"measure": "latency p50", "value": p50, "unit": "ms", "target": None, "met": None},
        {"measure": "latency p95", "value": p95, "unit": "ms", "target": sl.p95_latency_ms,
         "met": None if math.isnan(p95) else p95 <= sl.p95_latency_ms},
        {"measure": "latency p99", "value": p99, "unit": "ms", "target": None, "met": None},
        {"measure": "throughput (observed load)", "value": served / window, "unit": "requests/s", "target": None,
         "met": None},
        {"measure": "items served (observed load)", "value": items / window, "unit": "items/s",
         "target": sl.min_throughput, "met": None},
        {"measure": "error rate", "value": error_rate, "unit": "", "target": sl.max_error_rate,
         "met": None if math.isnan(error_rate) else error_rate <= sl.max_error_rate},
    ]
    return {"pilot": spec.id, "model": registered_model_name(spec.id), "version": version,
            "submission": info.get("submission"), "bundle_sha256": info.get("bundle_sha256", ""),
            "ready": now.total("testbed_ready") == 1, "window_s": window, "requests": int(served),
            "client_errors": int(refused), "errors": int(failed), "calls_into_sandbox": int(calls), "rows": rows,
            "observed_at": datetime.fromtimestamp(now.at, UTC).isoformat(timespec="seconds")}
