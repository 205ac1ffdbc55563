#!/usr/bin/env bash
# The CUDA path in one run (about 6 minutes on an H100): samples/s per network on one GPU
# (paper-style fp32 baseline, fp32 and bf16 with channels-last at batch 32 and 128), the summed
# samples/s of 1, 2, 4 and 8 trainers sharing that GPU, and the accuracy-parity line under bf16.
# Figures go to stdout and to $OUT/gpu_check.txt when OUT is set.
#
#   bash benchmarks/gpu_check.sh            # needs torch with CUDA and nasopt's dependencies
#
# The accuracy-parity part needs the phantom cache of studies/demo.toml (storage/cache/phantom-*,
# built here by `make demo`); it is skipped when no cache is there.
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
  if ls storage/cache/phantom-*.safetensors >/dev/null 2>&1; then
    "$py" benchmarks/accuracy_parity.py --device cuda --study studies/demo.toml --jobs 3 --threads 12
  else
    echo "accuracy parity skipped: no phantom cache under storage/cache (run make demo first)"
  fi
} 2>&1 | tee "$log"
