#!/bin/bash
# The three calls of a GPU session (each carries one part made by `python benchmarks/stage_data.py pack`):
#   call 1 (carry stage/part1): MNIST + Fashion-MNIST there, speed probe of every job, GPU check of the evaluation
#   call 2 (carry stage/part2): CIFAR-10 batches 1-2 and the first 1,000 test images there
#   call 3 (carry stage/part3): CIFAR-10 batches 3-5 there, then train everything, benchmark, collect into $OUT
# PROBE=FILE gives call 3 the probe of an earlier machine (a copy of its probe.json).
# The data and runs live in /tmp of the warm machine between calls. TINY=1 DATASETS=mnist runs a CPU smoke test.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
PY=${PY:-python3}
D=${DATA:-/tmp/siamdiff-data}
R=${RUNS:-/tmp/siamdiff-runs}
DS=${DATASETS:-mnist,fashion-mnist,cifar10}
EXTRA=()
LANES=14
if [ "${TINY:-0}" = 1 ]; then EXTRA=(--tiny); LANES=4; fi
date
case "$1" in
1)
    $PY benchmarks/stage_data.py unpack stage/part1 --to "$D" || exit 1
    P=/tmp/siamdiff-probe-data
    mkdir -p "$P" && ln -sfn "$D/MNIST" "$P/MNIST" && ln -sfn "$D/FashionMNIST" "$P/FashionMNIST"
    $PY benchmarks/stage_data.py fake-cifar --to "$P" --n 9000 || exit 1
    nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
    $PY benchmarks/device_run.py probe --data-dir "$P" --runs "$R" --datasets "$DS" --lanes $LANES --budget 150 \
        "${EXTRA[@]}"
    $PY benchmarks/device_run.py bench --data-dir "$P" --runs "$R/probe" --datasets "$DS" --n 100 \
        --sigmas 0.1,0.5 --budget 90 "${EXTRA[@]}"
    tail -n 4 "$R"/probe/logs/bench-*.log
    grep -l Traceback "$R"/probe/logs/*.log && grep -h -A3 "Error" "$R"/probe/logs/*.log | tail -n 40
    cp "$R/probe.json" "$OUT/" 2>/dev/null
    tar czf "$OUT/probe-logs.tgz" --ignore-failed-read -C "$R" probe/logs probe/results probe.json
    ;;
2)
    $PY benchmarks/stage_data.py unpack stage/part2 --to "$D" || exit 1
    ;;
3)
    $PY benchmarks/stage_data.py unpack stage/part3 --to "$D" || exit 1
    $PY benchmarks/device_run.py train --data-dir "$D" --runs "$R" --datasets "$DS" --lanes $LANES \
        --budget "${TRAIN_BUDGET:-330}" --probe "${PROBE:-$R/probe.json}" "${EXTRA[@]}"
    $PY benchmarks/device_run.py bench --data-dir "$D" --runs "$R" --datasets "$DS" --budget "${BENCH_BUDGET:-170}" \
        ${BENCH_N:+--n $BENCH_N} "${EXTRA[@]}"
    $PY benchmarks/device_run.py collect --runs "$R" --datasets "$DS" --out "$OUT"
    grep -l Traceback "$R"/logs/*.log && grep -h -B2 -A3 "Error" "$R"/logs/*.log | tail -n 40
    ;;
esac
date
