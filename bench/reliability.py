#!/usr/bin/env python3
"""Reliability figures for the README: what was tried, and what was lost or left behind.

Run as root from the repository (``make reliability`` does this):

    .venv/bin/python bench/reliability.py [--rounds N] [--manifests N] [--seed S] [--json PATH]

Four scenarios, all on the real kernel, each through the ``bpfdeploy`` command line
(``--scenarios abcd`` picks some):

(a) fault injection: a multi-step upgrade of a counter deployment (a replaced program whose
    map holds values, a changed map entry, a new object whose program is attached on a new
    cgroup) is made to fail at every step (BPFDEPLOY_FAIL_AT), ``--rounds`` times. After each
    failure the kernel is compared with the snapshot taken before: programs at their pins,
    links and the programs they hold, every pin, the map's contents, the programs on our
    cgroups, our cgroups.
(b) SIGKILL: apply is stopped before every step (BPFDEPLOY_PAUSE_AT) of a first deployment and
    of the upgrade and killed with SIGKILL; then ``plan`` must succeed and ``apply`` converge:
    a second plan with no changes, no staged ``__bpfdeploy_new`` pins, one program per hook, and
    the map's values kept.
(c) bad manifests: mutants of the bundled examples (the mutation engine of
    tests/unit/test_manifest_fuzz.py, seeded) are given to ``apply`` while those examples are
    deployed under the same names. Each must exit 1 with a diagnostic and no traceback, and the
    kernel must not change: our deployments (pins, program ids, links, map contents), the
    bpffs tree, program ids, the cgroup v2 root's attachments and directories, network
    namespaces. Mutants that are valid (plan succeeds) are counted and skipped, never applied.
(d) confinement (issue 17): with the counter deployment live, a symlink or a pin bpfdeploy did
    not make is put at every kind of place in its pin root (maps/, progs/ or links/ replaced by
    a symlink to a bpffs directory outside; a symlinked directory, a symlink to an outside pin,
    to our own pin, a dangling one; a foreign pin in each directory, at the top, nested, named
    like a staged pin), at the paths a fresh pin root would use, and above a pin root. ``plan``,
    ``apply`` and ``destroy`` must each exit 1 naming the path, never say "No changes", and
    change nothing (pins and their objects under the pin root and the outside directory, the
    bpffs tree by lstat, map contents, hooks); once the placement is removed, the deployment must
    be in sync again.

Everything it creates is named rel<random>: deployments, pin roots under
/sys/fs/bpf/bpfdeploy-bench/, cgroups under the cgroup v2 mount, a network namespace, and a
temporary directory for state and build cache. All of it is removed in a ``finally``, also on
Ctrl-C, and the removal is checked. The exit status is 0 when nothing was lost or left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PIN_BASE = Path("/sys/fs/bpf/bpfdeploy-bench")
FOREIGN_TEST_BASE = Path("/sys/fs/bpf/bpfdeploy-test")  # other runs' kernel test sandboxes
from bpfdeploy.plan import STAGING_SUFFIX  # noqa: E402
# The examples whose only host dependency is the cgroup v2 mount: the base of the bad manifests.
BAD_MANIFEST_BASES = ("cgroup-counters.yaml", "connect-policy.yaml", "sockmap-redirect.yaml")

# The same programs as the rollback tests: a counter with a map, and a new object for a new cgroup.
from tests.kernel.test_rollback import COUNTER_SRC, EXTRA_SRC  # noqa: E402

SEED_KEY, SEED_VALUE = 7, 42  # a value written by hand into the counter map: it must survive everything


def cgroup2_mount() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    raise SystemExit("no cgroup v2 mount in /proc/self/mounts")


def run(argv: list[str], check: bool = False, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


def bpftool_json(*args: str) -> list | dict:
    proc = run(["bpftool", "-j", *args])
    try:
        return json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []


@dataclass
class Problem:
    scenario: str
    what: str
    detail: str


@dataclass
class Figures:
    fault_injection: dict = field(default_factory=lambda: dict(
        steps_per_upgrade=0, faults_injected=0, rolled_back=0, lost_data=0, left_state=0, wrong_exit=0,
        upgrades_completed=0))
    sigkill: dict = field(default_factory=lambda: dict(
        kill_points=0, kills=0, converged=0, failed_to_converge=0, plan_failed_after_kill=0,
        leftovers_shown_by_plan=0, leaked=0, lost_data=0))
    bad_manifests: dict = field(default_factory=lambda: dict(
        generated=0, tried=0, valid_skipped=0, exit_1_with_diagnostic=0, wrong_exit=0, no_diagnostic=0,
        internal_errors=0, known_bugs={}, lost_data=0, kernel_changes=0, unrelated_changes_seen=0))
    confinement: dict = field(default_factory=lambda: dict(
        placements=0, tried=0, refused_unchanged=0, wrong_exit=0, not_named=0, said_no_changes=0, kernel_changes=0,
        restored_in_sync=0))
    final: dict = field(default_factory=lambda: dict(programs_still_count=None, left_behind_after_cleanup=None))
    problems: list[Problem] = field(default_factory=list)


class Bench:
    """The run's own names, resources and CLI; removes everything it made in cleanup()."""

    def __init__(self, seed: int):
        self.id = "rel" + uuid.uuid4().hex[:6]
        self.seed = seed
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bpfdeploy-{self.id}-"))
        self.cgroup_root = cgroup2_mount()
        # TMPDIR: the CLI writes the traceback of an internal error there; read into the report.
        self.env = dict(os.environ, BPFDEPLOY_STATE_DIR=str(self.tmp / "state"),
                        BPFDEPLOY_CACHE_DIR=str(self.tmp / "cache"), TMPDIR=str(self.tmp), NO_COLOR="1",
                        COLUMNS="200")
        for key in ("BPFDEPLOY_FAIL_AT", "BPFDEPLOY_PAUSE_AT", "BPFDEPLOY_PAUSE_FILE"):
            self.env.pop(key, None)
        self.manifests: list[Path] = []  # destroyed in cleanup, newest first
        self.extra_paths: list[Path] = []  # anything a failed run created outside our names
        self.netns_name = ""
        self.children: list[subprocess.Popen] = []
        self.figures = Figures()

    # -- names
    def pin_root(self, suffix: str) -> Path:
        return PIN_BASE / f"{self.id}-{suffix}"

    def cgroup(self, suffix: str) -> Path:
        return self.cgroup_root / f"{self.id}-{suffix}"

    def ours(self, text: str) -> bool:
        return self.id in text

    # -- the CLI
    def cli(self, *args, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "bpfdeploy.cli", *map(str, args)], env=env or self.env, cwd=REPO,
                   timeout=timeout)

    def cli_ok(self, *args) -> subprocess.CompletedProcess:
        proc = self.cli(*args)
        if proc.returncode != 0:
            raise RuntimeError(f"bpfdeploy {' '.join(map(str, args))} exited {proc.returncode}:\n"
                               f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        return proc

    def plan_json(self, manifest: Path) -> tuple[int, dict]:
        proc = self.cli("plan", manifest, "--json")
        try:
            return proc.returncode, json.loads(proc.stdout)
        except json.JSONDecodeError:
            return proc.returncode, {"error": proc.stdout[-500:] + proc.stderr[-500:]}

    def note(self, scenario: str, what: str, detail: str = "") -> None:
        self.figures.problems.append(Problem(scenario, what, detail[-3000:]))

    # -- the counter deployment of (a) and (b)
    def counter_manifest(self, key: int, limit: int, extra: bool) -> Path:
        (self.tmp / "counter.bpf.c").write_text(COUNTER_SRC.replace("KEY", str(key)))
        (self.tmp / "extra.bpf.c").write_text(EXTRA_SRC)
        doc: dict = {
            "version": 1, "name": f"{self.id}-counter", "pin_root": str(self.pin_root("counter")),
            "objects": {"counter": {"source": str(self.tmp / "counter.bpf.c")}},
            "maps": {"counts": {"entries": [{"key": 5, "value": limit}]}},
            "attachments": [{"name": "ingress", "program": "count_packets", "type": "ingress",
                             "cgroup": str(self.cgroup("a"))}],
        }
        if extra:
            doc["objects"]["extra"] = {"source": str(self.tmp / "extra.bpf.c")}
            doc["attachments"].append({"name": "sockets", "program": "allow_sockets", "type": "sock_create",
                                       "cgroup": {"path": str(self.cgroup("b")), "create": True}})
        path = self.tmp / "counter.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        if path not in self.manifests:
            self.manifests.append(path)
        return path

    def seed_map(self) -> None:
        pin = self.pin_root("counter") / "maps" / "counts"
        key = SEED_KEY.to_bytes(4, "little")
        value = SEED_VALUE.to_bytes(8, "little")
        run(["bpftool", "map", "update", "pinned", str(pin), "key", *map(str, key), "value", *map(str, value)],
            check=True)

    def counter_value(self, key: int) -> int | None:
        return map_contents(self.pin_root("counter") / "maps" / "counts").get(key.to_bytes(4, "little").hex())

    # -- snapshots
    def deployment_snapshot(self, roots: list[Path], cgroups: list[Path]) -> dict:
        """Everything of our deployments: what (a) and (b) compare and what (c) must not change."""
        progs = bpftool_json("-f", "prog", "show")
        maps = bpftool_json("-f", "map", "show")
        links = bpftool_json("-f", "link", "show")

        def under(pins) -> list[str]:
            return sorted(p for p in pins or () if any(p.startswith(str(r) + "/") for r in roots))

        snap: dict = {
            "prog_pins": sorted((pin, p["id"]) for p in progs for pin in under(p.get("pinned"))),
            "map_pins": sorted((pin, m["id"]) for m in maps for pin in under(m.get("pinned"))),
            "links": sorted((tuple(under(l.get("pinned"))), l.get("prog_id")) for l in links if under(l.get("pinned"))),
            "pins": sorted(str(p) for r in roots if r.exists() for p in r.rglob("*")),
            "maps": {pin: map_contents(Path(pin)) for m in maps if _plain_map(m) for pin in under(m.get("pinned"))},
            "hooks": {str(cg): sorted((a.get("attach_type"), a.get("id"), a.get("attach_flags", ""))
                                      for a in bpftool_json("cgroup", "show", str(cg)))
                      for cg in cgroups if cg.exists()},
            "cgroups": sorted(p.name for p in self.cgroup_root.iterdir() if p.name.startswith(self.id)),
        }
        return snap

    def host_snapshot(self) -> dict:
        """What a bad manifest might touch outside our deployments.

        Other processes change the kernel at the same time (other benches and test runs), so
        host_changes() keeps only what the mutant could have caused: see mutant_places().
        """
        progs = bpftool_json("-f", "prog", "show")
        links = bpftool_json("-f", "link", "show")
        pins = []
        for dirpath, dirnames, filenames in os.walk("/sys/fs/bpf"):
            pins += [os.path.join(dirpath, n) for n in dirnames + filenames]
        held = {l.get("prog_id") for l in links if l.get("pinned")}
        return {
            "pins": sorted(pins),
            # Programs that nothing pinned holds: a bad apply could leave one attached somewhere.
            "orphans": {p["id"]: p.get("name", "") for p in progs if not p.get("pinned") and p["id"] not in held},
            "root_hooks": sorted((a.get("attach_type"), a.get("id"))
                                 for a in bpftool_json("cgroup", "show", str(self.cgroup_root))),
            "cgroup_dirs": sorted(str(p) for p in self.cgroup_root.iterdir() if p.is_dir()),
            "netns": sorted(line.split()[0] for line in run(["ip", "netns", "list"]).stdout.splitlines()
                            if line.strip()),
        }

    def mutant_places(self, text: str, program_names: set[str]) -> tuple[list[str], set[str]]:
        """What a mutant could make apply touch: the paths and names it mentions, as pin roots
        (given or default), cgroups (absolute or relative) and netns names; and the kernel
        names of the programs it could load."""
        try:
            doc = yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - not YAML: take every word of the text
            doc = re.split(r"[\s:{}\[\],'\"]+", text)
        strings: set[str] = set()

        def walk(value) -> None:
            if isinstance(value, str):
                strings.add(value)
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(k)
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        walk(doc)
        places = set()
        for text_ in strings:
            if not text_ or "\x00" in text_ or len(text_) > 4000:
                continue
            if text_.startswith("/"):
                places.add(os.path.normpath(text_))
            else:
                places |= {os.path.normpath(self.cgroup_root / text_),
                           os.path.normpath(f"/sys/fs/bpf/bpfdeploy/{text_}"), text_}
        generic = {"/", "/sys", "/sys/fs", "/sys/fs/bpf", "/sys/fs/cgroup", str(self.cgroup_root), "/proc", "/etc"}
        return sorted(places - generic), {n[:15] for n in program_names}

    def host_changes(self, before: dict, after: dict, places: list[str], programs: set[str]
                     ) -> tuple[list[str], list[str]]:
        """(changes the mutant could have made, changes other processes made)."""
        def mine(path: str) -> bool:
            return self.ours(path) or any(path == p or path.startswith(p + "/") for p in places)

        ours, foreign = [], []
        for key in ("pins", "cgroup_dirs", "netns", "root_hooks"):
            for sign, items in (("+", set(map(str, after[key])) - set(map(str, before[key]))),
                                ("-", set(map(str, before[key])) - set(map(str, after[key])))):
                for item in sorted(items):
                    (ours if key == "root_hooks" or mine(item) else foreign).append(f"{key}: {sign} {item}")
        for pid, name in sorted(after["orphans"].items()):
            if pid not in before["orphans"]:
                (ours if name in programs else foreign).append(f"unpinned program: + {pid} ({name})")
        return ours, foreign

    # -- resources
    def make_netns(self) -> str:
        self.netns_name = f"{self.id}-ns"
        run(["ip", "netns", "add", self.netns_name], check=True)
        run(["ip", "-n", self.netns_name, "link", "set", "lo", "up"], check=True)
        return self.netns_name

    def cleanup(self) -> list[str]:
        """Remove everything this run made; return what could not be removed."""
        for child in self.children:
            if child.poll() is None:
                child.kill()
                child.wait()
        env = dict(self.env)
        for manifest in reversed(self.manifests):
            if manifest.exists():
                self.cli("destroy", manifest, "--lock-timeout", "10", env=env)
        for root in sorted(PIN_BASE.glob(f"{self.id}-*")) if PIN_BASE.exists() else ():
            shutil.rmtree(root, ignore_errors=True)
        try:
            PIN_BASE.rmdir()
        except OSError:
            pass
        for path in reversed(self.extra_paths):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True) if str(path).startswith("/sys/fs/bpf/") else _rmdir_tree(path)
            elif path.exists():
                path.unlink(missing_ok=True)
        for cg in sorted(self.cgroup_root.glob(f"{self.id}-*")):
            _rmdir_tree(cg)
        if self.netns_name:
            run(["ip", "netns", "del", self.netns_name])
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> list[str]:
        out = [str(p) for p in PIN_BASE.glob(f"{self.id}-*")] if PIN_BASE.exists() else []
        out += [str(p) for p in self.cgroup_root.glob(f"{self.id}-*")]
        out += [str(p) for p in self.extra_paths if p.exists()]
        if self.netns_name and self.netns_name in run(["ip", "netns", "list"]).stdout:
            out.append(f"netns {self.netns_name}")
        out += [f"prog {p['id']} pinned at {pin}" for p in bpftool_json("-f", "prog", "show")
                for pin in p.get("pinned", ()) if self.id in pin]
        return out


