# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,
# torch first, pinned: on this project's CPU machines pip takes its CPU build from local disk.
# Elsewhere: TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" (no GPU) or TORCH_SPEC=torch (GPU).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The exact versions the suite last passed with (pip-tools). torch is left out: TORCH_SPEC picks its build.
LOCK := constraints.txt
EXTRAS := dev,postgres,onnx,monai

.PHONY: demo test bench venv upgrade clean-storage

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nasopt launch --workers 2 --study demo --config studies/demo.toml --timeout 300
	$(VENV)/bin/nasopt export --study demo --out storage/demo-ensemble.safetensors --onnx storage/demo-ensemble.onnx
	$(VENV)/bin/nasopt evaluate storage/demo-ensemble.safetensors --figures storage/evaluation
	$(VENV)/bin/nasopt report --study demo --out storage/report

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(VENV)/site
	$(PY) -m pytest -q

# Newest releases that pyproject.toml's ranges allow: re-lock, install them, run the suite.
# Raising an upper bound (optuna, optuna-dashboard) is a change to pyproject.toml, then this.
upgrade: $(VENV)/.installed
	$(PY) -m pip install -q pip-tools
	echo "$(TORCH_SPEC)" > $(VENV)/torch-pin.txt
	$(PY) -m piptools compile -q --upgrade --strip-extras --unsafe-package torch --no-emit-index-url \
	  --no-emit-find-links -c $(VENV)/torch-pin.txt $(foreach e,$(subst $(comma), ,$(EXTRAS)),--extra $(e)) \
	  -o $(LOCK) pyproject.toml
	$(PY) -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $(VENV)/.installed
	$(MAKE) test

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py --workers 1 2 --parity

clean-storage:
	rm -rf storage/nasopt.db* storage/artifacts storage/cache storage/demo-ensemble.* storage/report storage/evaluation
