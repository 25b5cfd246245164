"""The README's Quickstart is what CI runs, and documents every setting."""

import re
from pathlib import Path

from collector.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)][:2]


def test_quickstart_is_two_commands_and_ci_runs_the_second():
    demo, tests = quickstart_commands()
    assert demo == "pip install . && llamacloud-collector demo"
    assert tests == "pip install '.[test]' && python -m pytest"
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_env_var_is_documented():
    text = (ROOT / "README.md").read_text()
    assert [var for var in ENV_VARS.values() if var not in text] == []
