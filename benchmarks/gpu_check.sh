#!/usr/bin/env bash
# The CUDA path in one run (about 6 minutes on an H100): samples/s per network on one GPU
# (paper-style fp32 baseline, fp32 and bf16 with channels-last at batch 32 and 128), the summed
# samples/s of 1, 2, 4 and 8 trainers sharing that GPU, and the accuracy-parity line under bf16.
# Figures go to stdout and to $OUT/gpu_check.txt when OUT is set.
#
#   bash benchmarks/gpu_check.sh            # needs torch with CUDA and nasopt's dependencies
#
# On a lent GPU machine, whose image has torch but not nasopt's other imports, prepare here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl optuna==5.0.0 \
#     colorlog==6.12.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
#   .venv/bin/nasopt data prepare --config studies/demo.toml --set data.max_scans=150   # 42 MB cache
# then run, carrying .whl and that cache file (storage/cache/phantom-7cd3ad425a0e225f.safetensors):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site bash benchmarks/gpu_check.sh
# The parity part is skipped when that cache is not there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
log="${OUT:-/tmp}/gpu_check.txt"
py="${PYTHON:-python3}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  "$py" benchmarks/train_throughput.py --device cuda --archs 0 1 2 --precision paper-style fp32 bf16 \
    --batch 32 128 --seconds 1 --repeats 3
  "$py" benchmarks/train_throughput.py --device cuda --archs 0 1 --precision bf16 --batch 32 \
    --workers 1 2 4 8 --seconds 2 --repeats 3 --threads 16
  if [ -f storage/cache/phantom-7cd3ad425a0e225f.safetensors ]; then
    "$py" benchmarks/accuracy_parity.py --device cuda --study studies/demo.toml --set data.max_scans=150 \
      --seeds 0 1 2 3 4 --jobs 3 --threads 12
  else
    echo "accuracy parity skipped: no phantom cache (see the top of this script)"
  fi
} 2>&1 | tee "$log"
