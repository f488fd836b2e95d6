"""Prometheus metrics of the service.

HTTP requests, errors and latency come from Litestar's Prometheus plugin, labelled by route
template (so requests to made-up paths cannot create new series; unrouted paths are not
counted at all). The inference workers' own figures — pairs and requests per round, pairs
waiting, requests scored, reloads, readiness — are labelled by the served model's name, and only
by the names the server was started with (a request naming another is refused before any
metric sees it), so their series stay bounded. They live in a registry of each app (several
apps can live in one process, as in tests). ``GET /metrics`` renders both.
"""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusConfig
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
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
    """The inference workers' metrics by served model, in a registry of their own."""

    def __init__(self, model_names: list[str]) -> None:
        self.registry = CollectorRegistry()
        by_model = dict(labelnames=["model"], registry=self.registry)
        self.batch_pairs = Histogram(
            f"{PREFIX}_batch_pairs",
            "Pairs of the model scored per worker round (its own, in a round shared with others)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            **by_model,
        )
        self.batch_requests = Histogram(
            f"{PREFIX}_batch_requests",
            "Requests of the model merged per worker round",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            **by_model,
        )
        self.queue_pairs = Gauge(
            f"{PREFIX}_queue_pairs", "Pairs waiting for the inference worker", **by_model
        )
        self.scored = Counter(f"{PREFIX}_model_requests", "Requests answered with scores", **by_model)
        self.ready = Gauge(f"{PREFIX}_model_ready", "1 when the model is loaded and warmed", **by_model)
        self.reloads = Counter(
            f"{PREFIX}_model_reloads",
            "Reloads by outcome (ok: swapped in; failed: the old model kept serving)",
            labelnames=["model", "outcome"],
            registry=self.registry,
        )
        for name in model_names:  # every series exists from the start, at zero
            for metric in (self.batch_pairs, self.batch_requests, self.queue_pairs, self.scored, self.ready):
                metric.labels(model=name)
            for outcome in ("ok", "failed"):
                self.reloads.labels(model=name, outcome=outcome)

    def batch_observer(self, model: str):
        """The worker's per-round callback for ``model``."""
        pairs, requests = self.batch_pairs.labels(model=model), self.batch_requests.labels(model=model)

        def observe(pair_count: int, request_count: int) -> None:
            pairs.observe(pair_count)
            requests.observe(request_count)

        return observe

    def render(self) -> bytes:
        """The HTTP metrics (process-wide registry) followed by this app's worker metrics."""
        return generate_latest(REGISTRY) + generate_latest(self.registry)
