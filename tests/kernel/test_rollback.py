"""A failed apply leaves the kernel exactly as it was: programs, links, map contents, cgroups."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.test_lifecycle import COUNTER_SRC

EXTRA_SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup/sock_create")
int allow_sockets(struct bpf_sock *sk) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""


def _manifest(sandbox, key: int, limit: int, with_extra: bool) -> Path:
    src = sandbox.tmp / "counter.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", str(key)))
    (sandbox.tmp / "extra.bpf.c").write_text(EXTRA_SRC)
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-rb")
    if root not in sandbox.pin_roots:
        sandbox.pin_roots.append(root)
    extra_obj = f"""
          extra:
            source: {sandbox.tmp}/extra.bpf.c""" if with_extra else ""
    extra_att = f"""
          - name: sockets
            program: allow_sockets
            type: sock_create
            cgroup: {{path: {sandbox.cgroup_root}/{sandbox.id}-new, create: true}}""" if with_extra else ""
    return sandbox.write(f"""
        version: 1
        name: {sandbox.id}-rb
        pin_root: {root}
        objects:
          counter:
            source: {src}{extra_obj}
        maps:
          counts:
            entries:
              - {{key: 5, value: {limit}}}
        attachments:
          - name: ingress
            program: count_packets
            type: ingress
            cgroup: {sandbox.cgroups[0]}{extra_att}
    """)


def _snapshot(sandbox, root: Path) -> dict:
    links = json.loads(subprocess.run(["bpftool", "-j", "-f", "link", "show"], capture_output=True, text=True).stdout or "[]")
    ours = sorted((tuple(l.get("pinned", ())), l["prog_id"]) for l in links
                  if any(p.startswith(str(root)) for p in l.get("pinned", ())))
    pins = sorted(str(p) for p in root.rglob("*"))
    cgroups = sorted(p.name for p in sandbox.cgroup_root.iterdir() if p.name.startswith(sandbox.id))
    return {"progs": prog_ids_under(root), "links": ours, "pins": pins, "counts": map_values(root / "maps/counts"),
            "cgroups": cgroups}


def test_failure_at_every_step_rolls_back_to_the_previous_state(sandbox):
    sandbox.cgroup("rb")
    sandbox.cgroups.append(sandbox.cgroup_root / f"{sandbox.id}-new")
    manifest = _manifest(sandbox, key=0, limit=1, with_extra=False)
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-rb")
    sandbox.cli("apply", manifest)
    subprocess.run(["bpftool", "map", "update", "pinned", str(root / "maps/counts"), "key", "7", "0", "0", "0",
                    "value", "42", "0", "0", "0", "0", "0", "0", "0"], check=True)
    before = _snapshot(sandbox, root)

    _manifest(sandbox, key=1, limit=2, with_extra=True)  # replace, update, creates
    plan = sandbox.cli_json("plan", manifest)
    steps = [a["address"] for a in plan["actions"] if a["action"] not in ("no-op", "delete")]
    assert len(steps) >= 5, steps
    for address in steps:
        sandbox.env["BPFDEPLOY_FAIL_AT"] = address
        proc = sandbox.cli("apply", manifest, check=False)
        assert proc.returncode == 1, proc.stdout
        assert "injected failure" in proc.stderr
        assert "Rolled back" in proc.stderr
        assert _snapshot(sandbox, root) == before, f"state changed after a failure at {address}"
    del sandbox.env["BPFDEPLOY_FAIL_AT"]

    sandbox.cli("apply", manifest)
    after = _snapshot(sandbox, root)
    assert after["counts"][7] == 42 and after["counts"][5] == 2
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_a_failure_in_the_commit_puts_the_replaced_program_back(sandbox):
    """The commit renames the new program's staged pin over the old one; a failure after that
    rename must pin the old program back (the link moves back to it, the new one goes)."""
    sandbox.cgroup("rb")
    manifest = _manifest(sandbox, key=0, limit=1, with_extra=False)
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-rb")
    sandbox.cli("apply", manifest)
    before = _snapshot(sandbox, root)

    _manifest(sandbox, key=1, limit=1, with_extra=False)  # the program is replaced, its link updated
    sandbox.env["BPFDEPLOY_FAIL_AT"] = "commit"
    proc = sandbox.cli("apply", manifest, check=False)
    del sandbox.env["BPFDEPLOY_FAIL_AT"]
    assert proc.returncode == 1, proc.stdout
    assert "commit: injected failure" in proc.stderr and "Rolled back" in proc.stderr
    assert _snapshot(sandbox, root) == before  # the same program id on its pin and on the link

    sandbox.cli("apply", manifest)
    assert _snapshot(sandbox, root)["progs"] != before["progs"]
    assert sandbox.cli_json("plan", manifest)["changes"] is False


BAD_SRC = COUNTER_SRC.replace("return 1;", "return *(char *)(long)skb->data;  /* unchecked */")


def test_verifier_rejection_keeps_the_old_program_running(sandbox):
    sandbox.cgroup("rb")
    manifest = _manifest(sandbox, key=0, limit=1, with_extra=False)
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-rb")
    sandbox.cli("apply", manifest)
    before = _snapshot(sandbox, root)
    (sandbox.tmp / "counter.bpf.c").write_text(BAD_SRC.replace("KEY", "0"))
    proc = sandbox.cli("apply", manifest, check=False)
    assert proc.returncode == 1
    assert "verifier" in proc.stderr and "outside of the packet" in proc.stderr
    assert "replace prog/count_packets" in proc.stderr
    assert _snapshot(sandbox, root) == before


def test_build_failure_changes_nothing_and_quotes_clang(sandbox):
    sandbox.cgroup("rb")
    manifest = _manifest(sandbox, key=0, limit=1, with_extra=False)
    (sandbox.tmp / "counter.bpf.c").write_text("int broken( {\n")
    proc = sandbox.cli("apply", manifest, check=False)
    assert proc.returncode == 1
    assert "clang failed to build counter.bpf.c" in proc.stderr
    assert "objects.counter.source" in proc.stderr
    assert "error:" in proc.stderr
    assert not Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-rb").exists()
