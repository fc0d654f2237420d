#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the short GPU check of the training engine, for a session lent a GPU
# machine through the device tool (one command, at most 10 minutes; files under $OUT come back).
#
# Its figures are of the device image's torch (2.11 on the lent H200 image), not of the torch the
# project pins (pyproject.toml: 2.14.1): the check runs whatever torch the machine has. The info step
# writes it to versions.json; gpu_check.log, bench.json (each entry), bench/paths.json and table1.md
# repeat it.
#
#   0. paths: short steps (seconds each) on a tiny JPEG tree the script writes (gpu_check_params.py
#      tiny): a packed `train` (two MLP 1x512 runs, training.pack 2, as the default experiment packs
#      them); a resume (an AlexNet run, channels_last on CUDA, ended right after epoch 1's checkpoint
#      by os._exit, then resumed by a fresh `train`); the streamed engine with DDP (source imagenet,
#      2 processes under torchrun: NCCL where the machine has 2 GPUs, else gloo on its CPU, so on a
#      1-GPU machine DDP between GPUs stays unmeasured); `decode: device` (streamed, on the device;
#      "skipped: torchcodec missing", not a failure, where the image lacks torchcodec). Their outcomes
#      are in bench/paths.json;
#   1. bench: images/s of each model, the engine against the conventional DataLoader loop
#      (bench --model mlp_1x512 mlp_3x512 alexnet inception), then packs of 8, 32 and 64 runs for
#      MLP 1x512 and AlexNet (bench --pack K --no-baseline: the pack against the single engine);
#   2. prepare and corrupt the JPEG CIFAR-10, then train Table 1's six unregularized runs
#      (benchmarks/gpu-check.yaml) for EPOCHS epochs, all six at once: jobs_per_gpu = number of runs,
#      so each holds its own GPU slot from the start (the logs' "GPU slot k" lines say which);
#   3. aggregate and figures (of the finished runs only, if the time limit cut some off);
#   4. $OUT/gpu-check.tgz: logs, tables, figures, bench JSON, each run's summary and curves; no
#      checkpoints (*.pt), no data (*.npz). It is rewritten after every step and from an EXIT trap,
#      so a kill (TERM from `timeout`, or the device tool's limit) still returns what exists, and even
#      a KILL leaves the archive of the last finished step. Also in $OUT: gpu_check.log (this
#      script's log), bench.json (every bench result), table1.md.
#
# Budget: every step runs under `timeout -k 1 (share - 3)` and then refreshes the archive under
# `timeout 2`, so no step outlasts its share. Shares in seconds at the default TOTAL=480; at another
# TOTAL (>= 260) the bench, prepare, corrupt and train shares (405 s of the SHARES line, 265 s here) scale
# by (TOTAL - 215) / 405 and the other 215 s stay (`--budget` prints the limits for a TOTAL):
#   setup: wheels 8 + GPU and package info 60 (torchvision's import alone took > 7 s) + params 7  75
#   paths: tiny tree 15 + packed train 15 + resume 20 + DDP 20 + decode: device 20    90
#   (scaled: SHARES line -> at 480)
#   bench, 4 models x (engine + baseline), 20,000 images x 2 epochs                80 -> 52
#   bench --pack 8 / 32 / 64, MLP 1x512 and AlexNet, 5,000 images x 1 epoch  140 -> 26 + 29 + 35 = 90
#   prepare (decode the 60,000 JPEGs)                                              45 -> 29
#   corrupt (true and random labels)                                               25 -> 16
#   train: 6 runs at once, EPOCHS=3 (each under the same limit, started together) 115 -> 75
#   aggregate 15 + figures 20 + report (bench.json, table1.md) 5                      40
#   final archive (EXIT trap, timeout 10)                                             10
#   total                                                     477 s of 480 (rounding down)
# Second guard: no step starts, or runs, past TOTAL - 10 s after the start (the last 10 s are the
# final archive's), so the total stays within TOTAL + a second or two of shell work whatever the
# settings. Steps whose input is missing (an earlier step failed) are skipped.
#
# On the device (the lead's session, from the repository root here):
#   python3 benchmarks/gpu_check_params.py trim /work/shared/data/cifar10-jpeg.zip data/cifar10-jpeg.zip 4500
#                                                         # data/ is ignored: 45,000 of the 50,000 training
#                                                         # images and every test image, 56.9 MiB (the whole
#                                                         # zip, 62.3 MiB, left no room for the tree to grow)
#   echo /.whl/ >> .git/info/exclude                      # the H200 image lacks jsonschema:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl jsonschema jsonschema-specifications referencing rpds-py      # about 0.5 MiB
#   bash benchmarks/gpu_check.sh --carry-size             # what travels; must stay under 64 MiB
# then run: command "bash benchmarks/gpu_check.sh", carry ["data/cifar10-jpeg.zip", ".whl"],
# timeout_s 540. Carry nothing else large: tree (~1.3 MiB) + zip + wheels is ~58.7 of the 64 MiB.
# With the machine's start (1-2 min) a call costs ~10 of the session's 15 device minutes; for a
# rerun inside what is left, pass a smaller budget: command "bash benchmarks/gpu_check.sh --total 300" (260 at least).
# Exit status: 0 when every step succeeded, 1 when one failed or timed out, 128+N when stopped by signal N.
#
# Settings: environment variables, or the flags beside them (flags win). Relative paths are from
# the repository root, except OUT and --out (from the caller's directory).
#   --device DEVICE            cuda | cpu | auto                        (cuda)
#   --dataset DATASET          imagefolder | digits | cifar10           (imagefolder)
#   --root ROOT                data location                            (data/cifar10-jpeg.zip)
#   --train-size TRAIN_SIZE    training subset of the Table 1 runs      (all 50,000)
#   --test-size TEST_SIZE      test subset                              (all 10,000)
#   --epochs EPOCHS            epochs of each Table 1 run               (3)
#   --batch-size BATCH         batch of the runs and of bench           (128)
#   --crop CROP                crop side (or none)                      (28; 7 for digits)
#   --train-models TRAIN_MODELS  Table 1 models                         (inception alexnet mlp_1x512)
#   --bench-models BENCH_MODELS  models of the first bench              (mlp_1x512 mlp_3x512 alexnet inception)
#   --bench-size BENCH_TRAIN_SIZE / --bench-epochs BENCH_EPOCHS         (20000 / 2)
#   --packs PACKS              pack sizes, one bench each               ("8 32 64")
#   --pack-models PACK_MODELS                                           (mlp_1x512 alexnet)
#   --pack-size PACK_TRAIN_SIZE / --pack-epochs PACK_EPOCHS             (5000 / 1)
#   --workers WORKERS          DataLoader workers of the baseline       (8)
#   --threads THREADS          CPU threads per training process         (torch's default)
#   --total TOTAL              wall-clock budget in seconds, >= 260     (480)
#   --results RESULTS          results folder (ignored by git)          (results-gpu)
#   --out OUT                  what comes back                          ($OUT, else RESULTS/out)
#   --wheels WHEELS            wheels to install where jsonschema is missing (.whl)
#   --carry-size               only print what a device call would carry (exit 3 if over 64 MiB)
#   --budget                   only print each step's share and limit at this TOTAL
# CPU example (what tests/test_gpu_check.py runs): bash benchmarks/gpu_check.sh --device cpu
#   --dataset digits --train-size 100 --test-size 50 --epochs 1 --batch-size 25 --train-models mlp_1x512
#   --bench-models mlp_1x512 --bench-size 100 --bench-epochs 1 --packs 2 --pack-models mlp_1x512
#   --pack-size 100 --workers 0 --threads 1
set -uo pipefail

