#!/usr/bin/env python3
"""What the Ansible module adds on the target to a no-change run (issue 16).

    sudo .venv/bin/python bench/module_overhead.py [--runs 9]     (bench/run.py calls it too)

A scratch deployment (one cgroup counter) is applied once with bpfdeploy. Then, on this host:

- **bpfdeploy**: `bpfdeploy apply MANIFEST` with nothing to do, as a whole process;
- **module**: the `bpfdeploy.ebpf.deployment` module's own process on the target, as Ansible
  starts it: `python AnsiballZ_deployment.py` (the self-contained file Ansible copies to the
  target and runs; kept with ANSIBLE_KEEP_REMOTE_FILES from one ad-hoc run with
  `remote_src=true`, so the manifest is read on the host and nothing is shipped). That is
  what the module costs the target: AnsiballZ unpacking itself, Ansible's module_utils, the
  module and bpfdeploy's workflow in that process;
- **ansible.builtin.ping on the target**: the same for Ansible's smallest module, which does
  nothing: what any module costs the target before its own work (Python, AnsiballZ, and
  ansible.module_utils.basic, imported and compiled from the payload's zip at every run);
- **ad-hoc ansible** (for reference, not the target's cost): the whole `ansible localhost -c
  local -m bpfdeploy.ebpf.deployment` command, controller side included.

The overhead is module ÷ bpfdeploy − 1 (target: ≤ 20 %); "beyond Ansible's floor" is
(module − ping) ÷ bpfdeploy − 1, what the collection's own code adds. Both run with the same state, build
and probe cache directories and with byte code cached. Everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
BPFDEPLOY = REPO / ".venv" / "bin" / "bpfdeploy"
ANSIBLE = REPO / ".venv" / "bin" / "ansible"
COLLECTIONS = REPO / "ansible" / "collections"
SOURCE = REPO / "bpf" / "cgroup-counters" / "counters.bpf.c"


def _time(argv: list, env: dict, runs: int, check) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True)
        out.append((time.perf_counter() - t0) * 1e3)
        check(r)
    return out


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": len(values)}


def measure(tmp: Path, env: dict, runs: int = 9) -> dict:
    """The three figures and the overhead, on a scratch deployment under tmp (removed after)."""
    if not ANSIBLE.exists():
        return {"error": f"{ANSIBLE} is missing (ansible-core is installed by make setup)"}
    tag = f"m{os.getpid()}"
    work = tmp / f"module-{tag}"
    work.mkdir(parents=True)
    manifest = work / "counters.yaml"
    manifest.write_text(f"""\
version: 1
name: bench-module-{tag}
pin_root: /sys/fs/bpf/bpfdeploy-bench/module-{tag}
objects:
  counters: {{source: {SOURCE}}}
attachments:
  - program: count_ingress
    type: ingress
    cgroup: {{path: bpfdeploy-bench-module-{tag}, create: true}}
""")
    remote_tmp = work / "ansible-remote"
    aenv = dict(env, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_KEEP_REMOTE_FILES="1",
                ANSIBLE_REMOTE_TMP=str(remote_tmp), ANSIBLE_LOCAL_TEMP=str(work / "ansible-local"),
                ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1")
    base = [ANSIBLE, "localhost", "-c", "local", "-i", "localhost,", "-e", f"ansible_python_interpreter={VENV_PY}"]
    adhoc = [*base, "-m", "bpfdeploy.ebpf.deployment", "-a", f"manifest={manifest} remote_src=true"]

    def no_change_apply(r):
        if r.returncode != 0 or "No changes" not in r.stdout:
            raise RuntimeError(f"bpfdeploy apply changed something or failed: {r.stdout[-500:]} {r.stderr[-500:]}")

    def no_change_module(r):
        try:
            result = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"the module printed no JSON: {r.stdout[-500:]} {r.stderr[-500:]}") from None
        if r.returncode != 0 or result.get("changed") or result.get("failed"):
            raise RuntimeError(f"the module changed something or failed: {r.stdout[-800:]}")

    def adhoc_ok(r):
        if r.returncode != 0:
            raise RuntimeError(f"ansible ad-hoc run failed: {r.stdout[-800:]} {r.stderr[-800:]}")

    try:
        subprocess.run([str(BPFDEPLOY), "apply", str(manifest)], env=env, check=True, capture_output=True)
        r = subprocess.run([str(a) for a in adhoc], env=aenv, capture_output=True, text=True)
        adhoc_ok(r)
        adhoc_ok(subprocess.run([str(a) for a in [*base, "-m", "ansible.builtin.ping"]], env=aenv,
                                capture_output=True, text=True))
        zips = sorted(remote_tmp.rglob("AnsiballZ_deployment.py"))
        pings = sorted(remote_tmp.rglob("AnsiballZ_ping.py"))
        if not zips or not pings:
            return {"error": f"no AnsiballZ_deployment.py or AnsiballZ_ping.py kept under {remote_tmp}"}
        payload, ping = zips[-1], pings[-1]
        for _ in range(2):  # warm all three (byte code, page cache)
            subprocess.run([str(VENV_PY), str(payload)], env=env, capture_output=True)
            subprocess.run([str(VENV_PY), str(ping)], env=env, capture_output=True)
            subprocess.run([str(BPFDEPLOY), "apply", str(manifest)], env=env, capture_output=True)
        plain, module, floor = [], [], []
        for _ in range(runs):  # interleaved, so drift on the machine spreads over all three
            plain += _time([BPFDEPLOY, "apply", manifest], env, 1, no_change_apply)
            module += _time([VENV_PY, payload], env, 1, no_change_module)
            floor += _time([VENV_PY, ping], env, 1, adhoc_ok)
        whole = _time(adhoc, aenv, max(3, runs // 3), adhoc_ok)
        p, m, f = _summary(plain), _summary(module), _summary(floor)
        return {"bpfdeploy apply (no change)": p, "module on the target (AnsiballZ)": m,
                "ansible.builtin.ping on the target (AnsiballZ)": f,
                "ansible ad-hoc, whole (controller + target)": _summary(whole),
                "overhead": round(m["median"] / p["median"] - 1, 3),
                "overhead beyond ansible's floor": round((m["median"] - f["median"]) / p["median"] - 1, 3)}
    finally:
        subprocess.run([str(BPFDEPLOY), "destroy", str(manifest)], env=env, capture_output=True)
        if not os.environ.get("BPFDEPLOY_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/module_overhead.py: run as root", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="bpfdeploy-bench-module-"))
    env = dict(os.environ, BPFDEPLOY_STATE_DIR=str(tmp / "state"), BPFDEPLOY_CACHE_DIR=str(tmp / "cache"),
               BPFDEPLOY_PROBE_CACHE=str(tmp / "probe"), PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        result = measure(tmp, env, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
