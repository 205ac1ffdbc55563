#!/usr/bin/env bash
# The CUDA path in one run (about 6 minutes on an H100): samples/s per network on one GPU
# (paper-style fp32 baseline, fp32 and bf16 with channels-last at batch 32 and 128), the summed
# samples/s of 1, 2, 4 and 8 trainers sharing that GPU, and the accuracy-parity line under bf16.
# Figures go to stdout and to $OUT/gpu_check.txt when OUT is set.
#
#   bash benchmarks/gpu_prepare.sh    # here: wheels the GPU image lacks, and the phantom cache
#   bash benchmarks/gpu_check.sh      # there, carrying .whl and the cache file gpu_prepare names
#
# It installs carried wheels (.whl/) itself, and stops in one line, before any GPU time, when an
# input is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/gpu-site"
fi
"$py" benchmarks/gpu_check_inputs.py check
log="${OUT:-/tmp}/gpu_check.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  "$py" benchmarks/train_throughput.py --device cuda --archs 0 1 2 --precision paper-style fp32 bf16 \
    --batch 32 128 --seconds 1 --repeats 3
  "$py" benchmarks/train_throughput.py --device cuda --archs 0 1 --precision bf16 --batch 32 \
    --workers 1 2 4 8 --seconds 2 --repeats 3 --threads 16
  "$py" benchmarks/accuracy_parity.py --device cuda --study studies/demo.toml --set data.max_scans=150 \
    --seeds 0 1 2 3 4 --jobs 3 --threads 12
} 2>&1 | tee "$log"
