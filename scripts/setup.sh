#!/usr/bin/env bash
# Create .venv and install ReVIOSa Studio's dependencies, in the order that keeps torch a CPU build:
#   1. torch (CPU wheel; a bare `torch` requirement would pull multi-GB CUDA builds)
#   2. this project as an editable package (`pip install -e .`: the `reviosa` command, importable
#      reviosa / viz / train / studio), its dependencies (pyproject.toml) constrained to that torch
#   3. sam2 1.1.0 from its sdist, hash-pinned, without build isolation or dependencies (its declared
#      dependencies pull torchvision and CUDA torch; the CUDA extension is optional: SAM2_BUILD_CUDA=0)
# Usage: scripts/setup.sh [--dev]       (--dev adds pytest, ruff, playwright and Debian's chromium)
# GPU machines: set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

# shellcheck disable=SC2086
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install $TORCH_SPEC
torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__.split('+')[0])")
constraints=$(mktemp)
echo "torch==$torch_version" >"$constraints"
extras=""
if [ "${1:-}" = "--dev" ]; then extras="[dev]"; fi
pip_install -c "$constraints" -e ".$extras"
# sam2 builds without isolation, so the venv needs setuptools (Python >= 3.12 venvs come without it).
pip_install -c "$constraints" "setuptools>=77"
"$VENV/bin/python" -c "import sam2" 2>/dev/null || \
  SAM2_BUILD_CUDA=0 pip_install --no-build-isolation --no-deps -r requirements-sam2.txt
if [ "${1:-}" = "--dev" ]; then
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The browser test drives Debian's chromium with playwright (no browser download).
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
      echo "warning: could not install chromium; the browser test will be skipped" >&2
  fi
fi
rm -f "$constraints"
"$VENV/bin/python" -c "import torch, transformers, sam2, gradio; print('ready: torch', torch.__version__, '| transformers', transformers.__version__)"
"$VENV/bin/reviosa" --help >/dev/null
