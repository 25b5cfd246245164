"""Validate Kubernetes objects: core kinds with kubernetes-validate, Prometheus Operator kinds with
the vendored JSON schemas (tests/schemas, copied unchanged from shared/schemas)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = Path(__file__).parent / "schemas" / "monitoring.coreos.com"
KUBE_VERSIONS = ("1.28.0", "1.33.0")
CRDS = {
    "ServiceMonitor": "servicemonitor_v1.json",
    "PodMonitor": "podmonitor_v1.json",
    "PrometheusRule": "prometheusrule_v1.json",
}


@cache
def crd_schema(kind: str) -> dict:
    return json.loads((SCHEMAS / CRDS[kind]).read_text())


def documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def validate(obj: dict) -> None:
    if obj["apiVersion"].startswith("monitoring.coreos.com/"):
        # The schemas carry Go regexes such as '^(?i)(abort|warn)?$' that Python cannot compile, so the
        # schema itself is not meta-validated; every field present in obj is still checked.
        schema = crd_schema(obj["kind"])
        jsonschema.validators.validator_for(schema)(schema).validate(obj)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def validate_all(objects: list[dict]) -> int:
    for obj in objects:
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: {exc}") from None
    return len(objects)
