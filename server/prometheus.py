"""Prometheus metrics of the service.

HTTP requests, errors and latency come from Litestar's Prometheus plugin, labelled by route
template (so requests to made-up paths cannot create new series; unrouted paths are not
counted at all). The inference worker's own figures — pairs and requests per round, pairs
waiting — live in a registry of each app (several apps can live in one process, as in tests).
``GET /metrics`` renders both.
"""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics", "http_metrics_config"]

PREFIX = "rerankit"
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def http_metrics_config(app_name: str) -> PrometheusConfig:
    """Request count, latency and 5xx count by method, route template and status."""
    return PrometheusConfig(
        app_name=app_name,
        prefix=PREFIX,
        group_path=True,
        buckets=LATENCY_BUCKETS,
        exclude_unhandled_paths=True,
    )


class ServerMetrics:
    """The inference worker's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.batch_pairs = Histogram(
            f"{PREFIX}_batch_pairs",
            "Pairs scored per worker round",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests merged per worker round",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.queue_pairs = Gauge(
            f"{PREFIX}_queue_pairs", "Pairs waiting for the inference worker", registry=self.registry
        )

    def observe_batch(self, pairs: int, requests: int) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        """The HTTP metrics (process-wide registry) followed by this app's worker metrics."""
        return generate_latest(REGISTRY) + generate_latest(self.registry)
