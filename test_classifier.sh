#!/usr/bin/env bash
# The whole test suite: an end-to-end run of the quick-start commands on tiny settings, then
# pytest over tests/ (its summary line ends the output). Offline throughout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== End-to-end: generate, train, predict (tiny settings, in $work)"
(
  cd "$work"
  python "$here/classifier.py" --generate-data --per-class 12 --image-size 32
  python "$here/classifier.py" --check-data data --image-size 32
  python "$here/train.py" --model vit-tiny --no-pretrained --image-size 32 --epochs 1 --batch-size 16 \
    --num-workers 1
  python "$here/predict.py" --image sample.jpg --top-k 3
  python "$here/predict.py" --image samples --json predictions.json --visualize predictions.png
  test -s checkpoints/best/model.safetensors && test -s checkpoints/metrics.csv && test -s predictions.png
  if python "$here/train.py" --epochs 1 >offline.log 2>&1; then
    echo "expected the default pretrained model to be unavailable offline"; exit 1
  fi
  grep -q -- "--no-pretrained" offline.log && ! grep -q Traceback offline.log
)
echo "== End-to-end passed"

cd "$here"
python -m pytest tests/ "$@"
