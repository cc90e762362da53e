#!/usr/bin/env bash
# Build the bpfdeploy.ebpf collection and run ansible-test sanity on it (every test, locally).
#   bash scripts/collection-sanity.sh [ansible-test sanity options, e.g. --test validate-modules]
# ansible-test bootstraps pip in each of its venvs with a get-pip.py it downloads; where that host
# cannot be reached, a stand-in that runs the standard library's ensurepip is put in its cache.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$here/.venv/bin:$PATH" ANSIBLE_HOME="${ANSIBLE_HOME:-$here/build/ansible-home}"
collection="$here/ansible/collections/ansible_collections/bpfdeploy/ebpf"
ansible-galaxy collection build --force --output-path "$here/build/collection" "$collection"
cache="$HOME/.ansible/test/cache"
stand_in="$cache/get_pip_24_2.py"
if [ ! -s "$stand_in" ]; then
  mkdir -p "$cache"
  printf '%s\n' '# stand-in for get-pip.py (bpfdeploy scripts/collection-sanity.sh): pip from ensurepip' \
    'import ensurepip' 'ensurepip.bootstrap(upgrade=True, default_pip=True)' >"$stand_in"
fi
cd "$collection"
ansible-test sanity --local --python 3.11 "$@"
