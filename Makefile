# Set-up and entry points. `make test` and `make demo` work on a fresh machine: they create the
# virtual environment and install what is missing first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2

.PHONY: all install iverilog test demo bench bitstream sweep lint clean

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) iverilog

# Icarus Verilog is the one tool that does not come from PyPI. Install it when we are root;
# otherwise the Icarus tests skip and say why.
iverilog:
	@if ! command -v iverilog >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && apt-get install -y -q iverilog) >/dev/null || \
	      echo "warning: apt-get install iverilog failed; Icarus tests will skip"; \
	  else \
	    echo "note: iverilog missing and not root; Icarus tests will skip"; \
	  fi; \
	fi

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/lpu demo

# Figures recorded under docs/results (see docs/area.md, docs/stream.md, docs/boards.md). Takes a while: the
# stream suite compiles several full-size designs; bench sim runs the shipped model under cocotb.
bench: install
	$(VENV)/bin/lpu bench area --record
	$(VENV)/bin/lpu bench area --decoder --record
	$(VENV)/bin/lpu bench stream --suite --record
	$(VENV)/bin/lpu bench sim --record
	$(VENV)/bin/lpu bench memory --record
	$(VENV)/bin/lpu bench density --record

# A board's bitstream and build report (docs/boards.md): make bitstream BOARD=ulx3s-85f
BOARD ?= icebreaker
bitstream: $(STAMP)
	$(VENV)/bin/lpu build --board $(BOARD) --json

# A board's design-space sweep, built in parallel on the local cores and recorded as
# docs/sweep-BOARD.md, .png and docs/results/sweep-BOARD.json. Long: one place and route per
# configuration. make sweep BOARD=ulx3s-85f SWEEP_ARGS="--lanes 16,32,64 --pes 1,2,4 --jobs 1"
SWEEP_ARGS ?=
sweep: $(STAMP)
	$(VENV)/bin/lpu sweep --board $(BOARD) --record $(SWEEP_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf build .pytest_cache