DEVICE=${DEVICE:-cuda}
DATASET=${DATASET:-imagefolder}
ROOT=${ROOT:-data/cifar10-jpeg.zip}
TRAIN_SIZE=${TRAIN_SIZE:-}
TEST_SIZE=${TEST_SIZE:-}
EPOCHS=${EPOCHS:-3}
BATCH=${BATCH:-128}
CROP=${CROP:-}
TRAIN_MODELS=${TRAIN_MODELS:-}
BENCH_MODELS=${BENCH_MODELS:-mlp_1x512 mlp_3x512 alexnet inception}
BENCH_TRAIN_SIZE=${BENCH_TRAIN_SIZE:-20000}
BENCH_EPOCHS=${BENCH_EPOCHS:-2}
PACKS=${PACKS:-8 32 64}
PACK_MODELS=${PACK_MODELS:-mlp_1x512 alexnet}
PACK_TRAIN_SIZE=${PACK_TRAIN_SIZE:-5000}
PACK_EPOCHS=${PACK_EPOCHS:-1}
WORKERS=${WORKERS:-8}
THREADS=${THREADS:-}
TOTAL=${TOTAL:-480}
RESULTS=${RESULTS:-results-gpu}
OUT=${OUT:-}
WHEELS=${WHEELS:-.whl}
PY=${PYTHON:-python3}
CARRY_ONLY=0 BUDGET_ONLY=0
# The budget (see the header): each step's share in seconds at TOTAL=480; their sum is TOTAL.
SHARES="wheels 8  info 60  params 7  tiny 15  packed 15  resume 20  ddp 20  decode 20  bench_models 80  pack1 40
        pack2 45  pack3 55  prepare 45  corrupt 25  train 115  aggregate 15  figures 20  report 5  archive 10"
