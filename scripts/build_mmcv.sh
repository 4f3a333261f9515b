#!/usr/bin/env bash
# Builds an mmcv 2.1.0 wheel with its compiled ops against the torch in the given Python, into a wheelhouse.
# mmcv 2.1.0 ships only an sdist; torch >= 2.13 headers need C++20, so its setup.py is patched for that.
set -euo pipefail
PYBIN=$1; OUTDIR=$2
# mmcv's setup.py needs pkg_resources and an older setuptools while building; install.sh restores the pin.
"$PYBIN" -m pip install -q 'setuptools<70' wheel ninja
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
"$PYBIN" -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$WORK" mmcv==2.1.0
tar -xzf "$WORK"/mmcv-2.1.0.tar.gz -C "$WORK"
sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$WORK"/mmcv-2.1.0/setup.py
grep -q 'c++20' "$WORK"/mmcv-2.1.0/setup.py || { echo "build_mmcv: could not patch setup.py for C++20" >&2; exit 1; }
(cd "$WORK"/mmcv-2.1.0 && MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PYBIN" -m pip wheel -q --no-deps --no-build-isolation -w "$OUTDIR" .)
echo "build_mmcv: wheel written to $OUTDIR"
