"""Failure policy: an attachment marked optional that cannot be made is a warning and exit 5
(PARTIAL), and the rest is applied; without optional the same failure rolls everything back.

The failures are real kernel refusals, not injected: XDP in offload mode on a veth (the
kernel answers EINVAL at link create, which no plan can foresee) and a device that does not
exist (found by the plan).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.kernel.conftest import REPO, map_values, prog_ids_under
from tests.kernel.test_lifecycle import COUNTER_SRC
from tests.kernel.traffic import ECHO
from tests.reply_schemas import check_reply

PARTIAL = 5


def _veth(sandbox) -> str:
    ns = sandbox.netns("opt")
    subprocess.run(["ip", "-n", ns, "link", "add", "o0", "type", "veth", "peer", "name", "o1"], check=True)
    for dev in ("o0", "o1"):
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    return ns


def _manifest(sandbox, cgroup: Path, ns: str, optional: bool, device: str = "o0", xdp_mode: str = "offload") -> Path:
    src = sandbox.tmp / "counter.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", "2"))
    name = f"{sandbox.id}-opt"
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{name}")
    if root not in sandbox.pin_roots:
        sandbox.pin_roots.append(root)
    return sandbox.write(f"""
        version: 1
        name: {name}
        pin_root: {root}
        objects:
          counter:
            source: {src}
          xdp:
            source: {REPO / "bpf/xdp-drop/xdp_drop.bpf.c"}
        attachments:
          - name: ingress
            program: count_packets
            type: ingress
            cgroup: {cgroup}
          - name: xdp-on-o0
            program: xdp_drop_udp
            type: xdp
            device: {device}
            netns: {ns}
            xdp_mode: {xdp_mode}
            optional: {str(optional).lower()}
    """)


def _links(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "links").iterdir()) if (root / "links").is_dir() else []


def test_optional_attachment_refused_by_the_kernel_is_a_warning_and_exit_partial(sandbox):
    cgroup, ns = sandbox.cgroup("opt"), _veth(sandbox)
    manifest = _manifest(sandbox, cgroup, ns, optional=True)
    root = sandbox.pin_roots[-1]

    proc = sandbox.cli("apply", manifest, "--json", check=False)
    assert proc.returncode == PARTIAL, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    check_reply("apply", out)
    assert out["partial"] is True
    assert [s["attachment"] for s in out["skipped"]] == ["xdp-on-o0"], out
    assert "Invalid argument" in out["skipped"][0]["reason"], out
    assert "create attach/ingress" in out["done"] and "create attach/xdp-on-o0" not in out["done"]
    assert _links(root) == ["ingress"]  # the XDP link's own steps were undone, the rest stays
    shown = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "bpftool", "-j", "net", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    assert not [x for block in shown for x in block.get("xdp", ())], shown

    # The rest works: the cgroup counter moves.
    sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=sandbox.netns())
    assert map_values(root / "maps" / "counts")[2] >= 2

    # Human output names it; the next apply tries again and is still partial, changing nothing else.
    again = sandbox.cli("apply", manifest, check=False)
    assert again.returncode == PARTIAL, again.stdout + again.stderr
    assert "optional attachment 'xdp-on-o0' was not made" in again.stdout
    assert "Partial:" in again.stdout and "+ create  attach/xdp-on-o0" in again.stdout
    assert "attach/ingress" not in again.stdout.split("Applying")[-1]


def test_optional_attachment_on_a_missing_device_is_skipped_by_the_plan(sandbox):
    cgroup, ns = sandbox.cgroup("optdev"), _veth(sandbox)
    manifest = _manifest(sandbox, cgroup, ns, optional=True, device="nosuch0", xdp_mode="generic")
    root = sandbox.pin_roots[-1]
    planned = sandbox.cli_json("plan", manifest)
    check_reply("plan", planned)
    assert planned["skipped"] == [{"attachment": "xdp-on-o0", "reason": planned["skipped"][0]["reason"]}]
    assert "nosuch0" in planned["skipped"][0]["reason"]
    assert not [a for a in planned["actions"] if a["address"] == "attach/xdp-on-o0"]
    warnings = [d for d in planned["diagnostics"] if d["severity"] == "warning"]
    assert any("optional attachment 'xdp-on-o0' is skipped" in d["message"] for d in warnings)

    proc = sandbox.cli("apply", manifest, check=False)
    assert proc.returncode == PARTIAL, proc.stdout + proc.stderr
    assert _links(root) == ["ingress"]

    # Once the device exists, the same manifest attaches it and exits 0.
    subprocess.run(["ip", "-n", ns, "link", "add", "nosuch0", "type", "veth", "peer", "name", "nosuch1"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "nosuch0", "up"], check=True)
    done = sandbox.cli("apply", manifest, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _links(root) == ["ingress", "xdp-on-o0"]
    assert sandbox.cli("plan", manifest, "--detailed-exitcode", check=False).returncode == 0


def test_without_optional_the_same_failure_rolls_everything_back(sandbox):
    cgroup, ns = sandbox.cgroup("req"), _veth(sandbox)
    manifest = _manifest(sandbox, cgroup, ns, optional=False)
    root = sandbox.pin_roots[-1]
    proc = sandbox.cli("apply", manifest, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Rolled back" in proc.stderr
    assert prog_ids_under(root) == {}
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))
