"""Real external tools the tests use; a missing one fails with how to install it."""

import shutil

import pytest

INSTALL = {
    "promtool": "apt-get install -y prometheus",
    "prometheus": "apt-get install -y prometheus",
    "prometheus-alertmanager": "apt-get install -y prometheus-alertmanager",
    "kubectl": "install kubectl (it provides `kubectl kustomize`)",
    "openssl": "apt-get install -y openssl",
}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; run: {INSTALL.get(tool, tool)} (or .ci/run)", pytrace=False)
    return path
