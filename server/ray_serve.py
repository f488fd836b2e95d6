"""The HTTP API on Ray Serve: replicas of the same Litestar app behind Ray's proxy.

    rerankit serve --model outputs/run1 --engine ray --replicas 2
    rerankit serve --model outputs/run1 --engine ray --min-replicas 1 --max-replicas 8

Each replica is a Ray actor that loads the model once and serves ``create_app(settings)`` —
the Cohere v1/v2 and TEI routes, the limits and the API key, unchanged — through
``serve.ingress``; Ray's HTTP proxy spreads requests over the replicas and, with autoscaling,
adds or removes replicas by the requests each one has in flight. Every response names the
replica that answered in its ``x-rerankit-replica`` header. Ray's own proxy runs the HTTP
connections, so ``request_read_timeout_s`` and ``max_connections`` (rerankit's uvicorn
settings) do not apply there: put the limits on connections in front of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rerankit.errors import ConfigError, RerankitError, require, short_reason
from rerankit.server.settings import ServerSettings

REPLICA_HEADER = "x-rerankit-replica"
APP_NAME = "rerankit"


@dataclass(frozen=True)
class ReplicaOptions:
    """Fixed ``replicas``, or autoscaling between ``min_replicas`` and ``max_replicas`` aiming at
    ``target_ongoing_requests`` requests in flight per replica. ``gpus_per_replica`` None: one
    when the cluster has GPUs."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None

    def __post_init__(self) -> None:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("autoscaling needs both min_replicas and max_replicas")
        if self.autoscaling and not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                f"expected 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        if self.autoscaling and self.replicas != 1:
            raise ConfigError("give a fixed number of replicas or an autoscaling range, not both")
        if self.replicas < 1 or self.max_replicas == 0:
            raise ConfigError("at least one replica is needed")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    def deployment_options(self, cluster_gpus: float) -> dict:
        """Keyword arguments of ``serve.deployment(...).options``."""
        gpus = self.gpus_per_replica if self.gpus_per_replica is not None else (1.0 if cluster_gpus else 0.0)
        options: dict = {"ray_actor_options": {"num_cpus": self.cpus_per_replica, "num_gpus": gpus}}
        if self.autoscaling:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


def with_replica_header(app, replica: str):
    """``app`` (ASGI) with every HTTP response naming ``replica`` in ``x-rerankit-replica``."""
    header = (REPLICA_HEADER.encode(), replica.encode())

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        return await app(scope, receive, send_named)

    return wrapped


def build_application(settings: ServerSettings, options: ReplicaOptions, cluster_gpus: float = 0.0):
    """The Ray Serve application: ``options``' replicas of the app for ``settings``."""
    serve = require("ray.serve", "ray")

    @serve.ingress()
    class RerankitReplica:
        def __init__(self, settings: ServerSettings) -> None:
            from rerankit.server.app import load_reranker

            # Loaded (and checked to score) before the replica takes traffic.
            self.settings, self.reranker = settings, load_reranker(settings)

        def __serve_build_asgi_app__(self):
            from rerankit.server.app import create_app

            replica = serve.get_replica_context().replica_id.unique_id
            return with_replica_header(create_app(self.settings, reranker=self.reranker), replica)

    deployment = serve.deployment(name=APP_NAME)(RerankitReplica)
    return deployment.options(**options.deployment_options(cluster_gpus)).bind(settings)


def run_on_ray(
    settings: ServerSettings,
    options: ReplicaOptions,
    host: str,
    port: int,
    *,
    address: str | None = None,
    blocking: bool = True,
):
    """Deploy on the Ray at ``address`` (default: start a local one) with Ray's HTTP proxy on
    ``host:port``; with ``blocking``, serve until interrupted. Returns the deployment handle."""
    ray = require("ray", "ray")
    serve = require("ray.serve", "ray")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    app = build_application(settings, options, ray.cluster_resources().get("GPU", 0))
    try:
        handle = serve.run(app, name=APP_NAME, route_prefix="/")
    except Exception as exc:  # a replica that cannot load the model fails the deployment
        raise RerankitError(f"the Ray Serve deployment failed: {short_reason(exc)}") from exc
    if not blocking:
        return handle
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return handle
