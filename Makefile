# Everything also works without make: see scripts/bootstrap.sh.
.PHONY: setup demo test unit kernel fleet fleet-install fleet-up fleet-down record-fixtures reliability bench bench-fleet cli-docs

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

fleet-install:
	BPFDEPLOY_FLEET_INSTALL=1 .venv/bin/python -m pytest -q tests/fleet/test_role.py

fleet-up:
	bash scripts/fleet.sh up $(or $(N),3) $(or $(PREFIX),bpfleet)

fleet-down:
	bash scripts/fleet.sh down $(or $(N),3) $(or $(PREFIX),bpfleet)

# The man page and bash completion, from the argument parser (build/man/bpfdeploy.1, build/completion/bpfdeploy.bash).
cli-docs:
	.venv/bin/python scripts/make-cli-docs.py

record-fixtures:
	bash scripts/record-fixtures.sh

reliability:
	.venv/bin/python bench/reliability.py

bench:
	.venv/bin/python bench/run.py $(BENCH_ARGS)

bench-fleet:
	.venv/bin/python bench/fleet.py $(BENCH_ARGS)

# Install the boot-time unit: bpfdeploy.service runs `bpfdeploy apply --all` on the manifest directory
# (and bpfdeploy-metrics.service, the exporter of the same directory; the man page and bash completion)
# named in /etc/bpfdeploy/bpfdeploy.conf. bpfdeploy itself stays in this checkout's .venv (make setup);
# $(PREFIX)/bin/bpfdeploy is a link to it. An existing bpfdeploy.conf is kept. Nothing is enabled or
# started here: run `systemctl daemon-reload && systemctl enable bpfdeploy.service` on a systemd host.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
BPFDEPLOY_BIN ?= $(CURDIR)/.venv/bin/bpfdeploy

.PHONY: install
install:
	@test -x "$(BPFDEPLOY_BIN)" || { echo "install: $(BPFDEPLOY_BIN) is missing; run make setup first" >&2; exit 1; }
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(UNITDIR)" "$(DESTDIR)$(SYSCONFDIR)/bpfdeploy/manifests"
	ln -sfn "$(BPFDEPLOY_BIN)" "$(DESTDIR)$(PREFIX)/bin/bpfdeploy"
	sed -e 's#/usr/local/bin/bpfdeploy#$(PREFIX)/bin/bpfdeploy#g' -e 's#/etc/bpfdeploy#$(SYSCONFDIR)/bpfdeploy#g' \
	  packaging/systemd/bpfdeploy.service > "$(DESTDIR)$(UNITDIR)/bpfdeploy.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/bpfdeploy.service"
	sed -e 's#/usr/local/bin/bpfdeploy#$(PREFIX)/bin/bpfdeploy#g' -e 's#/etc/bpfdeploy#$(SYSCONFDIR)/bpfdeploy#g' \
	  packaging/systemd/bpfdeploy-metrics.service > "$(DESTDIR)$(UNITDIR)/bpfdeploy-metrics.service"
	chmod 0644 "$(DESTDIR)$(UNITDIR)/bpfdeploy-metrics.service"
	.venv/bin/python scripts/make-cli-docs.py build >/dev/null
	install -D -m 0644 build/man/bpfdeploy.1 "$(DESTDIR)$(PREFIX)/share/man/man1/bpfdeploy.1"
	install -D -m 0644 build/completion/bpfdeploy.bash "$(DESTDIR)$(PREFIX)/share/bash-completion/completions/bpfdeploy"
	test -e "$(DESTDIR)$(SYSCONFDIR)/bpfdeploy/bpfdeploy.conf" || \
	  sed -e 's#/etc/bpfdeploy#$(SYSCONFDIR)/bpfdeploy#g' packaging/bpfdeploy.conf > "$(DESTDIR)$(SYSCONFDIR)/bpfdeploy/bpfdeploy.conf"
	@echo "installed; on a systemd host: systemctl daemon-reload && systemctl enable bpfdeploy.service" \
	  "(and bpfdeploy-metrics.service for the Prometheus exporter)"
