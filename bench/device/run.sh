#!/usr/bin/env bash
# There, on the GPU machine of the `device` tool: set up from .gpu-carry/env, run one stage,
# leave what it measured in $OUT (docs/gpu-runbook.md).
#   bench/device/run.sh bench              CUDA tests, bench/gpu.py, bench/engines.py --device cuda
#   bench/device/run.sh train MIN SET...   paper-profile training of every (set, model) at once
#                                           (--jobs), at most MIN minutes per run
# SKIP_SETUP=1 PY=... DEVICE=cpu MODELS=... run the train stage as a smoke check elsewhere.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
C=$REPO/.gpu-carry
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-hybrid vivano ae}
mkdir -p "$OUT"
if [ -z "${SKIP_SETUP:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$C"/env/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    mkdir -p /tmp/mosq && for f in "$C"/env/deb/*.deb; do dpkg -x "$f" /tmp/mosq; done
    export PATH=/tmp/mosq/usr/sbin:$PATH
    export LD_LIBRARY_PATH=/tmp/mosq/usr/lib/x86_64-linux-gnu:/tmp/mosq/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
export PYTHONUNBUFFERED=1
cd /tmp || exit 1  # not the repo root, whose inspectd/ folder would shadow the installed package

stage=${1:?stage: bench or train}
shift
case $stage in
bench)
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/component/test_engines.py" -k cuda 2>&1 | tail -20 | tee "$OUT/cuda-tests.txt"
    "$PY" "$REPO/bench/gpu.py" 2>&1 | grep -v Warning | tee "$OUT/gpu.md"
    "$PY" "$REPO/bench/engines.py" --device cuda --models hybrid vivano 2>&1 | grep -v Warning | tee "$OUT/engines-cuda.txt"
    "$PY" "$REPO/bench/train_speed.py" --device cuda --steps 20 2>&1 | grep -v Warning | tee "$OUT/train-speed.txt"
    ;;
train)
    minutes=${1:?minutes per run}
    shift
    # every (set, model) run at once, each in its own process: small sets leave most of one GPU
    # idle, so they share it (JOBS=1 runs them one after the other)
    # shellcheck disable=SC2086
    jobs=${JOBS:-$(( $# * $(echo $MODELS | wc -w) ))}
    # results.json grows as runs finish: copy it every 20 s, so a call cut off keeps those
    (while sleep 20; do cp /tmp/runs/results.json "$OUT/" 2>/dev/null; done) &
    copier=$!
    # shellcheck disable=SC2086
    "$PY" -m inspectd.train.experiments --profile paper --device "$DEVICE" --data "$C/sets" \
        --sets "$@" --models $MODELS --vgg-weights "$C/vgg.pth" --max-minutes "$minutes" \
        --jobs "$jobs" --out /tmp/runs 2>&1 | grep -v -e Warning -e "it/s\]" -e "epoch/s" | tail -60 >>"$OUT/train-log.txt"
    kill "$copier"
    cp /tmp/runs/results.json "$OUT/results.json"
    ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
