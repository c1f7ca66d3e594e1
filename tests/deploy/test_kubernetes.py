"""deploy/kubernetes/ parses, holds what the gateway needs (probes on its endpoints, resources, a non-root
user, an autoscaler on a gateway metric the gateway exports), and its rules ConfigMap is a valid rule file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tiergate.gateway import metrics as m
from tiergate.rules.loader import load_text

ROOT = Path(__file__).resolve().parents[2]
DOCS = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "gateway.yaml").read_text()))


def kind(name: str) -> dict:
    (doc,) = [d for d in DOCS if d["kind"] == name]
    return doc


def test_the_deployment_probes_the_gateway_endpoints_and_bounds_its_resources():
    pod = kind("Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert {"cpu", "memory"} <= set(c["resources"]["limits"]) and {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 20, "longer than the gateway's own shutdown grace"
    assert c["args"][:2] == ["tiergate", "serve"] and "0.0.0.0" in c["args"]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert any(v.get("configMap", {}).get("name") == kind("ConfigMap")["metadata"]["name"] for v in pod["volumes"])
    assert mounts["rules"] == "/work/rules"
    svc = kind("Service")
    assert svc["spec"]["selector"] == kind("Deployment")["spec"]["selector"]["matchLabels"]


def test_the_autoscaler_scales_on_a_metric_the_gateway_exports():
    hpa = kind("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == m.QUEUE_ITEMS._name
    assert hpa["spec"]["scaleTargetRef"]["name"] == kind("Deployment")["metadata"]["name"]


def test_the_rules_config_map_is_a_valid_rule_file():
    src = load_text(kind("ConfigMap")["data"]["rules.yaml"], "configmap/rules.yaml")
    assert src.problems == [] and [r.id for r in src.rules] == ["lottery-win"]


@pytest.mark.skipif(shutil.which("kubeconform") is None, reason="kubeconform is not installed")
def test_kubeconform_accepts_the_manifests():
    r = subprocess.run(["kubeconform", "-strict", "-summary", str(ROOT / "deploy" / "kubernetes")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
