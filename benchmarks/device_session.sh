#!/usr/bin/env bash
# The GPU checks of one lent GPU session, as one bounded script (device time is scarce: no second try).
#
# The lent machine has its own image (Python 3.12, PyTorch with CUDA, numpy 2, SciPy, OpenCV, onnxruntime;
# no internet, no genmocap install). Prepare here, then carry ``gpu_carry/`` (git-ignored, < 64 MiB):
#   gpu_carry/wheels/    cp312 wheels of what the image lacks (pydantic + core, PyYAML, smplx, ffmpeg-python, onnx,
#                        pytest): pip download --only-binary=:all: --python-version 3.12 --no-deps ...
#   gpu_carry/fixtures/  ../shared/fixtures/{gem_parity,perception_parity} (reduced checkpoints, body model)
# and run ``bash benchmarks/device_session.sh`` there with $OUT set. Each step has its own time limit and
# writes its output to $OUT, so a step that runs out of time still leaves the others' figures.
set -u
OUT=${OUT:-/tmp/genmocap-device}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "$name: rc=$? in $((SECONDS - t0)) s" | tee -a "$OUT/steps.txt"
}

# wheels are zip files: unpacked as they are when the image has no pip
$PY -m pip install -q --no-index --no-deps --target /tmp/genmocap-pylib gpu_carry/wheels/*.whl >"$OUT/pip.txt" 2>&1 ||
  for w in gpu_carry/wheels/*.whl; do $PY -m zipfile -e "$w" /tmp/genmocap-pylib; done
export PYTHONPATH=/tmp/genmocap-pylib:$PWD GENMOCAP_SHARED=$PWD/gpu_carry PYTHONUNBUFFERED=1

{
  nvidia-smi
  $PY -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"
  command -v ffmpeg ffprobe || echo "no ffmpeg/ffprobe"
  nproc
} >"$OUT/env.txt" 2>&1

step pytest 90 $PY -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_onnx_import.py
step precision 150 $PY benchmarks/precision.py --device cuda --json
step throughput_default 110 $PY benchmarks/throughput.py --device cuda --precision default --budget-s 80 --json
step throughput_fp32 110 $PY benchmarks/throughput.py --device cuda --precision fp32 --budget-s 80 --json
step throughput_bf16 110 $PY benchmarks/throughput.py --device cuda --precision bf16 --budget-s 80 --json
step throughput_bf16_b128 110 $PY benchmarks/throughput.py --device cuda --precision bf16 --batch 128 --budget-s 80 --json
echo done >>"$OUT/steps.txt"
