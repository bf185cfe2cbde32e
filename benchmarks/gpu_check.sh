#!/usr/bin/env bash
# The GPU check of issue 18 ("vitlab at GPU speed"), about 5 minutes on one GPU:
#   1. resnet18 trained on the bundled digits (recipes/supervised/resnet18_digits.yaml, 2 epochs);
#   2. every manual-optimisation method (HAT, Mugs, and the data-free quantizers GDFQ and ClusterQ on a ResNet-20
#      digits teacher trained first) for a few steps under train.precision 16-mixed and bf16-mixed;
#   3. training images/s of iFormer-S, DeiT-S and Swin-T (benchmarks/bench_train_step.py, CUDA, bf16 autocast);
#   4. the loader benchmark, when benchmarks/bench_loader.py exists;
# then one markdown table of every check (benchmarks/bench_gpu_report.py).
#
#   benchmarks/gpu_check.sh [--out DIR]        # on a machine with a CUDA GPU (default DIR: runs/gpu_check)
#   benchmarks/gpu_check.sh --dry-run [--out DIR]
#
# --dry-run runs every check on the CPU at tiny sizes (a couple of steps, batch 1 fp32 train-step timings, no memory
# subprocesses), so that tests/test_gpu_check.py can check the script end to end without a GPU. The CPU has no fp16
# autocast, so there the 16-mixed checks run under bf16-mixed (the table says so). A failing check does not stop the
# others; the script exits 1 if any failed. PYTHON selects the interpreter (default: python).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
OUT="runs/gpu_check"
DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
cd "$ROOT" || exit 2
mkdir -p "$OUT/logs" || exit 2
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT"/*.check.json "$OUT/train_step.json" "$OUT/loader.json"

if [ "$DRY_RUN" = 1 ]; then
    ACCELERATOR=cpu
    EPOCHS_SET=(--set train.epochs=1 --set train.max_steps=2)
    STEPS=2
    SMALL=(--set data.batch_size=8 --set data.eval_batch_size=64 --set data.num_workers=0)
    # full precision: bf16 autocast on a CPU is far slower for iFormer-S than fp32 (a 105 s step at batch 1)
    TRAIN_STEP=(--device cpu --amp none --batch-size 1 --rounds 1 --warmup 0 --threads 2 --no-memory)
    TRAIN_STEP_PRECISION=32-true
    LOADER=(--threads 2 --items 64 --rounds 1)
else
    ACCELERATOR=cuda
    EPOCHS_SET=(--set train.epochs=2)
    STEPS=5
    SMALL=()
    TRAIN_STEP=(--device cuda --amp bf16 --batch-size 128 --rounds 10 --warmup 2)
    TRAIN_STEP_PRECISION=bf16-mixed
    LOADER=(--threads 8)
fi
COMMON=(--set train.accelerator=$ACCELERATOR --set train.progress=false --set "out_dir=$OUT/runs")
FAILED=0

# check NAME PRECISION_ASKED PRECISION_USED COMMAND...: run COMMAND, log it, and record {check, status, seconds}
check() {
    local name="$1" asked="$2" used="$3"
    shift 3
    local start end status code
    echo "== $name ($used): $*"
    start=$(date +%s.%N)
    "$@" >"$OUT/logs/$name.log" 2>&1
    code=$?
    end=$(date +%s.%N)
    if [ "$code" = 0 ]; then status=ok; else status=failed; FAILED=1; tail -5 "$OUT/logs/$name.log"; fi
    printf '{"check": "%s", "precision": "%s", "precision_used": "%s", "status": "%s", "exit": %d, "seconds": %s, "log": "logs/%s.log", "dry_run": %s}\n' \
        "$name" "$asked" "$used" "$status" "$code" "$(awk "BEGIN {printf \"%.1f\", $end - $start}")" "$name" \
        "$([ "$DRY_RUN" = 1 ] && echo true || echo false)" >"$OUT/$name.check.json"
}

VITLAB=("$PYTHON" -m vitlab)

# 1. supervised resnet18 on digits, the run's own precision (32-true)
check resnet18_digits 32-true 32-true "${VITLAB[@]}" train -c recipes/supervised/resnet18_digits.yaml \
    "${COMMON[@]}" "${EPOCHS_SET[@]}" "${SMALL[@]}" --set name=resnet18_digits --overwrite

# 2. the teacher of the data-free quantizers, then every manual-optimisation method under both mixed precisions
check resnet20_digits_teacher 32-true 32-true "${VITLAB[@]}" train -c recipes/quant/resnet20_digits_teacher.yaml \
    "${COMMON[@]}" --set train.epochs=1 --set train.max_steps=$((STEPS * 4)) "${SMALL[@]}" \
    --set name=resnet20_digits_teacher --overwrite
TEACHER="$OUT/runs/resnet20_digits_teacher/last.ckpt"
for precision in 16-mixed bf16-mixed; do
    used=$precision
    if [ "$DRY_RUN" = 1 ] && [ "$precision" = 16-mixed ]; then used=bf16-mixed; fi
    STEP_SET=(--set train.epochs=1 --set train.max_steps=$STEPS --set train.precision=$used)
    check "hat_$precision" "$precision" "$used" "${VITLAB[@]}" train -c recipes/hat/vit_tiny_digits.yaml \
        "${COMMON[@]}" "${STEP_SET[@]}" "${SMALL[@]}" --set "name=hat_$precision" --overwrite
    check "mugs_$precision" "$precision" "$used" "${VITLAB[@]}" train -c recipes/mugs/vit_tiny_digits.yaml \
        "${COMMON[@]}" "${STEP_SET[@]}" "${SMALL[@]}" --set "name=mugs_$precision" --overwrite
    for method in gdfq clusterq; do
        check "${method}_$precision" "$precision" "$used" "${VITLAB[@]}" quantize \
            -c "recipes/quant/${method}_resnet20_digits.yaml" --ckpt "$TEACHER" --method "$method" --wbits 4 --abits 4 \
            "${COMMON[@]}" "${STEP_SET[@]}" --set "method.iters_per_epoch=$STEPS" "${SMALL[@]}" \
            --set "name=${method}_$precision" --overwrite
    done
done

# 3. training images/s of iFormer-S, DeiT-S and Swin-T under bf16 autocast
check train_step bf16-mixed "$TRAIN_STEP_PRECISION" "$PYTHON" benchmarks/bench_train_step.py "${TRAIN_STEP[@]}" \
    --out "$OUT/train_step.json"

# 4. the loader benchmark, where this checkout has it
if [ -f benchmarks/bench_loader.py ]; then
    check loader - - "$PYTHON" benchmarks/bench_loader.py "${LOADER[@]}" --out "$OUT/loader.json"
fi

"$PYTHON" benchmarks/bench_gpu_report.py "$OUT" || FAILED=1
exit $FAILED