FIXED=" wheels info params tiny packed resume ddp decode aggregate figures report archive "   # kept at any TOTAL
declare -A SHARE
read -ra _s <<< "${SHARES//$'\n'/ }"
FIXED_SUM=0 SCALED_SUM=0
for ((j = 0; j < ${#_s[@]}; j += 2)); do
  SHARE[${_s[j]}]=${_s[j + 1]}
  if [[ $FIXED == *" ${_s[j]} "* ]]; then FIXED_SUM=$((FIXED_SUM + _s[j + 1])); else SCALED_SUM=$((SCALED_SUM + _s[j + 1])); fi
done
share_of() {  # share_of KEY: seconds at this TOTAL (the bench, prepare, corrupt and train shares scale with it)
  if [[ $FIXED == *" $1 "* ]]; then echo "${SHARE[$1]}"; else echo $((SHARE[$1] * (TOTAL - FIXED_SUM) / SCALED_SUM)); fi
}

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }
while (($#)); do
  flag=$1
  case $flag in
    -h|--help) usage; exit 0 ;;
    --carry-size) CARRY_ONLY=1; shift; continue ;;
    --budget) BUDGET_ONLY=1; shift; continue ;;
    --device|--dataset|--root|--train-size|--test-size|--epochs|--batch-size|--crop|--train-models|\
    --bench-models|--bench-size|--bench-epochs|--packs|--pack-models|--pack-size|--pack-epochs|--workers|\
    --threads|--total|--results|--out|--wheels) (($# >= 2)) || die "$flag needs a value (see --help)" ;;
    *) die "unknown argument $flag (see --help)" ;;
  esac
  case $flag in
    --device) DEVICE=$2 ;;          --dataset) DATASET=$2 ;;        --root) ROOT=$2 ;;
    --train-size) TRAIN_SIZE=$2 ;;  --test-size) TEST_SIZE=$2 ;;    --epochs) EPOCHS=$2 ;;
    --batch-size) BATCH=$2 ;;       --crop) CROP=$2 ;;              --train-models) TRAIN_MODELS=$2 ;;
    --bench-models) BENCH_MODELS=$2 ;;  --bench-size) BENCH_TRAIN_SIZE=$2 ;;  --bench-epochs) BENCH_EPOCHS=$2 ;;
    --packs) PACKS=$2 ;;            --pack-models) PACK_MODELS=$2 ;;
    --pack-size) PACK_TRAIN_SIZE=$2 ;;  --pack-epochs) PACK_EPOCHS=$2 ;;
    --workers) WORKERS=$2 ;;        --threads) THREADS=$2 ;;        --total) TOTAL=$2 ;;
    --results) RESULTS=$2 ;;        --out) OUT=$2 ;;                --wheels) WHEELS=$2 ;;
  esac
  shift 2
