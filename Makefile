# vitlab: `make demo` sets up and runs the tour; `make test` sets up (if needed) and runs the tests.
# `make browser` installs Debian's chromium (as root, with apt-get) when it is missing: `make test-all` needs it for the
# `browser` tests, `make demo` uses it (when present) to check report.html and save runs/demo/report.png.
PYTHON ?= python3
CHROMIUM ?= /usr/bin/chromium
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all browser bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vitlab demo --out runs/demo
	@if [ -x $(CHROMIUM) ]; then $(BIN)/python -m vitlab.demo.browser runs/demo/report.html \
		--screenshot runs/demo/report.png; else echo "no $(CHROMIUM): report not checked in a browser (make browser)"; fi

browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null || \
		{ echo "error: $(CHROMIUM) missing; install Debian's chromium as root: apt-get install chromium" >&2; exit 2; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP) browser
	VITLAB_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m ''

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/mypy

clean:
	rm -rf runs .pytest_cache
