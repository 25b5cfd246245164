"""Test tiers as markers, and the fixtures the tiers share.

Tiers (``pytest -m <tier>``):
- ``unit``: in-process, on loopback at most; the whole tier runs in well under a minute.
- ``model``: the hypothesis model of the counting core (in-process, but its own tier for its time).
- ``process``: starts the collector or the simulator as processes.
- ``tools``: needs a real external tool (Prometheus, promtool, Alertmanager, Helm, kubectl, actionlint,
  hadolint, openssl): ``.ci/run`` installs them.
- ``soak``: minutes of traffic.

Each test module is classified here, once; a new module that is not fails collection with a message.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import structlog

from tests.stack import Processes

TIERS = {
    "unit": "in-process, fast",
    "model": "the hypothesis model of the counting core (in-process; its own tier for its time)",
    "process": "starts the collector or simulator as processes",
    "tools": "needs Prometheus, promtool, Helm, kubectl, actionlint, hadolint or openssl",
    "soak": "minutes of traffic",
}
MODULES: dict[str, tuple[str, ...]] = {
    "test_bounds": ("unit",),
    "test_client": ("unit",),
    "test_collector": ("unit",),
    "test_core_units": ("unit",),
    "test_counting_core": ("unit",),
    "test_dashboards": ("unit",),
    "test_derive": ("unit",),
    "test_durability": ("unit",),
    "test_exemplars": ("unit",),
    "test_faults": ("unit",),
    "test_model": ("model",),
    "test_model_findings": ("unit",),
    "test_models": ("unit",),
    "test_never_dark": ("unit",),
    "test_operator_mistakes": ("unit",),
    "test_poller_cycle": ("unit",),
    "test_readme": ("unit",),
    "test_server": ("unit",),
    "test_sharding": ("unit",),
    "test_simulator_oracle": ("unit",),
    "test_sqlite_store": ("unit",),
    "test_state_upgrade": ("unit",),
    "test_stored_messages": ("unit",),
    "test_state_hostile": ("unit",),
    "test_settings": ("unit",),
    "test_run_log": ("unit",),
    "test_upstream_exact": ("unit",),
    "test_loop_model": ("unit",),
    "test_large_body": ("unit",),
    "test_helm": ("tools",),
    "test_one_declaration": ("tools",),
    "test_kustomize": ("tools", "process"),
    "test_rules": ("tools", "process"),
    "test_release": ("tools", "process"),
    "test_dockerfile": ("tools", "process"),
    "test_prometheus_e2e": ("tools", "process"),
    "test_web": ("tools", "process"),
    "test_process": ("process",),
    "test_hostile_scrapers": ("process",),
    "test_hostile_history": ("process",),
    "test_huge_history": ("unit",),
    "test_huge_history_attack": ("unit",),
    "test_hostile_upstream": ("process",),
    "test_operations": ("process",),
    "test_proxy": ("process",),
    "test_soak": ("process", "soak"),
}
TESTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("test_state_hostile", "test_the_collector_exits_2_on_a_newer_release_file_and_leaves_it_untouched"): ("process",),
    ("test_settings", "test_cli_process_bad_setting_no_traceback"): ("process",),
    ("test_run_log", "test_exactly_one_line_per_failed_run_across_a_restart_with_state"): ("process",),
}
"""Tests that start a process in a module that otherwise does not."""


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for module, name in TESTS:  # a renamed test must not fall back to its module's tier unseen
        if f"def {name}(" not in (here / f"{module}.py").read_text():
            raise pytest.UsageError(f"tests/conftest.py: TESTS names {module}::{name}, which does not exist")
    for item in items:
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        if module not in MODULES:
            raise pytest.UsageError(f"tests/{module}.py has no tier: add it to MODULES in tests/conftest.py")
        name = getattr(item, "originalname", item.name)
        for tier in TESTS.get((module, name), MODULES[module]):
            item.add_marker(tier)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """The unit tier is what mutation testing runs: a process started from it would run unmutated code."""
    if request.node.get_closest_marker("unit") is not None:

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} starts a process: give it the process tier in TESTS")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture(autouse=True)
def _fresh_logging():
    """A test that configures structlog (to a buffer it then closes) leaves the next test the defaults."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def procs(tmp_path):
    """Processes started by a test, each logging to a file under ``tmp_path``, all stopped at its end."""
    processes = Processes(tmp_path)
    yield processes
    processes.stop_all()
