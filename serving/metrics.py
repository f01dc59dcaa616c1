"""Prometheus metrics of one production service (a private registry per server, exposed on `/metrics`).

    testbed_requests_total{pilot, model_version, outcome}            counter
    testbed_request_duration_seconds{pilot, model_version, outcome}  histogram (end to end through the proxy)
    testbed_bundle_info{pilot, model_version, submission, bundle_sha256, run_id}   what is served now
    testbed_ready{pilot}                                             1 while the served bundle answers
    testbed_batch_items{pilot, model_version}                        histogram: items per call into the sandbox
    testbed_started_time_seconds{pilot}                              when the server started (unix time)

`outcome` is `ok` (2xx), `client_error` (4xx: a bad request, or a client that left), `error` (the bundle failed
or broke the contract, or kept a client that then left waiting longer than the pilot's p95 latency target) or
`unavailable` (503: nothing ready to serve).
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

__all__ = ["ServingMetrics", "OUTCOMES", "outcome_of", "LATENCY_BUCKETS"]

OUTCOMES = ("ok", "client_error", "error", "unavailable")
LATENCY_BUCKETS = (.005, .01, .025, .05, .075, .1, .15, .2, .25, .3, .4, .5, .75, 1, 1.5, 2.5, 5, 10)
"""Seconds; dense around the pilots' p95 service levels (a few hundred milliseconds)."""


def outcome_of(status: int) -> str:
    if status == 503:
        return "unavailable"
    return "ok" if status < 400 else "client_error" if status < 500 else "error"


class ServingMetrics:
    def __init__(self, pilot: str):
        self.pilot = pilot
        self.registry = CollectorRegistry()
        labels = ["pilot", "model_version", "outcome"]
        self.requests = Counter("testbed_requests", "Requests answered by the production service", labels,
                                registry=self.registry)
        self.latency = Histogram("testbed_request_duration_seconds", "Request latency through the serving proxy",
                                 labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.bundle = Info("testbed_bundle", "The bundle in service (from the MLflow registry)", ["pilot"],
                           registry=self.registry)
        self.ready = Gauge("testbed_ready", "1 while the served bundle answers", ["pilot"], registry=self.registry)
        self.batch = Histogram("testbed_batch_items", "Items per call into the sandbox", ["pilot", "model_version"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        Gauge("testbed_started_time_seconds", "When the server started", ["pilot"],
              registry=self.registry).labels(pilot).set(time.time())
        self.ready.labels(pilot).set(0)

    def observe(self, version: str, status: int, seconds: float, outcome: str | None = None) -> None:
        """Count one answered request (`outcome`: the proxy's own judgement, else the status's)."""
        outcome = outcome or outcome_of(status)
        self.requests.labels(self.pilot, version, outcome).inc()
        self.latency.labels(self.pilot, version, outcome).observe(seconds)

    def serving(self, version: str | None, **info: str) -> None:
        """Record what is served now (None: nothing)."""
        self.bundle.labels(self.pilot).info({"model_version": version or "none", **info})
        self.ready.labels(self.pilot).set(1 if version else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
