"""Idempotence, destroy, upgrades that keep map contents, conflicts and legacy attach modes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.traffic import ECHO

COUNTER_SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 8);
} counts SEC(".maps");

SEC("cgroup_skb/ingress")
int count_packets(struct __sk_buff *skb)
{
    __u32 key = KEY;
    __u64 *value = bpf_map_lookup_elem(&counts, &key);
    if (value)
        __sync_fetch_and_add(value, 1);
    return 1;
}

char LICENSE[] SEC("license") = "GPL";
"""


def _counter_manifest(sandbox, key: int, mode: str = "link", cgroup: Path | None = None) -> Path:
    src = sandbox.tmp / "counter.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", str(key)))
    cgroup = cgroup or sandbox.cgroup("upgrade")
    root = f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-counter"
    if Path(root) not in sandbox.pin_roots:
        sandbox.pin_roots.append(Path(root))
    return sandbox.write(f"""
        version: 1
        name: {sandbox.id}-counter
        pin_root: {root}
        objects:
          counter:
            source: {src}
        attachments:
          - name: ingress
            program: count_packets
            type: ingress
            cgroup: {cgroup}
            mode: {mode}
    """)


def _kernel_snapshot(root: Path) -> dict:
    links = json.loads(subprocess.run(["bpftool", "-j", "-f", "link", "show"], capture_output=True, text=True).stdout or "[]")
    return {"progs": prog_ids_under(root),
            "links": sorted((l["id"], l["prog_id"]) for l in links if any(p.startswith(str(root)) for p in l.get("pinned", ())))}


def test_apply_twice_changes_nothing_the_second_time(sandbox):
    manifest = sandbox.example("sockmap-redirect.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    first = sandbox.cli_json("apply", manifest)
    assert first["applied"] and first["mutations"] > 0
    before = _kernel_snapshot(root)

    second = sandbox.cli_json("apply", manifest)
    assert second["applied"] is False
    assert second["plan"]["changes"] is False
    assert second["mutations"] == 0
    # Only reads ran: no bpftool command other than `show`, no clang (build cache hit).
    assert all(c[0] == "bpftool" and c[-1] == "show" for c in second["commands"]), second["commands"]
    assert _kernel_snapshot(root) == before

    text = sandbox.cli("apply", manifest).stdout
    assert "No changes." in text
    assert sandbox.cli("plan", manifest, "--detailed-exitcode", check=False).returncode == 0


def test_plan_detailed_exitcode_reports_pending_changes(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    assert sandbox.cli("plan", manifest, "--detailed-exitcode", check=False).returncode == 2
    assert sandbox.cli("plan", manifest, check=False).returncode == 0
    assert sandbox.cli("apply", manifest, "--check").returncode == 0
    assert sandbox.cli("plan", manifest, "--detailed-exitcode", check=False).returncode == 2  # --check changed nothing


def test_destroy_removes_everything_and_twice_is_harmless(sandbox):
    manifest = sandbox.example("sockmap-redirect.yaml")
    data = yaml.safe_load(manifest.read_text())
    root = Path(data["pin_root"])
    cgroup = Path(data["attachments"][0]["cgroup"]["path"])
    sandbox.cli("apply", manifest)
    assert root.is_dir() and cgroup.is_dir()
    ids = set(prog_ids_under(root).values())

    sandbox.cli("destroy", manifest)
    assert not root.exists()
    assert not cgroup.exists()  # created by the deployment, and empty
    live = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
    assert not ids & {p["id"] for p in live}
    second = sandbox.cli_json("destroy", manifest)
    assert second["plan"]["changes"] is False


def test_destroy_leaves_other_deployments_alone(sandbox):
    a = sandbox.example("cgroup-counters.yaml")
    b = sandbox.example("connect-policy.yaml")
    sandbox.cli("apply", a)
    sandbox.cli("apply", b)
    root_b = Path(yaml.safe_load(b.read_text())["pin_root"])
    before = _kernel_snapshot(root_b)
    sandbox.cli("destroy", a)
    assert _kernel_snapshot(root_b) == before


def test_upgrade_keeps_map_contents_and_runs_the_new_code(sandbox):
    manifest = _counter_manifest(sandbox, key=0)
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-counter")
    sandbox.cli("apply", manifest)
    subprocess.run(["bpftool", "map", "update", "pinned", str(root / "maps/counts"), "key", "7", "0", "0", "0",
                    "value", "42", "0", "0", "0", "0", "0", "0", "0"], check=True)
    old_ids = prog_ids_under(root)

    _counter_manifest(sandbox, key=1, cgroup=sandbox.cgroups[0])  # the new version counts in slot 1
    plan = sandbox.cli_json("plan", manifest)
    kinds = {a["address"]: a for a in plan["actions"]}
    assert kinds["prog/count_packets"]["action"] == "replace"
    assert "changed" in kinds["prog/count_packets"]["reason"]
    assert kinds["attach/ingress"]["action"] == "update"
    assert "atomic" in kinds["attach/ingress"]["transition"]
    assert kinds["map/counts"]["action"] == "no-op"

    sandbox.cli("apply", manifest)
    assert prog_ids_under(root) != old_ids
    values = map_values(root / "maps/counts")
    assert values[7] == 42  # survived the upgrade
    sandbox.run_in(ECHO.format(n=2), cgroup=sandbox.cgroups[0], netns=sandbox.netns())
    values = map_values(root / "maps/counts")
    assert values[1] > 0 and values[0] == 0  # the new code runs, the old one no longer does
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    assert not list(root.rglob("*__bpfdeploy_new"))


def _attach_foreign(sandbox, cgroup: Path, *flags: str) -> Path:
    """Someone else's program, loaded and attached with bpftool outside any deployment."""
    obj = sandbox.tmp / "foreign.o"
    src = sandbox.tmp / "foreign.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", "2"))
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src),
                    "-o", str(obj)], check=True)
    foreign_dir = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-foreign")
    sandbox.pin_roots.append(foreign_dir)
    foreign_dir.mkdir(parents=True)
    subprocess.run(["bpftool", "prog", "load", str(obj), str(foreign_dir / "p")], check=True)
    subprocess.run(["bpftool", "cgroup", "attach", str(cgroup), "ingress", "pinned", str(foreign_dir / "p"), *flags],
                   check=True)
    return foreign_dir / "p"


