#!/usr/bin/env bash
# One short GPU check, for the device tool: the engine's images/s per model at batch
# 128 against the conventional loop and against packs of runs (bench --pack), then
# prepare the JPEG CIFAR-10 and train the runs of benchmarks/gpu-check.yaml
# concurrently on one GPU, each bounded by a wall-clock limit; logs, bench JSON and
# tables go to $OUT. About LIMIT + 8 minutes: run with LIMIT=150 or less.
# Needs: data/cifar10-jpeg.zip, and .whl/ with jsonschema's wheels where it is missing.
set -uo pipefail
LIMIT=${LIMIT:-330}
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
if ! python3 -c "import jsonschema" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=workflow${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
P=benchmarks/gpu-check.yaml
BASE=""; python3 -c "import torchvision" 2>/dev/null || BASE="--no-baseline"   # the loop's PIL transforms need it
( timeout 420 python3 -m rethinking bench --device cuda --model mlp_1x512 mlp_3x512 alexnet inception \
    --dataset imagefolder --root data/cifar10-jpeg.zip --train-size 20000 --epochs 2 --workers 8 --pack 8 $BASE \
    --json "$OUT/bench.json" ) 2>&1 | tee "$OUT/bench.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
mkdir -p results-gpu/logs
( time python3 -m rethinking prepare --params $P ) 2>&1 | tee results-gpu/logs/prepare.log
for c in $(python3 -m rethinking corruptions --params $P); do python3 -m rethinking corrupt --params $P --corruption $c; done
for run in $(python3 -m rethinking runs --params $P); do
  log=results-gpu/logs/$(echo $run | tr / _).log
  timeout $LIMIT python3 -m rethinking train --params $P --run $run > $log 2>&1 &
done
wait
python3 -m rethinking aggregate --params $P 2>&1 | tail -3
python3 -m rethinking figures --params $P 2>&1 | tail -3
for f in results-gpu/logs/*.log; do echo "== $f"; grep -E "epoch (1|2|5|10|20|30|40|50|60) |fitted|max_epochs after|Error|error" $f | tail -12; done
tar czf "$OUT/results-gpu.tgz" results-gpu/logs results-gpu/tables results-gpu/figures results-gpu/runs --exclude='*.pt' 2>/dev/null
ls -la "$OUT"
