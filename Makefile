# The README's two commands: `make demo` (main job on the embedded default) and `make test` (whole suite).
# Each sets itself up: it creates .venv when missing and installs the pinned requirements once.
# The dense CRF (requirements-crf.txt) is optional: setup tries it and goes on without it when it does not build;
# CRF=0 (e.g. `make setup CRF=0`, `make test CRF=0`) does not try it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hpnb-installed
CRF    ?= 1
# PIP_FLAGS: extra pip options, e.g. an offline classroom: make setup PIP_FLAGS="--no-index --find-links wheelhouse"
PIP_FLAGS ?=
WHEELHOUSE ?= wheelhouse
CRF_LOG := $(VENV)/crf-install.log
CRF_LATER := To add it later: $(VENV)/bin/pip install -r requirements-crf.txt
CRF_FAILED := note: the optional dense CRF (pydensecrf2) did not build (it needs a C++ compiler; pip's log: \
  $(CRF_LOG)); everything else works, CRF steps are skipped. $(CRF_LATER)
CRF_SKIPPED := note: CRF=$(CRF), so the optional dense CRF (pydensecrf2) is not installed; CRF steps are skipped. \
  $(CRF_LATER)

.PHONY: warm setup demo test lint format lab student wheelhouse browser-test book clean-cache

# --no-compile: pip does not byte-compile every installed module (torch's thousands: ~30 s of the install); Python
# compiles what is imported, once.
$(STAMP): requirements.txt requirements-crf.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_FLAGS) pip==26.3
	$(PY) -m pip install -q --no-compile $(PIP_FLAGS) -r requirements.txt
	$(PY) -m pip install -q $(PIP_FLAGS) --no-deps -e .
ifeq ($(filter 0 no false off,$(CRF)),)
	@$(PY) -m pip install $(PIP_FLAGS) -r requirements-crf.txt >$(CRF_LOG) 2>&1 || echo "$(CRF_FAILED)"
else
	@echo "$(CRF_SKIPPED)"
endif
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m hpnb demo

NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout 300

LINTED := hpnb tests benchmarks tools notebooks docs/book conftest.py

# lint: ruff's checks (pyflakes, bugbear, import order) and its format check, notebooks' code cells included
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

