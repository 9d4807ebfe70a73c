# prfaas — the two commands of the README are `make run` and `make test`.
#
# Both create .venv (python3 -m venv) and install the package with its extras the first time;
# later calls skip the install while pyproject.toml is unchanged (a stamp in .venv holds its
# hash). Variables you may set on the command line:
#   PYTHON       interpreter that creates .venv            (default: python3)
#   PYTEST_ARGS  what `make test` passes to pytest         (default: tests)
#                e.g. make test PYTEST_ARGS='tests/unit -k crds'
#   MAIN_ARGS    what the main job of `make run` works on  (default: the local sample;
#                add --netns as root for a tc-shaped link between two namespaces)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prfaas-install-stamp
PYTEST_ARGS ?= tests
MAIN_ARGS ?= crds/samples/local.yaml
LINT_PATHS := planner operator engine_images prfaas
# mypy and import-linter cannot follow the editable install's folder → package mapping
# (operator/ is prfaas.operator), so they check the package through a tree of links with the
# real names.
TYPECHECK_TREE := build/typecheck

.PHONY: help install run test lint crds chart clean

help:
	@echo "make run    set up .venv if needed, then run the main job (prfaas up $(MAIN_ARGS))"
	@echo "make test   set up .venv if needed, then run the test suite (PYTEST_ARGS=$(PYTEST_ARGS))"
	@echo "make lint   ruff check and mypy over $(LINT_PATHS), and the import contracts"
	@echo "make crds   regenerate crds/ and charts/prfaas/crds/ from operator/api/models.py"
	@echo "make chart  lint the Helm chart and render it (CHART_ARGS='--set image.repository=R'), offline"
	@echo "make clean  remove .venv and build outputs"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip runs as .venv/bin/pip, never `python -m pip`: -m puts the current folder first on
# sys.path, where operator/ would shadow the standard library's operator module.
# torch first and pinned, so pip takes the CPU wheel on this machine's disk rather than a
# multi-GB CUDA build; torchvision & co. do not import beside it; nixl without its torch pin.
#
# Prometheus and promtool (`prfaas up --prometheus`, the e2e and alert-rule tests) come from the
# distribution, unpinned: apt-get as root when either is missing, otherwise a message saying what
# to install (the tests that need them are then skipped, naming the reason).
install: $(BIN)/python
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "prfaas: installing Prometheus and promtool (apt-get install prometheus)"; \
			apt-get update -qq; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				prometheus >/dev/null; \
		else \
			echo "prfaas: prometheus/promtool not found; install them for prfaas up" \
				"--prometheus and the alert tests: sudo apt-get install prometheus" \
				"(Debian/Ubuntu), or binaries from https://prometheus.io/download/" >&2; \
		fi; \
	fi
	@hash="$$(sha256sum pyproject.toml | cut -d' ' -f1)"; \
	if [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$hash" ]; then \
		echo "prfaas: $(VENV) is up to date"; exit 0; \
	fi; \
	set -x; \
	$(BIN)/pip install --quiet torch==2.13.0; \
	$(BIN)/pip install --quiet -e '.[operator,router,planner,plot,engine,test,dev]'; \
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec; \
	$(BIN)/pip install --quiet --no-deps nixl-cu12==1.5.1 nixl==1.5.1; \
	echo "$$hash" > $(STAMP)

# The main job: the local two-datacenter deployment (engines, router) until Ctrl-C.
run: install
	$(BIN)/prfaas up $(MAIN_ARGS)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

$(TYPECHECK_TREE)/prfaas:
	mkdir -p $@
	ln -sfn ../../../prfaas/__init__.py $@/__init__.py
	ln -sfn ../../../prfaas/__main__.py $@/__main__.py
	ln -sfn ../../../planner $@/planner
	ln -sfn ../../../operator $@/operator
	ln -sfn ../../../engine_images $@/engine

# Last, the import contracts of pyproject.toml ([tool.importlinter]); lint-imports puts its
# working folder first on sys.path, so it runs inside the tree of links.
lint: install $(TYPECHECK_TREE)/prfaas
	$(BIN)/ruff check $(LINT_PATHS)
	MYPYPATH=$(TYPECHECK_TREE) $(BIN)/mypy -p prfaas \
		| sed -e 's#^$(TYPECHECK_TREE)/prfaas/engine/#engine_images/#' \
		      -e 's#^$(TYPECHECK_TREE)/prfaas/\(planner\|operator\)/#\1/#' \
		      -e 's#^$(TYPECHECK_TREE)/prfaas/#prfaas/#'
	cd $(TYPECHECK_TREE) && PYTHONPATH=. $(CURDIR)/$(BIN)/lint-imports --no-logo --no-cache \
		$(CURDIR)/pyproject.toml

crds: install
	$(BIN)/prfaas crds

# Render (as helm template) and lint the chart offline through the Helm SDK: no helm, no cluster.
chart: install
	$(BIN)/prfaas chart --lint charts/prfaas
	$(BIN)/prfaas chart charts/prfaas $(CHART_ARGS)

clean:
	rm -rf $(VENV) build
