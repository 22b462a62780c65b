"""Deployment artefacts: Kubernetes manifests against the Kubernetes schemas, compose and Dockerfile."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


@pytest.mark.parametrize("name,doc", manifests(), ids=lambda v: v if isinstance(v, str) else v.get("kind", "?"))
def test_k8s_manifest_is_valid(name: str, doc: dict) -> None:
    if (doc["apiVersion"], doc["kind"]) in CRDS:
        spec = doc["spec"]
        assert spec["selector"]["matchLabels"] and spec["endpoints"][0]["path"] == "/metrics"
        return
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_deployment_wiring() -> None:
    docs = {d["kind"]: d for _, d in manifests()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    drain = float(c["args"][c["args"].index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain + 5  # SIGKILL only after the drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    hpa_metric = docs["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert hpa_metric == "alignserve_queue_depth"
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"alignserve", "alignserve-cpu", "prometheus", "grafana", "postgres"} <= set(services)
    assert services["alignserve"]["profiles"] == ["gpu"] and services["alignserve-cpu"]["profiles"] == ["cpu"]
    gpu = services["alignserve"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for mount in services["prometheus"]["volumes"] + services["grafana"]["volumes"]:
        assert (ROOT / mount.split(":")[0]).exists(), mount
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["alignserve:8000"]


def test_dockerfile_targets() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for needle in ("AS cpu", "AS gpu", "USER alignserve", "HEALTHCHECK", "/readyz", "vllm==0.26.0",
                   "torch==2.13.0", "VOLUME"):
        assert needle in text, needle
