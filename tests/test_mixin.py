"""The monitoring mixin (``mixin/``, issue 29): jsonnet evaluates it to the very rules and dashboards the plain
files hold, and its ``_config`` moves an alert as the chart's values do."""

from __future__ import annotations

import json
import subprocess

import _jsonnet  # jsonnet from PyPI, a test dependency
import pytest

from scripts.dashboards import DASHBOARDS
from scripts.rules import ROOT, alert_rules, dump, load_spec, recording_rules
from tests.tools import require

pytestmark = pytest.mark.tier("unit")

MIXIN = ROOT / "mixin" / "mixin.libsonnet"


def evaluate(snippet: str) -> dict:
    return json.loads(_jsonnet.evaluate_snippet("test", snippet, jpathdir=[str(ROOT)]))


def test_the_mixin_evaluates_to_the_plain_rule_files_and_dashboards():
    out = evaluate(
        "local m = import 'mixin/mixin.libsonnet'; {a: m.prometheusAlerts, r: m.prometheusRules, d: m.grafanaDashboards}"
    )
    spec = load_spec()
    assert out["a"] == alert_rules(spec)
    assert out["r"] == recording_rules(spec)
    assert out["d"] == {name: build() for name, build in DASHBOARDS.items()}


@pytest.mark.parametrize(
    "alert,param,value",
    [("LlamaCloudChatErrorRatioHigh", "min_runs", 25), ("LlamaCloudChatRunawayAgents", "turns", 16)],
)
def test_a_config_override_moves_an_alert_as_the_rule_files_params_do(alert, param, value):
    if alert not in {a["alert"] for a in load_spec()["alerts"]}:
        pytest.skip(f"{alert} is not in this spec")
    override = f"{{_config+:: {{alerts+: {{{alert}+: {{{param}: '{value}'}}}}, objective: '0.995'}}}}"
    out = evaluate(f"((import 'mixin/mixin.libsonnet') + {override}).prometheusAlerts")
    spec = {**load_spec(), "objective": 0.995}
    assert out == alert_rules(spec, params={alert: {param: value}})


@pytest.mark.tier("tools")
def test_promtool_accepts_what_the_mixin_gives(tmp_path):
    promtool = require("promtool")
    out = evaluate("local m = import 'mixin/mixin.libsonnet'; {groups: m.prometheusRules.groups + m.prometheusAlerts.groups}")
    path = tmp_path / "mixin-rules.yaml"
    path.write_text(dump(out))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