def _rmdir_tree(path: Path) -> None:
    for child in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            child.rmdir()
        except OSError:
            pass
    try:
        path.rmdir()
    except OSError:
        pass


def _plain_map(m: dict) -> bool:
    return m.get("type") in ("hash", "array", "lru_hash", "lpm_trie")


def map_contents(pin: Path) -> dict[str, str]:
    """A pinned map's entries as {key hex: value hex}."""
    proc = run(["bpftool", "-j", "map", "dump", "pinned", str(pin)])
    try:
        entries = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return {"<unreadable>": proc.stderr.strip()}
    out = {}
    for e in entries:
        if "key" in e and "value" in e:
            out[_hex(e["key"])] = _hex(e["value"])
    return out


def _hex(value) -> str:
    if isinstance(value, list):
        return "".join(x.removeprefix("0x").zfill(2) if isinstance(x, str) else f"{x:02x}" for x in value)
    return json.dumps(value, sort_keys=True)


def _crash_traceback(output: str) -> str:
    """The traceback file an internal error names ("traceback in PATH"), read before cleanup removes it."""
    import re

    found = re.search(r"traceback in (\S+?)\)", output)
    if not found:
        return ""
    try:
        return Path(found.group(1)).read_text()
    except OSError:
        return ""


def _diff(before: dict, after: dict) -> list[str]:
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)]


