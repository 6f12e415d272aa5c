# The two commands of the README. Both install what they need first.
#   make book   [PROFILE=smoke]   build the Jupyter Book (offline-readable) into _build/html
#   make test                     run every test, nbval over the chapters included
PROFILE ?= smoke
export CAPSLIB_DATA ?= $(HOME)/.cache/capslib/data
PYTEST_ARGS ?=

.PHONY: book test setup

setup:
	bash scripts/setup.sh

book: setup
	.venv/bin/python -m capslib.book build --profile $(PROFILE) --offline

test:
	bash scripts/setup.sh --browser
	.venv/bin/pytest tests notebooks --nbval-lax --sanitize-with tests/nbval_sanitize.cfg \
	    -p no:cacheprovider --durations=15 $(PYTEST_ARGS)
