#!/usr/bin/env bash
# Install everything capslib needs on a fresh machine, idempotently.
#   scripts/setup.sh            venv + Python packages + datasets
#   scripts/setup.sh --browser  also Debian's chromium + chromedriver (browser test)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
DATA=${CAPSLIB_DATA:-$HOME/.cache/capslib/data}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(cat requirements.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "==> installing Python packages (torch from the registry's default build; a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, torchvision, capslib; print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| capslib', capslib.__version__)"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# The fused CPU routing kernel (capslib/engine/csrc): compiled once per machine with the system's C++
# compiler into ~/.cache/capslib/kernels (a no-op when built). Where it cannot be built, this prints a
# notice and capslib runs its slower PyTorch routing path.
"$VENV/bin/python" -c "from capslib.engine import fused_routing; fused_routing.main()"

# Datasets: copy the shared real MNIST / Fashion-MNIST (torchvision layout) into the data folder.
if [ -d ../shared/datasets ] && [ ! -d "$DATA/FashionMNIST/raw" ]; then
  echo "==> copying ../shared/datasets to $DATA"
  mkdir -p "$DATA"
  cp -r ../shared/datasets/. "$DATA/"
  chmod -R u+w "$DATA"
fi
if [ ! -d "$DATA/FashionMNIST/raw" ]; then
  echo "==> no datasets in $DATA: torchvision will download Fashion-MNIST on first use (network needed)"
fi

if [ "${1:-}" = "--browser" ] && ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing Debian's chromium + chromium-driver for the browser test"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "==> chromium-driver missing and apt-get unavailable: the browser test will be skipped"
  fi
fi