def _steps(plan: dict) -> list[str]:
    return [a["address"] for a in plan.get("actions", ()) if a["action"] not in ("no-op", "delete")]


# ---------------------------------------------------------------------------------------------
# (a) fault injection


def fault_injection(b: Bench, rounds: int) -> None:
    fig = b.figures.fault_injection
    roots, cgroups = [b.pin_root("counter")], [b.cgroup("a"), b.cgroup("b")]
    v1 = b.counter_manifest(key=0, limit=1, extra=False)
    b.cli_ok("apply", v1)
    b.seed_map()
    for r in range(rounds):
        before = b.deployment_snapshot(roots, cgroups)
        b.counter_manifest(key=1, limit=2, extra=True)
        code, plan = b.plan_json(v1)
        steps = _steps(plan)
        fig["steps_per_upgrade"] = len(steps)
        if code != 0 or len(steps) < 5:
            b.note("fault injection", "the upgrade plan is not what the bench expects", json.dumps(plan)[:2000])
            return
        for step in steps:
            fig["faults_injected"] += 1
            proc = b.cli("apply", v1, env=dict(b.env, BPFDEPLOY_FAIL_AT=step))
            after = b.deployment_snapshot(roots, cgroups)
            output = proc.stdout + proc.stderr
            if proc.returncode != 1 or "injected failure" not in proc.stderr or "Traceback" in output:
                fig["wrong_exit"] += 1
                b.note("fault injection", f"apply failing at {step} exited {proc.returncode}", output)
            if "Rolled back" in proc.stderr:
                fig["rolled_back"] += 1
            if after["maps"] != before["maps"]:
                fig["lost_data"] += 1
                b.note("fault injection", f"map contents changed after a failure at {step}",
                       "\n".join(_diff(before["maps"], after["maps"])))
            rest_before = {k: v for k, v in before.items() if k != "maps"}
            rest_after = {k: v for k, v in after.items() if k != "maps"}
            if rest_after != rest_before:
                fig["left_state"] += 1
                b.note("fault injection", f"kernel state changed after a failure at {step}",
                       "\n".join(_diff(rest_before, rest_after)))
        # The upgrade itself, without a fault, then back to v1 for the next round.
        b.cli_ok("apply", v1)
        code, plan = b.plan_json(v1)
        values_kept = b.counter_value(SEED_KEY) == SEED_VALUE.to_bytes(8, "little").hex()
        if code == 0 and not plan.get("changes") and values_kept:
            fig["upgrades_completed"] += 1
        else:
            b.note("fault injection", "the upgrade after the faults did not converge or lost the seeded value",
                   json.dumps(plan)[:2000])
        b.counter_manifest(key=0, limit=1, extra=False)
        b.cli_ok("apply", v1)
        if r == 0:
            print(f"  fault injection: {len(steps)} steps per upgrade: {', '.join(steps)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# (b) SIGKILL


def sigkill(b: Bench, rounds: int) -> None:
    fig = b.figures.sigkill
    roots, cgroups = [b.pin_root("counter")], [b.cgroup("a"), b.cgroup("b")]
    manifest = b.counter_manifest(key=0, limit=1, extra=False)
    b.cli_ok("destroy", manifest)  # start from nothing: the first deployment is killed too
    marker_n = 0
    for r in range(rounds):
        for phase in ("first deployment", "upgrade"):
            if phase == "first deployment":
                b.counter_manifest(key=0, limit=1, extra=False)
            else:
                b.counter_manifest(key=1, limit=2, extra=True)
            code, plan = b.plan_json(manifest)
            steps = _steps(plan)
            if r == 0:
                fig["kill_points"] += len(steps)
            for step in steps:
                marker = b.tmp / f"paused-{marker_n}"
                marker_n += 1
                env = dict(b.env, BPFDEPLOY_PAUSE_AT=step, BPFDEPLOY_PAUSE_FILE=str(marker))
                child = subprocess.Popen([sys.executable, "-m", "bpfdeploy.cli", "apply", str(manifest)], env=env,
                                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                b.children.append(child)
                deadline = time.monotonic() + 120
                while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not marker.exists():
                    child.kill()
                    b.note("sigkill", f"apply never paused at {step}", child.communicate()[1] or "")
                    b.children.remove(child)
                    continue
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
                b.children.remove(child)
                fig["kills"] += 1
                converged = _converge_after_kill(b, manifest, step, roots, cgroups, phase)
                fig["converged" if converged else "failed_to_converge"] += 1
                # Back to where this phase starts, for the next kill point.
                if phase == "first deployment":
                    b.cli_ok("destroy", manifest)
                else:
                    b.counter_manifest(key=0, limit=1, extra=False)
                    b.cli_ok("apply", manifest)
                    b.counter_manifest(key=1, limit=2, extra=True)
            if phase == "first deployment":
                b.cli_ok("apply", manifest)
                b.seed_map()
        b.counter_manifest(key=0, limit=1, extra=False)
        b.cli_ok("apply", manifest)
        b.cli_ok("destroy", manifest)


def _converge_after_kill(b: Bench, manifest: Path, step: str, roots, cgroups, phase: str) -> bool:
    fig = b.figures.sigkill
    ok = True
    code, plan = b.plan_json(manifest)
    if code != 0 or plan.get("diagnostics"):
        fig["plan_failed_after_kill"] += 1
        b.note("sigkill", f"plan after a kill at {step} exited {code}", json.dumps(plan)[:2000])
        ok = False
    elif any(STAGING_SUFFIX in a.get("address", "") or "left over" in a.get("reason", "")
             for a in plan.get("actions", ())):
        fig["leftovers_shown_by_plan"] += 1
    proc = b.cli("apply", manifest)
    if proc.returncode != 0:
        b.note("sigkill", f"apply after a kill at {step} exited {proc.returncode}", proc.stdout + proc.stderr)
        return False
    code, plan = b.plan_json(manifest)
    if code != 0 or plan.get("changes"):
        b.note("sigkill", f"no convergence after a kill at {step}", json.dumps(plan)[:2000])
        ok = False
    snap = b.deployment_snapshot(roots, cgroups)
    staged = [p for p in snap["pins"] if p.endswith(STAGING_SUFFIX)]
    per_hook: dict[tuple, int] = {}
    for cg, hooks in snap["hooks"].items():
        for attach_type, _id, _flags in hooks:
            per_hook[(cg, attach_type)] = per_hook.get((cg, attach_type), 0) + 1
    # Exactly one program per hook the manifest names, and none elsewhere on our cgroups.
    expected = {(str(b.cgroup("a")), "cgroup_inet_ingress"): 1}
    if phase == "upgrade":
        expected[(str(b.cgroup("b")), "cgroup_inet_sock_create")] = 1
    if staged or per_hook != expected:
        fig["leaked"] += 1
        b.note("sigkill", f"leftovers after a kill at {step} and a new apply",
               f"staged pins {staged}; programs per hook {per_hook}, expected {expected}")
        ok = False
    if phase == "upgrade" and b.counter_value(SEED_KEY) != SEED_VALUE.to_bytes(8, "little").hex():
        fig["lost_data"] += 1
        b.note("sigkill", f"the seeded map value is gone after a kill at {step}", json.dumps(snap["maps"]))
        ok = False
    return ok


# ---------------------------------------------------------------------------------------------
# (c) bad manifests


def _our_example(b: Bench, name: str) -> dict:
    """A bundled example renamed into this run's names: deployment, pin root, cgroups, absolute sources."""
    src = REPO / "manifests" / name
    doc = yaml.safe_load(src.read_text())
    stem = doc["name"]
    doc["name"] = f"{b.id}-{stem}"
    doc["pin_root"] = str(b.pin_root(stem))
    for obj in doc["objects"].values():
        for key in ("source", "file"):
            if key in obj:
                obj[key] = str((src.parent / obj[key]).resolve())
    for att in doc.get("attachments", ()):
        if "cgroup" in att:
            spec = att["cgroup"]
            rel = spec if isinstance(spec, str) else spec["path"]
            att["cgroup"] = {"path": str(b.cgroup(Path(rel).name)), "create": True}
    return doc


def bad_manifests(b: Bench, count: int) -> None:
    from bpfdeploy.diagnostics import BpfdeployError
    from bpfdeploy.workflow import prepare
    from tests.unit.test_manifest_fuzz import RandomChooser, known_bug_in_traceback, mutate

    fig = b.figures.bad_manifests
    docs = {name: _our_example(b, name) for name in BAD_MANIFEST_BASES}
    base_programs = set()  # function names in the bases' sources: kernel names a leaked program would have
    for doc in docs.values():
        for obj in doc["objects"].values():
            source = Path(obj.get("source", ""))
            if source.is_file():
                base_programs |= set(re.findall(r"^int\s+(\w+)\s*\(", source.read_text(), re.M))
    roots, cgroups = [], []
    for name, doc in docs.items():
        path = b.tmp / f"base-{name}"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        b.manifests.append(path)
        b.cli_ok("apply", path)
        roots.append(Path(doc["pin_root"]))
        cgroups += [Path(a["cgroup"]["path"]) for a in doc.get("attachments", ()) if "cgroup" in a]
    os.environ["BPFDEPLOY_CACHE_DIR"] = b.env["BPFDEPLOY_CACHE_DIR"]  # for the in-process check below
    os.environ["BPFDEPLOY_STATE_DIR"] = b.env["BPFDEPLOY_STATE_DIR"]
    rng = random.Random(b.seed)
    work = b.tmp / "mutants"
    work.mkdir()
    tried = 0
    while tried < count and fig["generated"] < count * 20:
        mutant = mutate(RandomChooser(rng), docs)
        fig["generated"] += 1
        path = mutant.write(work / f"mutant-{fig['generated']}.yaml")
        # Only bad manifests are applied: a valid mutant would (rightly) change the kernel. A
        # mutant the library refuses is bad; one it accepts is bad only if plan refuses it.
        try:
            prepare(path)
            bad = False
        except BpfdeployError:
            bad = True
        except Exception:  # noqa: BLE001 - a crash of the library (a known bug): still a bad manifest
            bad = True
        if not bad:
            if b.cli("plan", path).returncode == 0:
                fig["valid_skipped"] += 1
                continue
        tried += 1
        fig["tried"] += 1
        deployment_before = b.deployment_snapshot(roots, cgroups)
        host_before = b.host_snapshot()
        proc = b.cli("apply", path, "--lock-timeout", "30")
        output = proc.stdout + proc.stderr
        label = f"mutant {fig['generated']} of {mutant.base} ({'; '.join(mutant.steps)})"
        if proc.returncode == 1 and "error" in proc.stderr and "internal error" not in output \
                and "Traceback" not in output:
            fig["exit_1_with_diagnostic"] += 1
        elif "internal error" in output or "Traceback" in output:
            tb = _crash_traceback(output)
            bug = known_bug_in_traceback(tb)
            if bug:  # found by tests/unit/test_manifest_fuzz.py, reproduced there by a strict xfail
                fig["known_bugs"][bug.test] = fig["known_bugs"].get(bug.test, 0) + 1
            else:
                fig["internal_errors"] += 1
                b.note("bad manifests", f"{label}: internal error", output + "\n" + tb)
        elif proc.returncode != 1:
            fig["wrong_exit"] += 1
            b.note("bad manifests", f"{label}: apply exited {proc.returncode}", output)
        else:
            fig["no_diagnostic"] += 1
            b.note("bad manifests", f"{label}: no diagnostic", output)
        deployment_after = b.deployment_snapshot(roots, cgroups)
        places, programs = b.mutant_places(mutant.text, base_programs)
        ours, foreign = b.host_changes(host_before, b.host_snapshot(), places, programs)
        if ours:  # a program of another process may be between load and pin: look again
            time.sleep(1)
            ours, foreign = b.host_changes(host_before, b.host_snapshot(), places, programs)
        if foreign:
            fig["unrelated_changes_seen"] += 1
        if deployment_after["maps"] != deployment_before["maps"]:
            fig["lost_data"] += 1
            b.note("bad manifests", f"{label}: map contents changed",
                   "\n".join(_diff(deployment_before["maps"], deployment_after["maps"])))
        changes = _diff({k: v for k, v in deployment_before.items() if k != "maps"},
                        {k: v for k, v in deployment_after.items() if k != "maps"}) + ours
        if changes:
            fig["kernel_changes"] += 1
            b.note("bad manifests", f"{label}: the kernel changed", "\n".join(changes) + "\n" + output)
            for line in ours:
                if line.startswith(("pins: + ", "cgroup_dirs: + ")):
                    b.extra_paths.append(Path(line.split(" + ", 1)[1]))
            if proc.returncode == 0:
                b.manifests.append(path)  # applied: destroy it with the rest
        if tried % 10 == 0:
            print(f"  bad manifests: {tried}/{count}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# (d) confinement


# What every entry under a directory is, by lstat: the confinement tests' own snapshot.
from tests.kernel.test_confinement import _tree  # noqa: E402


def _foreign_pin(path: Path) -> None:
    """A pin bpfdeploy did not make: a map created by bpftool."""
    run(["bpftool", "map", "create", str(path), "type", "array", "key", "4", "value", "4", "entries", "1",
         "name", "theirs"], check=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def confinement(b: Bench) -> None:
    """Every symlink and foreign-pin placement under a live pin root (and a fresh one, and above one):
    plan, apply and destroy must each exit 1 naming the path, never say "No changes", and change
    nothing; once the placement is removed, the deployment is in sync again."""
    fig = b.figures.confinement
    root, cgroups = b.pin_root("counter"), [b.cgroup("a"), b.cgroup("b")]
    live = b.counter_manifest(key=0, limit=1, extra=False)
    b.cli_ok("apply", live)
    outside = b.pin_root("outside")
    outside.mkdir(parents=True)
    _foreign_pin(outside / "theirs")
    fresh_root = b.pin_root("fresh")
    fresh = b.tmp / "fresh.yaml"
    fresh.write_text(yaml.safe_dump({"version": 1, "name": f"{b.id}-fresh", "pin_root": str(fresh_root),
                                     "objects": {"counter": {"source": str(b.tmp / "counter.bpf.c")}}}))
    via = PIN_BASE / f"{b.id}-via"
    above = b.tmp / "via.yaml"
    above.write_text(yaml.safe_dump({"version": 1, "name": f"{b.id}-via", "pin_root": str(via / "dep"),
                                     "objects": {"counter": {"source": str(b.tmp / "counter.bpf.c")}}}))

    def moved_dir(d: str):
        def setup() -> None:
            os.rename(root / d, outside / f"moved-{d}")
            os.symlink(outside / f"moved-{d}", root / d)

        def teardown() -> None:
            (root / d).unlink()
            os.rename(outside / f"moved-{d}", root / d)
        return setup, teardown

    def symlink(link: Path, target: Path):
        return (lambda: os.symlink(target, link)), (lambda: link.unlink())

    def pin_at(path: Path):
        def setup() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _foreign_pin(path)
        made_dir = not path.parent.exists()
        return setup, (lambda: _remove(path.parent if made_dir else path))

    placements: list[tuple[str, Path, Path, object, object]] = []  # (what, manifest, named path, setup, teardown)
    for d in ("maps", "progs", "links"):
        placements.append((f"{d}/ replaced by a symlink to a bpffs directory outside", live, root / d, *moved_dir(d)))
    for d in ("maps", "progs", "links", ""):
        where = root / d if d else root
        placements.append((f"a symlinked directory in {d or 'the pin root'}", live, where / "sub",
                           *symlink(where / "sub", outside)))
        placements.append((f"a symlink to an outside pin in {d or 'the pin root'}", live, where / "alias",
                           *symlink(where / "alias", outside / "theirs")))
    placements.append(("a symlink to our own pin", live, root / "maps" / "alias",
                       *symlink(root / "maps" / "alias", root / "maps" / "counts")))
    placements.append(("a dangling symlink", live, root / "progs" / "dangling",
                       *symlink(root / "progs" / "dangling", Path("/sys/fs/bpf/nothing-here"))))
    for rel in ("maps/theirs", "progs/theirs", "links/theirs", "theirs", "maps/sub/theirs", "maps/counts" + STAGING_SUFFIX):
        placements.append((f"a foreign pin at {rel}", live, root / rel, *pin_at(root / rel)))
    for rel in ("maps/counts", "maps/theirs", "progs/count_packets"):  # a fresh pin root, no record yet
        placements.append((f"a foreign pin at {rel} of a fresh pin root", fresh, fresh_root / rel,
                           *pin_at(fresh_root / rel)))
    placements.append(("a symlink above the pin root", above, via, *symlink(via, outside)))

    tops = [root, outside, fresh_root]
    for what, manifest, named, setup, teardown in placements:
        fig["placements"] += 1
        setup()
        try:
            for command in ("plan", "apply", "destroy"):
                fig["tried"] += 1
                before = (b.deployment_snapshot(tops, cgroups), _tree(*(t for t in tops if t.exists())))
                proc = b.cli(command, manifest)
                after = (b.deployment_snapshot(tops, cgroups), _tree(*(t for t in tops if t.exists())))
                output = proc.stdout + proc.stderr
                problems = []
                if proc.returncode != 1 or "Traceback" in output or "internal error" in output:
                    fig["wrong_exit"] += 1
                    problems.append(f"exit {proc.returncode}")
                if str(named) not in output and str(named.relative_to(fresh_root if manifest is fresh else
                                                                      via.parent if manifest is above else root)) \
                        not in output:
                    fig["not_named"] += 1
                    problems.append(f"{named} not named")
                if "No changes" in output:
                    fig["said_no_changes"] += 1
                    problems.append("said 'No changes'")
                if after != before:
                    fig["kernel_changes"] += 1
                    problems.append("the kernel changed: " + "; ".join(
                        _diff(before[0], after[0]) + _diff(before[1], after[1]))[:1500])
                if problems:
                    b.note("confinement", f"{what}: {command}: " + ", ".join(p[:80] for p in problems), output)
                else:
                    fig["refused_unchanged"] += 1
        finally:
            teardown()
        if manifest is live:
            code, plan = b.plan_json(live)
            if code == 0 and not plan.get("changes") and not plan.get("diagnostics"):
                fig["restored_in_sync"] += 1
            else:
                b.note("confinement", f"{what}: not in sync once removed", json.dumps(plan)[:1500])
        else:
            fig["restored_in_sync"] += 1 if not _tree(outside).keys() - {str(outside / "theirs")} else 0
    print(f"  confinement: {fig['placements']} placements, {fig['refused_unchanged']} of {fig['tried']} "
          "commands refused with nothing changed", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# the effect, the report


def programs_still_count(b: Bench) -> bool:
    """After everything: the counter deployment, applied once more, counts a process's packets."""
    manifest = b.counter_manifest(key=1, limit=2, extra=True)
    b.cli_ok("apply", manifest)
    b.seed_map()
    before = int.from_bytes(bytes.fromhex(b.counter_value(1) or "00"), "little")
    code = ("import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "s.bind(('127.0.0.1', 0))\n"
            "for _ in range(20):\n"
            "    s.sendto(b'x', s.getsockname())\n"
            "    s.recv(16)\n")
    netns = b.netns_name or b.make_netns()
    # Join the cgroup first, then the netns: "ip netns exec" would remount /sys and hide the cgroup.
    run(["sh", "-c", f'echo $$ > {b.cgroup("a")}/cgroup.procs && exec "$@"', "sh",
         "nsenter", f"--net=/var/run/netns/{netns}", sys.executable, "-c", code], check=True)
    after = int.from_bytes(bytes.fromhex(b.counter_value(1) or "00"), "little")
    return after >= before + 20


def render(b: Bench, seconds: float, args) -> None:
    from rich.console import Console
    from rich.table import Table

    f = b.figures
    fi, sk, bm = f.fault_injection, f.sigkill, f.bad_manifests
    table = Table(title=f"bpfdeploy reliability: kernel {platform.release()}, {args.rounds} round(s), "
                        f"seed {args.seed}, {seconds:.0f} s")
    for name, justify in (("scenario", "left"), ("tried", "right"), ("came through", "right"),
                          ("lost data", "right"), ("left state behind", "right"), ("other failures", "right")):
        table.add_column(name, justify=justify)
    table.add_row(f"failure injected at each of {fi['steps_per_upgrade']} upgrade steps",
                  str(fi["faults_injected"]), f"{fi['rolled_back']} rolled back", str(fi["lost_data"]),
                  str(fi["left_state"]), str(fi["wrong_exit"]))
    table.add_row(f"SIGKILL at each of {sk['kill_points']} apply steps, then plan + apply", str(sk["kills"]),
                  f"{sk['converged']} converged", str(sk["lost_data"]), str(sk["leaked"]),
                  str(sk["failed_to_converge"] + sk["plan_failed_after_kill"]))
    known = sum(bm["known_bugs"].values())
    table.add_row("bad manifest applied over a live deployment", str(bm["tried"]),
                  f"{bm['exit_1_with_diagnostic']} refused" + (f" (+{known} known bug)" if known else ""),
                  str(bm["lost_data"]), str(bm["kernel_changes"]),
                  str(bm["internal_errors"] + bm["wrong_exit"] + bm["no_diagnostic"]))
    co = f.confinement
    table.add_row(f"a symlink or foreign pin at each of {co['placements']} places in or above a pin root, "
                  "then plan, apply, destroy", str(co["tried"]), f"{co['refused_unchanged']} refused, nothing changed",
                  "0", str(co["kernel_changes"]), str(co["wrong_exit"] + co["not_named"] + co["said_no_changes"]))
    console = Console(width=max(shutil.get_terminal_size((120, 24)).columns, 120))
    console.print(table)
    notes = [
        f"faults: {fi['upgrades_completed']} of {args.rounds} upgrade(s) completed afterwards, map values kept",
        f"kills: {sk['leftovers_shown_by_plan']} plan(s) named leftovers of the killed apply",
        f"bad manifests: {bm['generated']} mutants, {bm['valid_skipped']} valid ones skipped (never applied), "
        f"{bm['internal_errors']} unknown internal errors, {bm['wrong_exit']} other exit codes, "
        f"{bm['no_diagnostic']} without a diagnostic; other processes changed the kernel during "
        f"{bm['unrelated_changes_seen']} of them (not counted)",
        f"confinement: {co['restored_in_sync']} of {co['placements']} deployments in sync again once the placement "
        f"was removed; {co['not_named']} refusals did not name the path, {co['said_no_changes']} said 'No changes'",
    ]
    if bm["known_bugs"]:
        notes.append("refused with an internal error of a known bug (exit 1; strict xfail in "
                     "tests/unit/test_manifest_fuzz.py): "
                     + ", ".join(f"{name} x{n}" for name, n in sorted(bm["known_bugs"].items())))
    notes.append(f"programs still count packets afterwards: {f.final['programs_still_count']}; "
                 f"left behind after cleanup: {f.final['left_behind_after_cleanup'] or 'nothing'}")
    for line in notes:
        console.print(line, highlight=False)
    for p in f.problems:
        console.print(f"[red]{p.scenario}[/]: {p.what}", highlight=False)
        if p.detail:
            console.print(p.detail[-1500:], markup=False, highlight=False)


def failed(f: Figures) -> bool:
    fi, sk, bm = f.fault_injection, f.sigkill, f.bad_manifests
    return bool(f.problems or fi["lost_data"] or fi["left_state"] or fi["wrong_exit"] or sk["lost_data"]
                or sk["leaked"] or sk["failed_to_converge"] or sk["plan_failed_after_kill"] or bm["lost_data"]
                or bm["kernel_changes"] or bm["internal_errors"] or bm["wrong_exit"] or bm["no_diagnostic"]
                or not f.final["programs_still_count"] or f.final["left_behind_after_cleanup"]
                or f.confinement["refused_unchanged"] != f.confinement["tried"]
                or f.confinement["restored_in_sync"] != f.confinement["placements"])


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of fault injection and of SIGKILL (default 3)")
    parser.add_argument("--manifests", type=int, default=100, help="bad manifests to apply (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the manifest mutations (default 1)")
    parser.add_argument("--scenarios", default="abcd",
                        help="which scenarios to run: a faults, b kills, c bad manifests, d confinement (default abcd)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "reliability.json",
                        help="where to write the figures (default bench/results/reliability.json)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/reliability.py changes the kernel: run it as root", file=sys.stderr)
        return 2
    for tool in ("bpftool", "clang", "ip"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2

    signal.signal(signal.SIGTERM, _interrupt)  # ends the run like Ctrl-C: through the finally below
    b = Bench(args.seed)
    print(f"run {b.id}: pin roots {PIN_BASE}/{b.id}-*, cgroups {b.cgroup_root}/{b.id}-*, state {b.tmp}",
          file=sys.stderr)
    t0 = time.monotonic()
    interrupted = False
    try:
        run(["ip", "netns", "list"], check=True)
        b.cgroup("a").mkdir()
        for letter, title, scenario, arg in (("a", "fault injection", fault_injection, (args.rounds,)),
                                             ("b", "SIGKILL", sigkill, (args.rounds,)),
                                             ("c", "bad manifests", bad_manifests, (args.manifests,)),
                                             ("d", "confinement", confinement, ())):
            if letter in args.scenarios:
                print(f"({letter}) {title}", file=sys.stderr)
                scenario(b, *arg)
        b.figures.final["programs_still_count"] = programs_still_count(b)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - reported, then cleaned up
        import traceback

        b.note("bench", f"the bench itself failed: {exc!r}", traceback.format_exc())
    finally:
        # A second Ctrl-C must not stop the cleanup half-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        b.figures.final["left_behind_after_cleanup"] = b.cleanup()
    if interrupted:
        left = b.figures.final["left_behind_after_cleanup"]
        print(f"cleaned up; left behind: {left or 'nothing'}", file=sys.stderr)
        return 130
    seconds = time.monotonic() - t0
    render(b, seconds, args)
    out = {"format_version": 1, "run": b.id, "kernel": platform.release(),
           "bpftool": run(["bpftool", "version"]).stdout.splitlines()[0] if shutil.which("bpftool") else "",
           "params": {"rounds": args.rounds, "manifests": args.manifests, "seed": args.seed},
           "seconds": round(seconds, 1), "ok": not failed(b.figures), **asdict(b.figures)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if failed(b.figures) else 0


if __name__ == "__main__":
    sys.exit(main())
