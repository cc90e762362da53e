#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for bpfdeploy (as root), then run one job:
#   bash scripts/bootstrap.sh demo   plan and apply manifests/sockmap-redirect.yaml, then plan again
#   bash scripts/bootstrap.sh test   run the whole test suite, kernel tests included
#   bash scripts/bootstrap.sh setup  only the set-up
# Safe to run again: installed packages, the virtual environment and mounts are kept.
set -euo pipefail
job=${1:-setup}
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: run as root (bpfdeploy loads BPF programs and installs Debian packages)" >&2
  exit 1
fi

# Debian packages: the BPF tool chain, iproute2, and Python's venv; openssh-client for ssh-keygen
# (signed artifacts: bpfdeploy build --sign-key, apply --allowed-signers); strace for the test that
# proves a deploy from artifacts starts no clang; openssh-server for the simulated fleet (tests/fleet:
# each test host runs its own sshd; the machine-wide one is never started, below); systemd for
# `systemd-analyze verify` of the boot unit (on a machine whose PID 1 is not systemd its maintainer
# scripts start nothing: every systemctl call in them is guarded by /run/systemd/system; they write
# machine-id, sysusers and tmpfiles entries).
packages=(bpftool clang llvm libbpf-dev iproute2 python3 python3-venv make golang-go openssh-client strace
          openssh-server systemd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # No service may start from an install (openssh-server would start a machine-wide sshd):
  # the standard Debian policy-rc.d switch, only while we install and only if none is there.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get install -y -q "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# The Python package, in a virtual environment of Debian's python3 (no pyenv shim on the hot path).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bpfdeploy, yaml, jsonschema, rich, pytest, hypothesis, prometheus_client, ansible.module_utils' 2>/dev/null; then
  echo "bootstrap: creating .venv"
  /usr/bin/python3 -m venv .venv
  log=$(mktemp)
  # compat: a plain path entry, not an import hook (the hook costs milliseconds at every start)
  if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test,fleet]' --config-settings editable_mode=compat \
      >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
fi

# Byte code written once: with PYTHONDONTWRITEBYTECODE set, every run would compile the sources again.
.venv/bin/python -m compileall -q bpfdeploy >/dev/null

# The man page and bash completion, generated from the parser at set-up (never at run time).
.venv/bin/python scripts/make-cli-docs.py >/dev/null

# The program the uprobe example traces.
if [ ! -x build/uprobe-target ] || [ bpf/uprobe-demo/target.c -nt build/uprobe-target ]; then
  mkdir -p build
  clang -O1 -g -o build/uprobe-target bpf/uprobe-demo/target.c
fi

# The Go program the uprobe-go example traces.
if [ ! -x build/uprobe-go-target ] || [ bpf/uprobe-go/main.go -nt build/uprobe-go-target ]; then
  mkdir -p build
  (cd bpf/uprobe-go && GOCACHE="${GOCACHE:-/tmp/bpfdeploy-gocache}" GOFLAGS=-mod=mod go build -o ../../build/uprobe-go-target .)
fi

# bpffs: not mounted on a fresh machine.
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != "bpf_fs" ]; then
  echo "bootstrap: mounting bpffs on /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

case "$job" in
  setup) echo "bootstrap: ready; run .venv/bin/bpfdeploy --help" ;;
  demo)
    manifest=manifests/sockmap-redirect.yaml
    .venv/bin/bpfdeploy validate "$manifest"
    .venv/bin/bpfdeploy apply "$manifest"
    echo
    echo "== planning again: nothing should change =="
    .venv/bin/bpfdeploy plan "$manifest" --detailed-exitcode
    ;;
  test)
    export BPFDEPLOY_REQUIRE_KERNEL=1   # kernel tests must run, not skip
    rc=0
    .venv/bin/python -m pytest -q -p no:cacheprovider tests "${@:2}" || rc=$?
    if [ "$rc" = 5 ]; then echo "bootstrap: no tests ran" >&2; exit 1; fi
    exit "$rc"
    ;;
  *) echo "bootstrap: unknown job '$job' (demo, test or setup)" >&2; exit 2 ;;
esac
