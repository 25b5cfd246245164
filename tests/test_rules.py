"""Alert and recording rules: promtool, unit-test coverage per alert, runbook, one source of truth."""

import re
import subprocess
from pathlib import Path

import yaml

from scripts.generate import drifted
from scripts.rules import anchor, load_spec
from tests.tools import require

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULE_FILES = [PROM / "alerts.yaml", PROM / "recording.yaml"]


def test_generated_copies_match_their_sources():
    assert drifted() == [], "run: python scripts/generate.py"


def test_promtool_check_rules():
    result = subprocess.run([require("promtool"), "check", "rules", *map(str, RULE_FILES)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2


def test_promtool_unit_tests_pass():
    result = subprocess.run([require("promtool"), "test", "rules", str(PROM / "tests" / "alerts_test.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    tests = yaml.safe_load((PROM / "tests" / "alerts_test.yaml").read_text())["tests"]
    fires, quiet = set(), set()
    for group in tests:
        for case in group["alert_rule_test"]:
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {a["alert"] for a in load_spec()["alerts"]}
    assert names - fires == set() and names - quiet == set()


def test_alerts_carry_severity_summary_description_runbook_and_prefix():
    rules = yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    sections = {anchor(h) for h in re.findall(r"^## (\w+)$", runbook, re.M)}
    for rule in rules:
        assert re.fullmatch(r"LlamaCloud[A-Z][A-Za-z]+", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("/docs/runbook.md#" + anchor(rule["alert"])) and anchor(rule["alert"]) in sections


def test_recording_rules_cover_every_window():
    records = {r["record"] for r in yaml.safe_load((PROM / "recording.yaml").read_text())["groups"][0]["rules"]}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d"):
        for kind in ("runs", "run_errors", "run_error_ratio"):
            assert f"job:llamacloud_chat_{kind}:rate{window}" in records


def test_session_alert_keeps_session_id():
    rule = next(r for r in yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"][0]["rules"]
                if r["alert"] == "LlamaCloudChatSessionLastRunFailed")
    assert "session_id" in rule["expr"]


def test_compose_configs_are_valid():
    compose = ROOT / "deploy" / "compose"
    result = subprocess.run([require("promtool"), "check", "config", str(compose / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    amtool = subprocess.run([require("amtool"), "check-config", str(compose / "alertmanager" / "alertmanager.yml")],
                            capture_output=True, text=True)
    assert amtool.returncode == 0, amtool.stdout + amtool.stderr
    stack = yaml.safe_load((compose / "docker-compose.yml").read_text())
    assert set(stack["services"]) == {"collector", "prometheus", "alertmanager", "grafana"}
    for service in stack["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (compose / source).exists(), f"compose mounts a missing path: {source}"
    for path in (compose / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1
    datasource = yaml.safe_load((compose / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
