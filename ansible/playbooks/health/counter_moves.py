#!/usr/bin/env python3
"""A declared health check for the rollout playbook: does the deployment's packet counter move?

usage: counter_moves.py --map PINNED_MAP --cgroup CGROUP_DIR [--key N] [--packets N]

Reads the u64 at the start of entry KEY of the pinned array map (bpftool), sends PACKETS UDP
datagrams over loopback from a child process placed in CGROUP_DIR, and reads the entry again.
Prints {"before": .., "after": .., "moved": ..} as JSON; exits 0 when the counter moved by at
least PACKETS, 1 when it did not, 2 when it could not look.
"""

import argparse
import json
import os
import socket
import subprocess
import sys


def read_counter(pin, key):
    argv = ["bpftool", "-j", "map", "lookup", "pinned", pin, "key"] + [str(b) for b in key.to_bytes(4, "little")]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), out.stderr.strip() or out.stdout.strip()))
    entry = json.loads(out.stdout)
    formatted = entry.get("formatted", {}).get("value")
    if isinstance(formatted, dict):
        return int(next(iter(formatted.values())))
    raw = bytes(int(b, 16) for b in entry["value"][:8])
    return int.from_bytes(raw, "little")


def traffic(cgroup, packets):
    pid = os.fork()
    if pid == 0:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("127.0.0.1", 0))
            rx.settimeout(2)
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(packets):
                tx.sendto(b"health %d" % i, rx.getsockname())
                rx.recv(64)
            os._exit(0)
        except BaseException as exc:  # the child must never return into the parent's code
            print("traffic failed: %r" % (exc,), file=sys.stderr)
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("the traffic generator failed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--map", required=True)
    ap.add_argument("--cgroup", required=True)
    ap.add_argument("--key", type=int, default=1)
    ap.add_argument("--packets", type=int, default=20)
    args = ap.parse_args()
    try:
        before = read_counter(args.map, args.key)
        traffic(args.cgroup, args.packets)
        after = read_counter(args.map, args.key)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    moved = after - before
    print(json.dumps({"before": before, "after": after, "moved": moved}))
    return 0 if moved >= args.packets else 1


if __name__ == "__main__":
    sys.exit(main())
