#!/usr/bin/env bash
# A LeNet5 from outside the repository through vitlab's commands (issue 20; docs/api.md shows the output).
#
#   bash experiments/outside_model.sh > results/outside_model.txt      # about 5 minutes on 2 shared CPU cores
#
# examples/lenet5.py is copied to a temporary folder ($DIR), trained briefly on the bundled digits at 28 x 28 (the file
# as the backbone of `vitlab train`), its weights taken out as a plain state dict, then attacked on foolbox-mnist and
# on an image folder, quantised to int8, and loaded into the wrong network. VITLAB is the command (default: vitlab).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VITLAB=${VITLAB:-vitlab}
PYTHON=${PYTHON:-python}
DIR=${TMPDIR:-/tmp}/vitlab_outside_model
rm -rf "$DIR" && mkdir -p "$DIR"
cp "$REPO/examples/lenet5.py" "$DIR/lenet5.py"
cd "$DIR"
LENET="$DIR/lenet5.py:LeNet5"

show() {  # the command ($DIR for the folder), then the lines of its output that match $1
  local pattern=$1; shift
  local shown=${*//$REPO\//}
  echo "\$ vitlab ${shown//$DIR/\$DIR}"
  { $VITLAB "$@" 2>&1 || true; } | { grep -E "$pattern" || true; } | { grep -v "^\[" || true; } | sed "s|$DIR|\$DIR|g"
  echo
}

show '^\{' train -c "$REPO/recipes/supervised/resnet18_digits.yaml" --set name=lenet5 --set out_dir="$DIR/runs" \
  --set model.name="$LENET" --set model.normalize=false --set data.channels=1 --set data.img_size=28 \
  --set train.epochs=4 --set train.progress=false
show '^wrote' export --ckpt "$DIR/runs/lenet5/last.ckpt" --out "$DIR/export"
$PYTHON -c "import torch; from safetensors.torch import load_file; torch.save(load_file('export/model.safetensors'), 'lenet5.pt')"
$PYTHON - <<'PY'
import pathlib, re, shutil
import foolbox
for png in sorted((pathlib.Path(foolbox.__file__).parent / "data").glob("mnist_*.png")):  # 20 real MNIST test images
    folder = pathlib.Path("mnist_images") / re.match(r"mnist_\d\d_(\d)\.png", png.name).group(1)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(png, folder / png.name)
for digit in range(10):
    (pathlib.Path("mnist_images") / str(digit)).mkdir(exist_ok=True)  # the folders name the labels: 0..9
PY
echo "# weights: \$DIR/lenet5.pt, a plain state dict ($(${PYTHON} -c "import torch; print(', '.join(torch.load('lenet5.pt', weights_only=True)))"))"
echo

show '^\{' eval --model "$LENET" --weights lenet5.pt --data foolbox-mnist
show 'accuracy' attack --model "$LENET" --weights lenet5.pt --data foolbox-mnist --attack apgd-ce --eps 0.3 --steps 20 \
  --out attack_foolbox.json
show 'accuracy' attack --model "$LENET" --weights lenet5.pt --data image_folder --data-root mnist_images \
  --input-size 1,28,28 --attack apgd-ce --eps 0.3 --steps 20 --out attack_folder.json
show '^\{' analyze frequency --model "$LENET" --weights lenet5.pt --data foolbox-mnist --radii 2,4,8 --delta-eps 0 \
  --out freq
show '^wrote' export --model "$LENET" --weights lenet5.pt --input-size 1,28,28 --format int8 --data digits \
  --out int8
show '^\{' eval --ckpt int8/model_int8.ckpt --data foolbox-mnist
show '^\{' eval --ckpt int8/model_int8.ckpt --data digits
show '^\{' eval --model "$LENET" --weights lenet5.pt --input-size 1,28,28 --data digits
show '^error' quantize -c "$REPO/recipes/quant/zeroq_resnet20_digits.yaml" --model "$LENET" --weights lenet5.pt \
  --input-size 1,28,28 --set out_dir="$DIR/runs"
show '^error' attack --model cifar_resnet18 --weights lenet5.pt --data foolbox-cifar10 --attack pgd
show '^error' attack --model "$LENET" --model-args num_classes=100 --weights lenet5.pt --data foolbox-mnist --attack pgd