def test_foreign_program_on_our_hook_is_reported_and_left_alone(sandbox):
    cgroup = sandbox.cgroup("shared")
    manifest = _counter_manifest(sandbox, key=0, cgroup=cgroup)
    foreign = _attach_foreign(sandbox, cgroup, "multi")
    try:
        plan = sandbox.cli_json("plan", manifest)
        assert any("not owned" in c for c in plan["conflicts"]), plan["conflicts"]
        sandbox.cli("apply", manifest)
        sandbox.cli("destroy", manifest)
        shown = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True,
                                          text=True).stdout or "[]")
        assert len(shown) == 1  # the foreign program is still attached
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(cgroup), "ingress", "pinned", str(foreign)],
                       capture_output=True)


def test_exclusive_mode_refuses_a_hook_that_someone_else_holds(sandbox):
    cgroup = sandbox.cgroup("held")
    manifest = _counter_manifest(sandbox, key=0, mode="exclusive", cgroup=cgroup)
    foreign = _attach_foreign(sandbox, cgroup)
    try:
        proc = sandbox.cli("apply", manifest, check=False)
        assert proc.returncode == 1
        assert "conflict" in proc.stdout + proc.stderr
        assert not Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-counter").exists()  # nothing loaded
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(cgroup), "ingress", "pinned", str(foreign)],
                       capture_output=True)


def test_legacy_modes_attach_replace_and_detach(sandbox):
    for mode, flag in (("multi", "multi"), ("override", "override"), ("exclusive", "")):
        cgroup = sandbox.cgroup(f"legacy-{mode}")
        manifest = _counter_manifest(sandbox, key=0, mode=mode, cgroup=cgroup)
        sandbox.cli("apply", manifest)
        shown = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True,
                                          text=True).stdout or "[]")
        assert [(s["attach_type"], s["attach_flags"]) for s in shown] == [("cgroup_inet_ingress", flag)]
        assert sandbox.cli_json("plan", manifest)["changes"] is False
        # upgrade in place
        _counter_manifest(sandbox, key=3, mode=mode, cgroup=cgroup)
        plan = sandbox.cli_json("plan", manifest)
        assert {a["address"]: a["action"] for a in plan["actions"]}["attach/ingress"] == "update"
        sandbox.cli("apply", manifest)
        shown2 = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True,
                                           text=True).stdout or "[]")
        assert len(shown2) == 1 and shown2[0]["id"] != shown[0]["id"]
        sandbox.run_in(ECHO.format(n=1), cgroup=cgroup, netns=sandbox.netns(f"n{mode}"))
        root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-counter")
        assert map_values(root / "maps/counts")[3] > 0
        sandbox.cli("destroy", manifest)
        assert subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True,
                              text=True).stdout.strip() in ("", "[]")
