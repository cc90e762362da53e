"""The simulated fleet as the tests see it: run playbooks from the controller namespace, act as a host."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/fleet/data"
PLAYBOOKS = REPO / "ansible/playbooks"
DEPLOYMENT = "fleet-counters"
PIN_ROOT = f"/sys/fs/bpf/bpfdeploy/{DEPLOYMENT}"
TRAFFIC_MAP = f"{PIN_ROOT}/maps/fleet_traffic"
APP_CGROUP = "/sys/fs/cgroup/unified/fleet-app"  # as a host sees it: below its own cgroup


@dataclass(frozen=True, slots=True)
class Run:
    rc: int
    stdout: str
    stderr: str
    results: dict  # task name -> host -> result (from the json callback); several plays merged

    def changed(self, task: str) -> dict[str, bool]:
        return {h: bool(r.get("changed")) for h, r in self.results.get(task, {}).items()}

    def failed_hosts(self) -> set[str]:
        return {h for s in [self.stats] for h, v in s.items() if v.get("failures") or v.get("unreachable")}

    @property
    def stats(self) -> dict:
        return self._doc.get("stats", {}) if self._doc else {}

    @property
    def _doc(self):
        try:
            return json.loads(self.stdout[self.stdout.index("{"):])
        except ValueError:
            return None

    def batches(self) -> list[list[str]]:
        """Hosts of each play run of the rollout play, in order (serial: one play run per batch)."""
        doc = self._doc or {}
        out = []
        for play in doc.get("plays", []):
            if play["play"]["name"].startswith("Roll out"):
                hosts = set()
                for task in play["tasks"]:
                    hosts |= set(task["hosts"])
                out.append(sorted(hosts))
        return out


class Fleet:
    def __init__(self, prefix: str, directory: Path, count: int, tmp: Path):
        self.prefix = prefix
        self.dir = directory
        self.tmp = tmp
        self.hosts = [f"{prefix}{i}" for i in range(1, count + 1)]
        self.seen_programs: set[int] = set()
        self.env = dict(os.environ, ANSIBLE_CONFIG=str(directory / "ansible.cfg"),
                        ANSIBLE_HOME=str(directory / "ansible-home"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_STDOUT_CALLBACK="fleet_json",
                        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "tests/fleet/callback"), ANSIBLE_DEPRECATION_WARNINGS="0",
                        PATH=f"{REPO / '.venv/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def host(self, i: int) -> str:
        return self.hosts[i - 1]

    def limit(self, *numbers: int) -> str:
        return ",".join(self.host(i) for i in numbers)

    # -- the controller
    def ctl(self, argv: list[str], timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net=/run/netns/{self.prefix}-ctl", *argv], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def playbook(self, name: str, *args: str, extra: dict | None = None, inventory: list[Path] = (),
                 pipelining: bool = True, limit: str | None = None) -> Run:
        """Run a playbook from the controller namespace. Pipelining (one ssh command per task, the
        module sent on stdin) is on except where a test exercises module transfer over SFTP."""
        argv = ["ansible-playbook", "-i", str(self.dir / "inventory.ini")]
        for inv in inventory:
            argv += ["-i", str(inv)]
        if extra:
            argv += ["-e", json.dumps(extra)]
        if limit:
            argv += ["--limit", limit]
        env = dict(self.env, ANSIBLE_PIPELINING=str(pipelining))
        proc = self.ctl(argv + [str(PLAYBOOKS / name), *args], env=env)
        return Run(proc.returncode, proc.stdout, proc.stderr, _results(proc.stdout))

    def host_vars(self, name: str, values: dict[str, dict]) -> Path:
        """An extra YAML inventory giving some hosts their own variables."""
        path = self.tmp / f"{name}.yml"
        hosts = {h: v for h, v in values.items()}
        path.write_text(json.dumps({"all": {"hosts": hosts}}))
        return path

    # -- acting as a host (its namespaces), for checks the tests make on that host
    def on(self, host: str, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        pid = (self.dir / "hosts" / host / "holder.pid").read_text().strip()
        return subprocess.run(["nsenter", "-t", pid, "-n", "-m", "-u", "-C", *argv], capture_output=True,
                              text=True, check=check, timeout=60)

    def counter(self, host: str, key: int) -> int | None:
        """The packets field of fleet_traffic[key] on HOST (None: not deployed there)."""
        out = self.on(host, ["bpftool", "-j", "map", "lookup", "pinned", TRAFFIC_MAP, "key", str(key), "0", "0", "0"],
                      check=False)
        if out.returncode != 0:
            return None
        return int(json.loads(out.stdout)["formatted"]["value"]["packets"])

    def traffic(self, host: str, packets: int = 20) -> dict:
        """Send PACKETS datagrams from a process in the deployment's cgroup on HOST (the health check script)."""
        out = self.on(host, [str(REPO / ".venv/bin/python"), str(PLAYBOOKS / "health/counter_moves.py"),
                             "--map", TRAFFIC_MAP, "--cgroup", APP_CGROUP, "--packets", str(packets)], check=False)
        return json.loads(out.stdout) | {"rc": out.returncode}

    def programs(self, host: str) -> dict[str, int]:
        """Program pin name -> id under the deployment's pin root on HOST (found through its pins, not names)."""
        out = self.on(host, ["bpftool", "-j", "-f", "prog", "show"])
        found = {}
        for prog in json.loads(out.stdout or "[]"):
            for pin in prog.get("pinned", ()):
                if pin.startswith(f"{PIN_ROOT}/progs/"):
                    found[pin.rsplit("/", 1)[1]] = prog["id"]
        self.seen_programs |= set(found.values())
        return found

    def pins(self, host: str) -> list[str]:
        out = self.on(host, ["find", "/sys/fs/bpf", "-mindepth", "1"], check=False)
        return sorted(line for line in out.stdout.splitlines() if not line.endswith(".debug"))

    def state_files(self, host: str) -> list[str]:
        root = self.dir / "hosts" / host / "state"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock"))

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) HOST's network: its veth end in the controller namespace."""
        subprocess.run(["ip", "-n", f"{self.prefix}-ctl", "link", "set", f"{host}-r", "up" if up else "down"],
                       check=True)

    def close_masters(self) -> None:
        """End ControlPersist masters (a master on a cut link makes ssh wait for ServerAlive)."""
        for sock in (self.dir / "cp").glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)


def _results(stdout: str) -> dict:
    try:
        doc = json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return {}
    out: dict = {}
    for play in doc.get("plays", []):
        for task in play.get("tasks", []):
            out.setdefault(task["task"]["name"], {}).update(task["hosts"])
    return out


def summary_of(run: Run) -> str:
    """What to print when a playbook did not do what a test expected."""
    text = run.stdout
    msgs = re.findall(r'"msg": "([^"]{0,400})', text)
    return f"rc={run.rc}\nstderr: {run.stderr[-2000:]}\nmessages: {msgs[:20]}"
