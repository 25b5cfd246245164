"""The kustomize base and the example overlay render with kubectl kustomize and validate."""

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s import documents, validate_all
from tests.tools import require

pytestmark = pytest.mark.tier("tools", "process")

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"


def build(path: Path) -> list[dict]:
    result = subprocess.run([require("kubectl"), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


@pytest.mark.parametrize("target", ["base", "overlays/example"])
def test_renders_and_validates(target):
    objects = build(KUBE / target)
    assert validate_all(objects) == 7
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor"]
    deploy = next(o for o in objects if o["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    config = next(o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o["data"])
    assert pod["volumes"][0]["configMap"]["name"] == config["metadata"]["name"]  # the hashed name is wired in
    dashboards = next(o for o in objects if o["kind"] == "ConfigMap" and o is not config)
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1" and len(dashboards["data"]) == 3
    service = next(o for o in objects if o["kind"] == "Service")
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())


def test_overlay_sets_namespace_labels_and_config():
    objects = build(KUBE / "overlays" / "example")
    assert {o["metadata"].get("namespace") for o in objects} == {"monitoring"}
    for kind in ("ServiceMonitor", "PrometheusRule"):
        obj = next(o for o in objects if o["kind"] == kind)
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    config = next(o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o["data"])
    assert yaml.safe_load(config["data"]["config.yaml"])["project_id"] == "my-project-id"