# format: fix what ruff can, then re-clean the notebooks' JSON (outputs are kept)
format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)
	$(PY) tools/clean_notebooks.py notebooks/*.ipynb

# The committed notebook outputs are CPU runs: the suite pins the CPU (hpnb.utils.pick_device reads HPNB_DEVICE), so a
# machine with a GPU checks the same numbers. `make lab` does not pin it: on a GPU machine the notebooks use the GPU.
test: export HPNB_DEVICE = cpu
# OpenMP threads sleep at a barrier instead of spinning: two processes share the 2 cores here, and a spinning thread
# takes the core its process's preempted thread needs (beside a 1-thread process a 2-thread backbone run is ~30 %
# faster so, and alone no slower: benchmarks/results_omp_oversubscription.txt). Results are the same either way.
test: export OMP_WAIT_POLICY = PASSIVE
# Three pytest runs, two at a time: nbval runs the notebooks, each in one kernel that also runs its exercises as the
# student edition has them and its Try-it-yourself prompts (--student-and-prompts) and, for notebook 02, checks that
# nbval fails on exactly three perturbed outputs (--nbval-strictness; ./conftest.py). Beside it, one after the other:
# the unit tests, then the book (`make book`: its sources only, no notebook run), then the tests that need a
# notebook's caches and runs warm or the built book (the browser tests, when Chromium is there), each notebook once
# nbval has run it (--nbval-progress marks it; the Makefile marks nbval's end). All on one thread (OMP_NUM_THREADS=1,
# inherited by the browser's kernels; Sphinx runs with -j 1): nbval's kernels leave about a quarter of 2 cores idle,
# which they fill, while a second 2-thread process would make both fight over the cores (nbval's kernel ~2× slower:
# benchmarks/results_omp_oversubscription.txt). Their output goes to build/*.log and is
# printed when all have ended. Each pytest run names its slowest tests.
PROGRESS := build/nbval-progress
test: $(STAMP) lint
	@mkdir -p build && rm -rf $(PROGRESS)
	@echo "beside nbval: the unit tests (one thread), then the book, then the browser tests; output in \
	build/unit_tests.log, build/book.log and build/after_notebooks.log, printed at the end"
	@( OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=15 -m "not after_notebooks" tests >build/unit_tests.log 2>&1; \
	echo $$? >build/unit_tests.rc; \
	$(PY) tools/book.py -q >build/book.log 2>&1; echo $$? >build/book.rc; \
	OMP_NUM_THREADS=1 HPNB_NBVAL_PROGRESS=$(PROGRESS) $(PY) -m pytest -q -rs --durations=5 -m after_notebooks tests \
	>build/after_notebooks.log 2>&1; echo $$? >build/after_notebooks.rc ) & \
	side=$$!; \
	$(PY) -m pytest -q -rs --durations=25 $(NBVAL) --student-and-prompts --nbval-strictness \
	--nbval-progress $(PROGRESS) notebooks; nbval=$$?; \
	mkdir -p $(PROGRESS) && touch $(PROGRESS)/finished; wait $$side; \
	unit=$$(cat build/unit_tests.rc); book=$$(cat build/book.rc); after=$$(cat build/after_notebooks.rc); \
	echo "--- unit tests (exit $$unit), run beside nbval:"; cat build/unit_tests.log; \
	echo "--- the book (exit $$book), built beside nbval once the unit tests ended:"; cat build/book.log; \
	echo "--- tests after the notebooks (exit $$after), run beside nbval once the book was built:"; \
	cat build/after_notebooks.log; \
	echo "make test: nbval exit $$nbval, unit tests exit $$unit, book exit $$book, after the notebooks exit $$after"; \
	test $$nbval = 0 && test $$unit = 0 && test $$book = 0 && test $$after = 0

# browser-test: every notebook with widgets in JupyterLab, and the book's pages (built first when stale), in headless
# Chromium (Playwright); needs `apt-get install chromium`. `make test` runs it too when Chromium is there, and says how
# to get it when it is not (one skip line for the notebooks, one for the book).
browser-test: $(STAMP)
	$(PY) -m pytest -q -rs -m browser tests/test_browser.py

# book: the series as a static site in build/book/html/ (open index.html): the notebooks with their committed outputs
# (none is run), the glossary, docs/*.md and the README, rendered offline by Sphinx + myst-nb (tools/book.py, config in
# docs/book/). Any Sphinx warning fails it; it prints the build time and the page count.
book: $(STAMP)
	$(PY) tools/book.py

# student: the student edition of the notebooks (solutions of the exercises stubbed, their outputs cleared)
student:
	$(PYTHON) tools/student.py notebooks build/student

# wheelhouse: every pinned wheel (and the CRF's source) downloaded into $(WHEELHOUSE)/ on a machine with internet, for
# an offline classroom: copy the folder over, then `make setup PIP_FLAGS="--no-index --find-links wheelhouse"`.
# Wheels are for the platform and Python of the machine that downloads them: make one wheelhouse per platform, on a
# machine of that platform (docs/workshop.md says why `pip download --platform` does not do it for this lock).
wheelhouse:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip download -q -d $(WHEELHOUSE) pip==26.3 -r requirements.txt -r requirements-crf.txt setuptools wheel
	@echo "$(WHEELHOUSE)/: $$(ls $(WHEELHOUSE) | wc -l) files"

# warm: run every notebook once, top to bottom, keeping nothing but what the runs leave behind: the converted
# backbone and the feature caches (data/cache/), the notebooks' trained runs (runs/). A student's first run of a
# notebook then takes seconds. The notebooks themselves are not written.
warm: $(STAMP)
	$(PY) tools/run_notebooks.py --warm notebooks/0*.ipynb
	@du -sh data/cache runs 2>/dev/null || true

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean-cache:
	rm -rf data/cache
