# Everything also works without make: see scripts/bootstrap.sh.
.PHONY: setup demo test unit kernel fleet fleet-up fleet-down record-fixtures reliability bench bench-fleet

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

# The Ansible collection over SSH against simulated hosts (root; see tests/fleet/README.md).
fleet:
	.venv/bin/python -m pytest -q tests/fleet

fleet-up:
	bash scripts/fleet.sh up $(or $(N),3) $(or $(PREFIX),bpfleet)

fleet-down:
	bash scripts/fleet.sh down $(or $(N),3) $(or $(PREFIX),bpfleet)

record-fixtures:
	bash scripts/record-fixtures.sh

reliability:
	.venv/bin/python bench/reliability.py

bench:
	.venv/bin/python bench/run.py $(BENCH_ARGS)

bench-fleet:
	.venv/bin/python bench/fleet.py $(BENCH_ARGS)
