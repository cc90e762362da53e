#!/usr/bin/env python3
"""Fleet rollout timings (issue 13): a 3-host rollout over SSH and a no-change re-run.

    python bench/fleet.py [--hosts 3] [--runs 3] [--pipelining]      (as root; make bench-fleet)

Builds a simulated fleet with scripts/fleet.sh (its own prefix; removed at the end, also on
failure), then times, as whole ansible-playbook processes run from the controller namespace:
the first rollout of tests/fleet/data/manifests/fleet-v1.yaml (every host changes; the build
happens on each host), re-runs that change nothing, an upgrade to fleet-v2.yaml, and a
destroy. The rollout uses the playbook's default batches (a canary of one, then 50 %, then
the rest) and the counter health check. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "tests/fleet/data/manifests"
PLAYBOOKS = REPO / "ansible/playbooks"
HEALTH = ["--map", "/sys/fs/bpf/bpfdeploy/fleet-counters/maps/fleet_traffic",
          "--cgroup", "/sys/fs/cgroup/unified/fleet-app", "--packets", "20"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="no-change re-runs to time")
    ap.add_argument("--pipelining", action="store_true", help="ssh pipelining on (default: off, modules over SFTP)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/fleet.py: run as root", file=sys.stderr)
        return 1
    prefix = "bfb" + uuid.uuid4().hex[:5]
    directory = Path("/tmp") / prefix
    env = dict(os.environ, FLEET_DIR=str(directory), FLEET_NET="10.214.1")
    script = ["bash", str(REPO / "scripts/fleet.sh")]
    t0 = time.monotonic()
    up = subprocess.run(script + ["up", str(args.hosts), prefix], env=env, capture_output=True, text=True)
    fleet_up = time.monotonic() - t0
    try:
        if up.returncode != 0:
            print(up.stdout + up.stderr, file=sys.stderr)
            return 1
        ansible_env = dict(env, ANSIBLE_CONFIG=str(directory / "ansible.cfg"),
                           ANSIBLE_HOME=str(directory / "ansible-home"), ANSIBLE_PIPELINING=str(args.pipelining),
                           PATH=f"{REPO / '.venv/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")

        def play(name: str, extra: dict) -> float:
            start = time.monotonic()
            proc = subprocess.run(["nsenter", f"--net=/run/netns/{prefix}-ctl", "ansible-playbook",
                                   str(PLAYBOOKS / name), "-e", json.dumps(extra)],
                                  env=ansible_env, capture_output=True, text=True)
            took = time.monotonic() - start
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
            return took

        def rollout(manifest: str) -> float:
            return play("rollout.yml", {"rollout_manifest": str(MANIFESTS / manifest),
                                        "rollout_health_script": str(PLAYBOOKS / "health/counter_moves.py"),
                                        "rollout_health_args": " ".join(HEALTH)})

        rows = [("fleet up (scripts/fleet.sh)", [fleet_up])]
        rows.append(("first rollout, every host changes", [rollout("fleet-v1.yaml")]))
        rows.append(("re-run, no host changes", [rollout("fleet-v1.yaml") for _ in range(args.runs)]))
        rows.append(("upgrade to v2, every host changes", [rollout("fleet-v2.yaml")]))
        rows.append(("destroy.yml", [play("destroy.yml", {"destroy_deployment": "fleet-counters"})]))
    finally:
        t0 = time.monotonic()
        subprocess.run(script + ["down", str(args.hosts), prefix], env=env, capture_output=True)
        down = time.monotonic() - t0
    rows.append(("fleet down", [down]))
    print(f"bpfdeploy fleet bench: {args.hosts} simulated hosts over SSH, pipelining "
          f"{'on' if args.pipelining else 'off'}, batches [1, 50%, 100%], load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'what':40} {'median s':>9} {'min s':>7} {'max s':>7} {'runs':>5}")
    for what, times in rows:
        print(f"{what:40} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f} {len(times):5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