done
[[ $TOTAL =~ ^[0-9]+$ ]] && ((TOTAL >= FIXED_SUM + 45)) || die "--total: $TOTAL is not a number of seconds >= $((FIXED_SUM + 45))"
[[ -n $RESULTS && $RESULTS != / && $RESULTS != . ]] || die "--results: $RESULTS is not a results folder"
[[ -n $OUT ]] && OUT=$(realpath -m -- "$OUT")
cd "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 2
OUT=${OUT:-$PWD/$RESULTS/out}
export PYTHONPATH=$PWD/workflow${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export DEVICE DATASET ROOT TRAIN_SIZE TEST_SIZE EPOCHS BATCH CROP TRAIN_MODELS THREADS RESULTS PY

if ((BUDGET_ONLY)); then   # the step limits at this TOTAL: the share less 3 s (kill grace and archive)
  sum=0
  for k in $SHARES; do
    [[ -n ${SHARE[$k]:-} ]] || continue
    s=$(share_of "$k") lim=$(($(share_of "$k") - 3))
    [[ $k == archive ]] && lim=9   # the final archive: tar under timeout -k 1 8
    sum=$((sum + s))
    printf '%-13s share %4ds  limit %4ds\n' "$k" "$s" "$lim"
  done
  echo "total ${sum}s of TOTAL ${TOTAL}s"
  exit 0
fi
CARRY=()
[[ $DATASET == digits ]] || CARRY+=("$ROOT")
[[ -e $WHEELS ]] && CARRY+=("$WHEELS")
if ((CARRY_ONLY)); then
  [[ -e $WHEELS ]] || echo "carry: $WHEELS: missing (the H200 image has no jsonschema: see the header)"
  exec "$PY" benchmarks/gpu_check_params.py carry "${CARRY[@]}"
fi

# ------------------------------------------------------------------ state, log, archive, traps
SECONDS=0
DEADLINE=$((TOTAL - 10))   # the last 10 s are the final archive's
LOGS=$RESULTS/logs TMPD=$RESULTS/tmp P=$RESULTS/params.yaml AGG=$RESULTS/params-tables.yaml
rm -rf -- "$RESULTS"/{runs,logs,tables,figures,bench,tmp,out,tiny} "$P" "$AGG" "$RESULTS"/{runs,corruptions}.txt \
  "$RESULTS/versions.json"
mkdir -p "$LOGS" "$TMPD" "$RESULTS/bench" "$OUT" || exit 2
rm -f -- "$OUT"/{gpu-check.tgz,gpu_check.log,bench.json,table1.md}
LOG=$LOGS/gpu_check.log
CHILDREN=() STATUS=() FAILED=0 BASE=""
export P AGG LOGS TMPD

say() { printf '%s\n' "$*" >> "$LOG"; printf '%s\n' "$*" 2>/dev/null; }
show() { local f; for f in "$@"; do [[ -s $f ]] && sed 's/^/    /' "$f" | tee -a "$LOG" 2>/dev/null; done; }

snapshot() {  # snapshot SECONDS: the archive of what exists now, small files only, replaced atomically
  local list=$TMPD/archive.list part=$OUT/.gpu-check.tgz.part size
  (cd "$RESULTS" && find logs tables figures bench runs params.yaml params-tables.yaml runs.txt \
     corruptions.txt versions.json tiny/*.yaml -type f ! -name '*.pt' ! -name '*.npz' ! -name '*.lock' ! -name '*.tmp*' \
     2>/dev/null | LC_ALL=C sort) > "$list"
  timeout -k 1 "$1" tar czf "$part" -C "$RESULTS" -T "$list" 2>>"$LOG" || { rm -f "$part"; return 1; }
  size=$(stat -c %s "$part")
  if ((size > 15 * 1024 * 1024)); then   # the device tool returns files of up to 16 MiB
    grep -E '^(logs|tables|bench)/|^params' "$list" > "$list.small"
    timeout -k 1 "$1" tar czf "$part" -C "$RESULTS" -T "$list.small" 2>>"$LOG" || { rm -f "$part"; return 1; }
    say "archive: $size bytes is too large to come back; kept logs, tables and bench only"
  fi
  mv -f "$part" "$OUT/gpu-check.tgz"
  cp -f "$LOG" "$OUT/gpu_check.log" 2>/dev/null
  return 0
}

stop_children() {  # each child is a `timeout`, leader of its own process group with its command in it
  ((${#CHILDREN[@]})) || return 0
  local pid i alive
  for pid in "${CHILDREN[@]}"; do kill -TERM "$pid" 2>/dev/null; kill -TERM -- "-$pid" 2>/dev/null; done
  for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do   # up to 3 s for them to end
    alive=0
    for pid in "${CHILDREN[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.2
  done
  for pid in "${CHILDREN[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null; done
  CHILDREN=()
}

on_signal() {
  say "gpu_check: stopped by SIG$1 after ${SECONDS}s; archiving what exists"
  STATUS+=("stopped by SIG$1 at ${SECONDS}s")
  stop_children
  exit $((128 + $2))
}

finish() {
  local rc=$?
  trap - EXIT
  trap ':' TERM INT HUP   # a second signal no longer interrupts the archive
  trap '' PIPE
  stop_children
  say ""
  say "== steps (name: result, seconds used of the limit)"
  local s; for s in "${STATUS[@]}"; do say "  $s"; done
  [[ -s $RESULTS/tables/table1.md ]] && cp -f "$RESULTS/tables/table1.md" "$OUT/table1.md" &&
    printf '\n(torch %s: the machine'"'"'s own, on the lent GPU the device image'"'"'s; device %s)\n' "${TORCH:-unknown}" \
      "$DEVICE" >> "$OUT/table1.md"
  say "gpu_check: ${SECONDS}s of the ${TOTAL}s budget, exit $rc"
  if snapshot 8; then
    say "archive: $OUT/gpu-check.tgz, $(stat -c %s "$OUT/gpu-check.tgz") bytes, $(wc -l < "$TMPD/archive.list") files"
  else
    say "archive: not written (tar failed or ran out of time)"
  fi
  cp -f "$LOG" "$OUT/gpu_check.log" 2>/dev/null
  exit "$rc"
}
trap finish EXIT
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

limit_of() {  # limit_of KEY: a step's command limit (its share less 3 s, clipped to the deadline)
  local lim=$(($(share_of "$1") - 3)) left=$((DEADLINE - SECONDS - 2))
  ((lim > left)) && lim=$left
  echo "$lim"
}

launch() {  # launch LIMIT LOGFILE CMD...: CMD (or a function of this script) under timeout, in the background
  local lim=$1 log=$2; shift 2
  if declare -F "$1" >/dev/null; then
    timeout -k 1 "$lim" bash -c "$(declare -f "$1"); $1" > "$log" 2>&1 &
  else
    timeout -k 1 "$lim" "$@" > "$log" 2>&1 &
  fi
  CHILDREN+=($!)
}

record() {  # record NAME RC LIMIT T0
  local what
  case $2 in
    0) what=ok ;;
    124|137) what="TIMED OUT" ;;
    *) what="failed (exit $2)" ;;
  esac
  ((${2} == 0)) || FAILED=1
  STATUS+=("$1: $what, $((SECONDS - $4))s of ${3}s")
  say "[$(printf '%4d' "$SECONDS")s] $1: $what ($((SECONDS - $4))s of ${3}s)"
}

skip() { FAILED=1; STATUS+=("$1: skipped ($2)"); say "[$(printf '%4d' "$SECONDS")s] $1: skipped ($2)"; }

step() {  # step NAME SHARE_KEY CMD...: one time-boxed step, its log in logs/NAME.log; returns its status
  local name=$1 lim t0=$SECONDS rc; lim=$(limit_of "$2"); shift 2
  if ((lim < 1)); then skip "$name" "no time left"; return 1; fi
  say "[$(printf '%4d' "$SECONDS")s] $name: start (limit ${lim}s)"
  launch "$lim" "$LOGS/$name.log" "$@"
  wait "${CHILDREN[-1]}"; rc=$?
  CHILDREN=()
  record "$name" "$rc" "$lim" "$t0"
  show "$LOGS/$name.log"
  snapshot 2 || true
  return "$rc"
}

# ------------------------------------------------------------------ the steps' commands
install_wheels() {
  if "$PY" -c "import jsonschema" 2>/dev/null; then echo "jsonschema: installed"; exit 0; fi
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "jsonschema is missing and $WHEELS has no wheels (see the header)"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$TMPD/site" "$WHEELS"/*.whl
}
info() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$PY" benchmarks/gpu_check_params.py carry $CARRY_LIST || true
  "$PY" -c "if 1:
    import json, os, sys, torch
    v = {'python': sys.version.split()[0], 'torch': torch.__version__, 'cuda': torch.version.cuda,
         'cuda_available': torch.cuda.is_available(),
         'device_name': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}
    def write():  # first without torchvision: its import may be what runs out of time
        with open(os.environ['RESULTS'] + '/versions.json', 'w') as f:
            json.dump(v, f)
    write()
    print('python', v['python'], 'torch', v['torch'], 'cuda', v['cuda_available'], v['device_name'], flush=True)
    try:
        import torchvision
        v['torchvision'] = torchvision.__version__
        print('torchvision', torchvision.__version__)
    except ImportError:
        v['torchvision'] = None
        print('no torchvision: bench runs without the baseline loop')
    write()"
}
corrupt_all() {
  local c
  for c in $(cat "$RESULTS/corruptions.txt"); do
    "$PY" -m rethinking corrupt --params "$P" --corruption "$c" || exit 1
  done
}
tables() {
  "$PY" benchmarks/gpu_check_params.py finished "$P" "$AGG" && "$PY" -m rethinking aggregate --params "$AGG"
}
report() {
  "$PY" benchmarks/gpu_check_params.py merge-bench "$RESULTS/bench" "$OUT/bench.json" "$RESULTS/versions.json"
  grep -h "GPU slot" "$LOGS"/train_*.log 2>/dev/null || true
  [[ -s $RESULTS/tables/table1.md ]] && cat "$RESULTS/tables/table1.md"
  true
}
# the paths steps: a few seconds each on the tiny tree (gpu_check_params.py tiny writes $TINY)
packed_train() {  # the two MLP 1x512 runs as one pack (training.pack 2), as the default experiment packs them
  mapfile -t runs < <(grep mlp_1x512 "$TINY/folder.runs")
  "$PY" -m rethinking train --params "$TINY/folder.yaml" --run "${runs[0]}" --run "${runs[1]}" || exit 1
  local done; done=$(ls "$TINY"/folder/runs/*/*/mlp_1x512/none/seed0/summary.json 2>/dev/null | wc -l)
  ((done == 2)) || { echo "packed_train: $done of the pack's 2 runs have a summary"; exit 1; }
}
resume() {  # an AlexNet run (channels_last on CUDA) ended after epoch 1's checkpoint, then resumed
  local run; run=$(grep alexnet "$TINY/folder.runs")
  "$PY" benchmarks/gpu_check_params.py killed "$TINY/folder.yaml" "$run" 1 || exit 1
  "$PY" -m rethinking train --params "$TINY/folder.yaml" --run "$run" > "$TMPD/resume.out" 2>&1; local rc=$?
  cat "$TMPD/resume.out"
  ((rc == 0)) || exit "$rc"
  grep -q "resuming after epoch 1" "$TMPD/resume.out" || { echo "resume: the run did not resume"; exit 1; }
}
ddp() {  # the streamed engine, 2 processes under torchrun (NCCL on 2 GPUs; else gloo on the CPU)
  grep -E "^  device:" "$TINY/stream.yaml"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m rethinking train --params "$TINY/stream.yaml" \
    --run-id "$(cat "$TINY/stream.runs")"
}
decode_device() {  # the streamed engine with decode: device (torchcodec on the device)
  grep -E "^  (device|decode):" "$TINY/decode.yaml"
  "$PY" -m rethinking train --params "$TINY/decode.yaml" --run "$(cat "$TINY/decode.runs")"
}
paths() {  # the steps above, and bench/paths.json: their outcomes and the torch version
  local name key json="" last
  step tiny tiny "$PY" benchmarks/gpu_check_params.py tiny "$TINY" || { skip paths "tiny failed"; return 1; }
  for name in packed_train:packed resume:resume ddp:ddp decode_device:decode; do
    key=${name#*:} name=${name%:*}
    if [[ $name == decode_device && -s $TINY/decode.skip ]]; then
      STATUS+=("$name: skipped: $(cat "$TINY/decode.skip")")
      say "[$(printf '%4d' "$SECONDS")s] $name: skipped: $(cat "$TINY/decode.skip") (not a failure)"
    else
      step "$name" "$key" "$name"
    fi
    last=${STATUS[-1]#*: }
    json+="${json:+, }\"$name\": \"$last\""
  done
  printf '{"torch": "%s", "device": "%s", "steps": {%s}}\n' "$TORCH" "$DEVICE" "$json" > "$RESULTS/bench/paths.json"
}
CARRY_LIST=${CARRY[*]:-}
TINY=$RESULTS/tiny TORCH=unknown
export WHEELS OUT CARRY_LIST TINY

bench_args() {  # the flags every bench call shares
  BA=(--device "$DEVICE" --dataset "$DATASET" --batch-size "$BATCH" --workers "$WORKERS")
  [[ $DATASET == digits ]] || BA+=(--root "$ROOT")
  [[ -n $CROP && $CROP != none && $CROP != null ]] && BA+=(--crop "$CROP")
  [[ -n $THREADS ]] && BA+=(--threads "$THREADS")
  true
}

train_all() {  # every run of runs.txt at once, each under the same limit; logs/train_<run>.log
  local lim t0=$SECONDS run rc=0 pid n=0 timed=0; lim=$(limit_of train)
  if ((lim < 1)); then skip train "no time left"; return 1; fi
  say "[$(printf '%4d' "$SECONDS")s] train: start $(wc -l < "$RESULTS/runs.txt") runs at once (limit ${lim}s each)"
  while read -r run; do
    [[ -n $run ]] || continue
    launch "$lim" "$LOGS/train_${run//\//_}.log" "$PY" -m rethinking train --params "$P" --run "$run"
    n=$((n + 1))
  done < "$RESULTS/runs.txt"
  for pid in "${CHILDREN[@]}"; do
    wait "$pid"; local r=$?
    ((r == 124 || r == 137)) && timed=$((timed + 1))
    ((r != 0 && rc == 0)) && rc=$r
  done
  CHILDREN=()
  record train "$rc" "$lim" "$t0"
  ((timed)) && say "    $timed of $n runs cut off by the limit"
  local f; for f in "$LOGS"/train_*.log; do say "  $(basename "$f")"; tail -n 2 "$f" | sed 's/^/    /' | tee -a "$LOG"; done
  snapshot 2 || true
  return "$rc"
}

# ------------------------------------------------------------------ run
say "gpu_check: device $DEVICE, dataset $DATASET$([[ $DATASET == digits ]] || echo " ($ROOT)"), epochs $EPOCHS, packs $PACKS, budget ${TOTAL}s; out $OUT"
if step wheels wheels install_wheels && [[ -d $TMPD/site ]]; then export PYTHONPATH=$PWD/$TMPD/site:$PYTHONPATH; fi
f0=$FAILED; step info info info || { FAILED=$f0; say "    (information only: not counted as a failure)"; }
grep -q '^no torchvision' "$LOGS/info.log" 2>/dev/null && BASE=--no-baseline
[[ -s $RESULTS/versions.json ]] && TORCH=$(sed -n 's/.*"torch": "\([^"]*\)".*/\1/p' "$RESULTS/versions.json")
TORCH=${TORCH:-unknown}
say "gpu_check: torch ${TORCH:-unknown}: every figure below is of this machine's torch (on the lent GPU: the device image's; the project pins $(grep -o '"torch==[^"]*' pyproject.toml | cut -d= -f3))"
step params params "$PY" benchmarks/gpu_check_params.py make "$P"
paths

bench_args
step bench_models bench_models "$PY" -m rethinking bench "${BA[@]}" $BASE --model $BENCH_MODELS \
  --train-size "$BENCH_TRAIN_SIZE" --epochs "$BENCH_EPOCHS" --json "$RESULTS/bench/models.json"
i=0
for k in $PACKS; do   # packs past the third get the third's share (and the deadline guard)
  i=$((i + 1)); key=pack$((i < 3 ? i : 3))
  step "bench_pack$k" "$key" "$PY" -m rethinking bench "${BA[@]}" --no-baseline --model $PACK_MODELS --pack "$k" \
    --train-size "$PACK_TRAIN_SIZE" --epochs "$PACK_EPOCHS" --json "$RESULTS/bench/pack$k.json"
done

if [[ ! -s $RESULTS/runs.txt ]]; then skip prepare "no params file"
elif step prepare prepare "$PY" -m rethinking prepare --params "$P"; then
  if step corrupt corrupt corrupt_all; then
    train_all
    if ls "$RESULTS"/runs/*/*/*/*/*/summary.json >/dev/null 2>&1; then
      step aggregate aggregate tables && step figures figures "$PY" -m rethinking figures --params "$AGG"
    else skip aggregate "no run finished"; fi
  else skip train "corrupt failed"; fi
else skip corrupt "prepare failed"; fi
step report report report
exit "$FAILED"
