"""Every setting is declared once (``collector.settings``): its flag, env var, messages, the README's table
and the chart's mapping come from that declaration, and a test fails on any copy that drifts."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python
import pytest
import yaml

from collector.cli import build_parser
from collector.errors import ConfigError
from collector.settings import ENV_VARS, OPTIONS, Settings, load_settings
from scripts.settings_table import with_table

pytestmark = pytest.mark.tier("tools")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "llamacloud-collector"


def flags_of(command: str) -> dict[str, str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
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


def test_the_charts_config_map_writes_only_settings_and_every_config_value_reaches_one(tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    snake = {key: re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower() for key in values}
    fields = set(Settings.model_fields)
    assert [k for k, s in snake.items() if s not in fields and s != "discover"] == []
    full = {
        "apiKey": {"value": "k"},
        "config": {
            "projectId": "p",
            "organizationId": "o",
            "sessionIds": ["s"],
            "discover": True,
            "indexIds": ["i"],
            "errorRules": [{"type": "quota", "pattern": "quota"}],
            "buckets": {"turns": [1, 2]},
        },
    }
    out = helm_python.Chart.load(str(CHART)).render(values=full, name="rel", namespace="obs")
    configmap = next(yaml.safe_load(t) for p, t in out.items() if p.endswith("configmap.yaml"))
    written = yaml.safe_load(configmap["data"]["config.yaml"])
    assert set(written) <= fields, set(written) - fields
    assert {snake[k] for k in values} <= set(written) | {"discover"}  # every value of the chart is passed on
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    settings = load_settings({"config": str(path)}, {})
    assert settings.project_id == "p" and settings.index_ids == ("i",) and settings.buckets.turns == (1, 2)
