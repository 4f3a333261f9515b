#!/usr/bin/env bash
# Creates .venv/ at the repo root with everything nm-sparsity needs (see README "Set-up").
# Re-running is cheap: pip skips what is installed, and built mmcv wheels are kept in wheelhouse/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3.11}
VENV=$ROOT/.venv
WHEELHOUSE=$ROOT/wheelhouse
SHARED_WHEELS=$ROOT/../shared/wheels
mkdir -p "$WHEELHOUSE"

command -v "$PY" >/dev/null || { echo "install: $PY not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

echo "== torch 2.14.1 / torchvision 0.29.1"
"${PIP[@]}" -q 'pip>=24'
"${PIP[@]}" -q torch==2.14.1 torchvision==0.29.1

echo "== mmengine, mmdet, timm and the rest (mmcv's own needs included)"
"${PIP[@]}" -q --no-build-isolation -r "$ROOT/requirements.txt"
echo "== mmcv 2.1.0 with compiled ops"
FIND=(--find-links "$WHEELHOUSE")
[ -d "$SHARED_WHEELS" ] && FIND+=(--find-links "$SHARED_WHEELS")
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  if ! "${PIP[@]}" -q --no-build-isolation --no-index "${FIND[@]}" --no-deps mmcv==2.1.0 2>/dev/null \
     || ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
    echo "   no prebuilt mmcv wheel fits this torch/Python: building from the sdist (about 30 min on 2 cores)"
    bash "$ROOT/scripts/build_mmcv.sh" "$VENV/bin/python" "$WHEELHOUSE"
    "${PIP[@]}" -q --no-build-isolation --no-index --find-links "$WHEELHOUSE" --no-deps --force-reinstall mmcv==2.1.0
    "${PIP[@]}" -q 'setuptools>=77,<81'
  fi
fi

"${PIP[@]}" -q --no-build-isolation --no-deps -e "$ROOT"
"$VENV/bin/python" -c "import mmcv.ops, mmdet, timm, nm_plugins; from mmcv.ops import nms; print('install: ok (torch', __import__('torch').__version__, ')')"

echo "== Fashion-MNIST (Debian dataset-fashion-mnist)"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "   already installed"
elif command -v apt-get >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  if ! { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; }; then
    echo "install: could not apt-get install dataset-fashion-mnist; the proxy experiments need it (or FASHION_MNIST_DIR)" >&2
  fi
else
  echo "install: apt-get is not available: install Debian's dataset-fashion-mnist or set FASHION_MNIST_DIR to a folder with its IDX files" >&2
fi
echo "== German-English dictionary (Debian dict-de-en, the translation proxy's corpus)"
if [ -f /usr/share/dictd/german-english.dict.dz ]; then
  echo "   already installed"
elif command -v apt-get >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  if ! { $SUDO apt-get install -y -q dict-de-en >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dict-de-en >/dev/null; }; }; then
    echo "install: could not apt-get install dict-de-en; the translation proxy needs it (or DICT_DE_EN_DIR)" >&2
  fi
else
  echo "install: apt-get is not available: install Debian's dict-de-en or set DICT_DE_EN_DIR to a folder with german-english.index and german-english.dict.dz" >&2
fi
echo "== Chromium (Debian chromium: make report's test renders the page in a headless browser)"
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  echo "   already installed"
elif command -v apt-get >/dev/null; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  if ! { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }; }; then
    echo "install: could not apt-get install chromium; tests/test_report.py skips its browser test without it (or set CHROMIUM=/path)" >&2
  fi
else
  echo "install: apt-get is not available: install Chromium (or set CHROMIUM=/path/to/chrome) for the report's browser test" >&2
fi
echo "install: done"
