#!/usr/bin/env bash
# Offline checks of the Terraform module and its example, plus the deploy files:
#   1. terraform fmt -check -recursive terraform   (skipped when terraform is absent)
#   2. structural tests (python-hcl2, unittest)    tests/terraform/test_*.py
#   3. checkov over terraform/, no failed checks   (skips carry #checkov:skip=ID:reason)
#
# terraform init/validate are not run: they download providers.
#
# Idempotent; works as root on a fresh Debian machine. The Python tools live in
# two virtualenvs under $CUSTODY_TF_TOOLS (default ~/.cache/custody/terraform-tools)
# and are installed only when missing:
#   - Debian's own python3 refuses `pip install` outside a venv (PEP 668);
#   - checkov depends on bc-python-hcl2, which installs the same `hcl2` package
#     as python-hcl2: in one environment they overwrite each other's files.
set -euo pipefail

PYTHON_HCL2_VERSION="8.1.4"
CHECKOV_VERSION="3.3.30"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TOOLS="${CUSTODY_TF_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/custody/terraform-tools}"
HCL_VENV="$TOOLS/hcl2-$PYTHON_HCL2_VERSION"
CHECKOV_VENV="$TOOLS/checkov-$CHECKOV_VERSION"

log() { printf '==> %s\n' "$*"; }

ensure_python() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    return 0
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    log "installing python3 and python3-venv (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
  else
    echo "python3 with the venv module is required (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
}

# ensure_venv DIR DISTRIBUTION VERSION: a venv holding DISTRIBUTION==VERSION.
ensure_venv() {
  local dir="$1" dist="$2" version="$3"
  if [ -x "$dir/bin/python" ] &&
    "$dir/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('$dist') != '$version')" >/dev/null 2>&1; then
    return 0
  fi
  log "installing $dist==$version into $dir"
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$dist==$version"
}

ensure_python
ensure_venv "$HCL_VENV" python-hcl2 "$PYTHON_HCL2_VERSION"
ensure_venv "$CHECKOV_VENV" checkov "$CHECKOV_VERSION"

if command -v terraform >/dev/null 2>&1; then
  log "terraform fmt -check -recursive terraform"
  terraform fmt -check -recursive -diff terraform
else
  log "SKIP terraform fmt: terraform is not on PATH"
fi

log "structural tests (python-hcl2 $PYTHON_HCL2_VERSION)"
"$HCL_VENV/bin/python" tests/terraform/test_module.py
"$HCL_VENV/bin/python" tests/terraform/test_deploy_files.py

log "checkov $CHECKOV_VERSION"
BC_SKIP_MAPPING=TRUE "$CHECKOV_VENV/bin/checkov" -d terraform --quiet --compact --framework terraform --skip-download

log "terraform checks passed"
