#!/usr/bin/env bash
# SUN from the command line on a fresh clone (docs/sun.md, "From the command line"): `vitlab train` of stage 1
# (teacher), stage 2 (SUN student) and stage 3 (Meta-Baseline meta-tuning) with a tiny budget through --set, then
# `vitlab eval --episodes`, and one bad input (more ways than the novel split has classes: exit code 2).
#
# Usage: experiments/sun_cli.sh [REPO [BRANCH]]    (default: this checkout and its branch)
#   PYTHON=/path/to/python experiments/sun_cli.sh  (a Python with vitlab's dependencies; default: python)
# Prints every command as `$ ...`, the lines it printed that carry a result (the run's start, its final metrics, the
# episode table, an error) and its exit code. docs/sun.md shows one such output, saved in results/sun/cli.txt by
#   experiments/sun_cli.sh > results/sun/cli.txt
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
REPO=${1:-$HERE}
BRANCH=${2:-$(git -C "$REPO" rev-parse --abbrev-ref HEAD)}
PYTHON=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

git clone -q --branch "$BRANCH" "$REPO" "$WORK/vitlab"
cd "$WORK/vitlab"
export PYTHONPATH="$PWD/src" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "# fresh clone of $BRANCH at $(git rev-parse --short HEAD); $("$PYTHON" -c 'import torch; print("torch", torch.__version__)')"

# `vitlab ARGS...`: echo the command (as `vitlab ...`), run it, keep the result lines, print the exit code.
vitlab() {
    echo "\$ vitlab $*"
    local log="$WORK/log.txt" rc=0
    "$PYTHON" -m vitlab "$@" >"$log" 2>&1 || rc=$?
    # the run's start, its final evaluation (a JSON line), the episode table rows, error lines
    grep -E '^\[[0-9:]+\] starting|^\{"|^[a-z_]+ / [a-z_]+: |^head |^(cosine|euclidean|logistic) |^error:' "$log" |
        sed -E 's/^\[[0-9:]+\] //' || true
    echo "(exit code $rc)"
}

TINY=(--set train.epochs=1 --set data.train_per_class=60 --set method.fewshot.episodes=100
      --set train.progress=false --set out_dir=runs)
vitlab train -c recipes/sun/digits_teacher.yaml "${TINY[@]}"
vitlab train -c recipes/sun/digits_sun.yaml "${TINY[@]}" --set method.teacher_ckpt=runs/sun_digits_teacher/last.ckpt
vitlab train -c recipes/sun/digits_meta.yaml "${TINY[@]}" --set method.init_ckpt=runs/sun_digits_sun/last.ckpt \
    --set method.episodes_per_epoch=40
vitlab eval --ckpt runs/sun_digits_meta/last.ckpt --episodes --n-episodes 2000 --ci t \
    --out runs/sun_digits_meta/episodes.json
vitlab eval --ckpt runs/sun_digits_meta/last.ckpt --episodes --ways 6
