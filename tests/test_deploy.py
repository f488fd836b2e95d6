"""deploy/kubernetes.yaml: a Deployment the server's own routes and options agree with."""

from pathlib import Path

import pytest
import yaml

from rerankit.cli import serve

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


@pytest.mark.smoke
def test_probes_hit_the_servers_health_and_liveness_routes(manifest):
    from rerankit.server import ServerSettings, create_app

    paths = {route.path for route in create_app(ServerSettings(model="unused")).routes}
    container = manifest["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health" and "/health" in paths
    assert container["livenessProbe"]["httpGet"]["path"] in paths


@pytest.mark.smoke
def test_the_container_command_is_a_valid_serve_command_on_the_probed_port(manifest):
    container = manifest["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["rerankit", "serve"]
    params = serve.make_context("serve", command[2:]).params
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert params["port"] == port[container["readinessProbe"]["httpGet"]["port"]]
    assert params["host"] == "0.0.0.0"  # reachable from the Service, not loopback only


@pytest.mark.smoke
def test_service_and_autoscaler_point_at_the_deployment(manifest):
    deployment, service, hpa = (
        manifest["Deployment"],
        manifest["Service"],
        manifest["HorizontalPodAutoscaler"],
    )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
