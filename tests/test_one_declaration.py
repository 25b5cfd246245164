"""Every setting is declared once (``collector.settings``): its flag, env var, messages, the README's table
and the chart's ``config`` come from that declaration, and a test fails on any copy that drifts."""

from __future__ import annotations

import argparse
from pathlib import Path

import helm_python
import pytest
import yaml

from collector.cli import build_parser
from collector.errors import ConfigError
from collector.settings import ENV_VARS, OPTIONS, Settings, load_settings
from scripts import chart_config
from scripts.settings_table import with_table
from tests.settings_values import non_default

pytestmark = pytest.mark.tier("tools")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "llamacloud-collector"


def flags_of(command: str) -> dict[str, str]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction) and a.dest == "command")
    sub = commands.choices[command]
    return {
        flag: action.dest
        for action in sub._actions
        for flag in action.option_strings
        if flag.startswith("--") and action.dest != "help"
    }


def test_the_flags_of_run_are_the_declared_settings_and_nothing_else():
    flags = flags_of("run")
    declared = {o.flag: name for name, o in OPTIONS.items() if o.flag}
    declared |= {alias: name for name, o in OPTIONS.items() for alias in o.aliases}
    declared |= {f"--no-{f[2:]}": n for f, n in declared.items() if Settings.model_fields[n].annotation in (bool, bool | None)}
    assert {f: d for f, d in flags.items() if f != "--config"} == declared
    assert set(ENV_VARS) == set(OPTIONS) and len(set(ENV_VARS.values())) == len(ENV_VARS)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"session_ids": [{"a": 1}]}, "session_ids.0 (--session-id, COLLECTOR_SESSION_IDS)"),
        ({"index_ids": [[1]]}, "index_ids.0 (--index-id, COLLECTOR_INDEX_IDS)"),
        ({"web_config": 3}, "web_config (--web-config, COLLECTOR_WEB_CONFIG)"),
        ({"max_concurrency": 0}, "max_concurrency (--max-concurrency, COLLECTOR_MAX_CONCURRENCY)"),
    ],
)
def test_a_bad_value_names_the_flag_argparse_accepts(tmp_path, data, names):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as error:
        load_settings({"config": str(path)}, {})
    assert str(error.value).startswith(names + ":")
    flag = names.split("(", 1)[1].split(",", 1)[0]
    assert flag in flags_of("run")  # the flag the message names is one argparse takes


def test_the_readme_table_is_generated_from_the_declarations():
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme) == readme, "run python scripts/generate.py"
    for name, option in OPTIONS.items():
        assert option.env in readme and (option.flag is None or f"`{option.flag}`" in readme), name


def rendered(tmp_path: Path, config: dict) -> Settings:
    """The settings the collector reads from the ConfigMap Helm renders of ``config``."""
    values = {"apiKey": {"value": "k"}, "config": config}
    out = helm_python.Chart.load(str(CHART)).render(values=values, name="rel", namespace="obs")
    text = next(yaml.safe_load(t) for p, t in out.items() if p.endswith("configmap.yaml"))["data"]["config.yaml"]
    assert set(yaml.safe_load(text)) <= set(Settings.model_fields)  # the ConfigMap writes only settings
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings({"config": str(path)}, {})


def test_every_chart_value_reaches_the_collector_through_helm(tmp_path):
    """Settings -> chart values -> Helm's ConfigMap -> settings, every value non-default; and the chart's
    defaults are the declarations' (tests/test_chart_config.py checks the same without Helm, in the unit tier)."""
    settings, _ = non_default(tmp_path)
    dumped = settings.model_dump(mode="json")
    back = rendered(tmp_path, {chart_config.camel(n): dumped[n] for n in chart_config.CHART})
    assert [n for n in chart_config.CHART if getattr(back, n) != getattr(settings, n)] == []
    defaults = rendered(tmp_path, {})
    assert [n for n in chart_config.CHART if getattr(defaults, n) != getattr(Settings(), n)] == []
    assert defaults.log_format == "json"
