#!/usr/bin/env bash
# Here, where PyPI and Debian are reachable: fill .gpu-carry/ (git-ignored) with what a GPU
# session's `run` calls carry. docs/gpu-runbook.md says which call carries which part.
#   env/whl  the inspectd wheel and the packages the GPU image lacks, at this venv's versions
#   env/deb  mosquitto and the libraries the image lacks (unpacked under /tmp there, not /)
#   vgg.pth  ImageNet VGG19 blocks 1-3 (hybrid)
#   sets/    the shared evaluation sets, one folder each (carry only those a call trains on),
#            and the synthetic button set (seed 1: 200 train good, 100 test good, 10 per defect)
set -euo pipefail
cd "$(dirname "$0")/../.."
C=.gpu-carry
SHARED=${SHARED:-../shared}
PY=.venv/bin/python
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

rm -rf "$C" && mkdir -p "$C/env/whl" "$C/env/deb" "$C/sets"
"$PY" -m pip wheel -q --no-deps -w "$C/env/whl" .
pkgs=()
for p in paho-mqtt structlog pydantic pydantic-core annotated-types typing-inspection typing-extensions; do
    pkgs+=("$p==$(version "$p")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$C/env/whl" "${pkgs[@]}"
(cd "$C/env/deb" && apt-get download -q mosquitto libwrap0 libdlt2 libnsl2 libtirpc3 libtirpc-common libcjson1 2>/dev/null)
cp "$SHARED/weights/vgg19_blocks1-3_torchvision_norm.pth" "$C/vgg.pth"
for d in "$SHARED"/data/*/; do
    [ -d "$d/train/good" ] && cp -r "$d" "$C/sets/"
done
"$PY" -m inspectd.synthetic --out "$C/sets/button" --seed 1 --train-good 200 \
    --test-good 100 --per-defect 10 >/dev/null
du -sh "$C/env" "$C/vgg.pth" "$C"/sets/*
