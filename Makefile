# Everything also works without make: see scripts/bootstrap.sh.
.PHONY: setup demo test unit kernel record-fixtures reliability bench

setup:
	bash scripts/bootstrap.sh setup

demo:
	bash scripts/bootstrap.sh demo

test:
	bash scripts/bootstrap.sh test

unit:
	.venv/bin/python -m pytest -q tests/unit

kernel:
	.venv/bin/python -m pytest -q tests/kernel

record-fixtures:
	bash scripts/record-fixtures.sh

reliability:
	.venv/bin/python bench/reliability.py

bench:
	.venv/bin/python bench/run.py $(BENCH_ARGS)
