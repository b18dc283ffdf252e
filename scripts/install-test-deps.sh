#!/usr/bin/env bash
# Install what the test suite needs on Debian 12 (run as root; CI-safe: idempotent, no prompts).
#   system: FUSE 2+3 libraries, git-lfs, PostgreSQL server, b3sum, graphviz (lineage --format dot)
#   python: datamon in editable mode with its [test] extras
# Debian's `fuse` package is deliberately not installed: it conflicts with fuse3.
set -euo pipefail

APT_PACKAGES=(fuse3 libfuse3-3 libfuse2 git-lfs postgresql b3sum graphviz)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    echo "install-test-deps: installing ${missing[*]}" >&2
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        SUDO=(sudo)
    fi
    "${SUDO[@]}" apt-get update </dev/null
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        "${APT_PACKAGES[@]}" </dev/null
else
    echo "install-test-deps: apt packages already installed" >&2
fi

repo_root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
pip_args=(--disable-pip-version-check --no-input)
# Debian's own python3 refuses pip installs outside a venv (PEP 668); a throwaway CI machine may
# override that, a developer's machine should use a venv instead.
if [[ "${CI:-}" == "true" ]] && "$PYTHON" - <<'PY'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PY
then
    pip_args+=(--break-system-packages)
fi
"$PYTHON" -m pip install "${pip_args[@]}" -e '.[test]' </dev/null
