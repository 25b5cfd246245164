"""The chart's ``config`` is the settings: every setting is a chart value or left out with a reason
(``scripts/chart_config.py`` ``LEFT_OUT``), every chart value is a setting, and the values, their schema, the
chart README's table and the ConfigMap are generated from the declarations. Helm renders it for real in
``tests/test_one_declaration.py`` (tier ``tools``); this checks the same both ways without Helm."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from collector.settings import Settings
from scripts import chart_config
from scripts.chart_config import CHART, LEFT_OUT, camel, snake
from tests.settings_values import non_default

pytestmark = pytest.mark.tier("unit")

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "helm" / "llamacloud-collector"


def values() -> dict[str, Any]:
    return yaml.safe_load((DIR / "values.yaml").read_text())


def validate(chart_values: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(json.loads((DIR / "values.schema.json").read_text())).validate(chart_values)


def written(config: dict[str, Any]) -> dict[str, Any]:
    """What ``templates/configmap.yaml`` writes of ``config``: every non-empty value, under its setting's name."""
    return {snake(k): v for k, v in config.items() if v not in ("", [], {}, None)} | {"log_format": "json"}


def test_every_setting_is_a_chart_value_or_left_out_with_its_reason():
    assert set(CHART) | set(LEFT_OUT) == set(Settings.model_fields)
    assert [n for n in LEFT_OUT if n not in Settings.model_fields] == [], "LEFT_OUT names no such setting"
    assert [n for n in LEFT_OUT if n in CHART] == []
    assert all(reason.strip() for reason in LEFT_OUT.values())
    assert all(snake(camel(n)) == n for n in Settings.model_fields)  # the ConfigMap's snakecase finds each one


def test_the_chart_values_are_the_settings_both_ways():
    config = values()["config"]
    keys, expected = set(config), {camel(n) for n in CHART}
    assert sorted(keys - expected) == [], "chart values that are no setting (or a setting left out of the chart)"
    assert sorted(expected - keys) == [], "settings with no chart value: run python scripts/generate.py"
    schema = json.loads((DIR / "values.schema.json").read_text())["properties"]["config"]
    assert set(schema["properties"]) == expected and schema["additionalProperties"] is False


def test_the_chart_defaults_are_the_declarations():
    config = values()["config"]
    validate(values())
    defaults = Settings(**written(config))
    assert {n: getattr(defaults, n) for n in CHART} == {n: getattr(Settings(), n) for n in CHART}


def test_every_setting_in_the_chart_reaches_the_collector(tmp_path):
    """Settings -> chart values -> the ConfigMap's file -> settings: each value arrives, and the schema takes it."""
    settings, _ = non_default(tmp_path)
    dumped = settings.model_dump(mode="json")
    config = {camel(n): dumped[n] for n in CHART}
    validate({**values(), "config": config})
    back = Settings(**written(config))
    assert [n for n in CHART if getattr(back, n) != getattr(settings, n)] == []


@pytest.mark.parametrize(
    ("path", "generate"),
    [
        ("values.yaml", chart_config.with_values),
        ("values.schema.json", chart_config.with_schema),
        ("README.md", chart_config.with_readme),
        ("templates/configmap.yaml", lambda _: chart_config.CONFIGMAP),
    ],
)
def test_the_charts_config_is_generated_from_the_declarations(path, generate):
    text = (DIR / path).read_text()
    assert generate(text) == text, f"helm/llamacloud-collector/{path} differs: run python scripts/generate.py"
