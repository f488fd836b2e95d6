"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["ServerMetrics", "CONTENT_TYPE_LATEST"]


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rerankit_requests", "HTTP requests by route and status",
                                ["path", "status"], registry=self.registry)
        self.errors = Counter("rerankit_errors", "HTTP answers with status >= 400",
                              ["path", "status"], registry=self.registry)
        self.latency = Histogram("rerankit_request_seconds", "Request latency", ["path"],
                                 registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_pairs = Histogram("rerankit_batch_pairs", "Pairs scored per worker round",
                                     registry=self.registry,
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_requests = Histogram("rerankit_batch_requests", "Requests merged per worker round",
                                        registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_pairs = Gauge("rerankit_queue_pairs", "Pairs waiting for the inference worker",
                                 registry=self.registry)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_batch(self, pairs: int, requests: int) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        return generate_latest(self.registry)
