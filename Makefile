# One command each: `make app` (set up, then run the studio), `make test` (set up, then lint and test).
.PHONY: setup setup-dev app test lint bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

app: setup
	.venv/bin/python app.py

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: setup-dev lint
	OMP_NUM_THREADS=1 .venv/bin/python -m pytest
