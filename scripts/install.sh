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

# Debian packages the proxies and the report's browser test need: installed with apt-get where it exists; with a
# third argument DIR the package is not installed but fetched (apt-get download) and unpacked (dpkg-deb -x) into DIR,
# with its version in DIR/VERSION. Where apt-get is missing, or fails, a warning naming the package and the
# alternative ($2), and the install goes on.
apt_package() {
  if ! command -v apt-get >/dev/null; then
    echo "install: apt-get is not available: install Debian's $1; $2" >&2
    return 0
  fi
  local SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  if [ -n "${3:-}" ]; then
    local tmp; tmp=$(mktemp -d)
    if (cd "$tmp" && { apt-get download -q "$1" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && apt-get download -q "$1" >/dev/null; }; }) \
       && dpkg-deb -x "$tmp"/*.deb "$tmp/root"; then
      rm -rf "$3" && mkdir -p "$(dirname "$3")" && mv "$tmp/root" "$3" && dpkg-deb -f "$tmp"/*.deb Version > "$3/VERSION"
    else
      echo "install: could not apt-get download $1; $2" >&2
    fi
    rm -rf "$tmp"
    return 0
  fi
  if ! { $SUDO apt-get install -y -q "$1" >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$1" >/dev/null; }; }; then
    echo "install: could not apt-get install $1; $2" >&2
  fi
}

echo "== Fashion-MNIST (Debian dataset-fashion-mnist)"
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "   already installed"
else
  apt_package dataset-fashion-mnist "the proxy experiments need it, or set FASHION_MNIST_DIR to a folder with its IDX files"
fi
echo "== German gettext catalogs of the pinned Debian packages (configs/translation/catalogs_de.yaml: the translation proxy's corpus)"
MISSING=$("$VENV/bin/python" -m nm_plugins.translation.catalogs missing)
if [ -z "$MISSING" ]; then
  echo "   already installed"
fi
for pkg in $MISSING; do  # fetched and unpacked into data/catalogs/<package>/, not installed (no servers, no scripts)
  apt_package "$pkg" "the translation proxy reads its German catalogs (data/catalogs/$pkg/usr/share/locale/de/LC_MESSAGES/)" "$ROOT/data/catalogs/$pkg"
done
echo "== Chromium (Debian chromium: make report's test renders the page in a headless browser)"
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  echo "   already installed"
else
  apt_package chromium "tests/test_report.py skips its browser test without it, or set CHROMIUM=/path/to/chrome"
fi
echo "install: done"
