"""Surviving a reboot: what bpfdeploy.service runs at boot puts every deployment back.

PID 1 here is not systemd, so the unit itself cannot be started. The test does what a reboot
does to the kernel side of several deployments (every pin, link, legacy cgroup attach, tc
filter, clsact qdisc and created cgroup gone; the records left on disk but from another boot),
then runs the unit's ExecStart command, expanded with the settings file as systemd would,
and checks that every program is back with its effect and that the map entries the manifests
declare are seeded again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.test_lifecycle import COUNTER_SRC
from tests.kernel.test_net_trace import _example, _pair, _udp
from tests.kernel.traffic import ECHO
from tests.reply_schemas import check_reply
from tests.unit.test_packaging import CONF, UNIT, unit_directives


def _write(sandbox, directory: Path, filename: str, data: dict) -> Path:
    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    sandbox.manifests.append(path)  # destroyed by the sandbox afterwards
    return path


def _counter(sandbox, directory: Path, key: int, mode: str, out: str) -> tuple[Path, Path, Path]:
    src = sandbox.tmp / f"counter{key}.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", str(key)))
    name = f"{sandbox.id}-reboot{key}"
    cgroup = sandbox.cgroup(f"reboot{key}", create=False)  # created by the deployment (create: true)
    data = {"version": 1, "name": name, "pin_root": str(sandbox.pin_root(name)),
            "objects": {"counter": {"source": str(src)}},
            "maps": {"counts": {"entries": [{"key": 7, "value": 700 + key}], "entries_policy": "seed"}},
            "attachments": [{"name": "ingress", "program": "count_packets", "type": "ingress",
                             "cgroup": {"path": str(cgroup), "create": True}, "mode": mode}]}
    return _write(sandbox, directory, out, data), Path(data["pin_root"]), cgroup


def _reboot(sandbox, roots: list[Path], cgroups: list[Path], ns: str, dev: str) -> None:
    """What a reboot takes away: pins, links, attaches, tc filters and qdiscs, cgroups; records go stale."""
    for root in roots:
        for link in sorted((root / "links").glob("*")):
            subprocess.run(["bpftool", "link", "detach", "pinned", str(link)], capture_output=True)
        shutil.rmtree(root)
    for cgroup in cgroups:
        os.rmdir(cgroup)  # no process inside; a legacy attach goes with its cgroup, as at boot
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "clsact"], check=True)
    for record in (sandbox.tmp / "state").glob("*.json"):
        data = json.loads(record.read_text())
        data["boot_id"] = "00000000-0000-0000-0000-000000000000"  # written during the previous boot
        record.write_text(json.dumps(data))
    for journal in (sandbox.tmp / "state").glob("*.journal"):
        journal.unlink()


def _exec_start(settings: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd would run it: Environment=, then the EnvironmentFile, expanded."""
    d = unit_directives(UNIT.read_text())
    env = dict(kv.split("=", 1) for line in d[("Service", "Environment")] for kv in shlex.split(line))
    env.update(settings)
    argv = shlex.split(d[("Service", "ExecStart")][0])
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], a) for a in argv]
    assert argv[0] == "/usr/local/bin/bpfdeploy"  # make install links it to the venv's command
    return [sys.executable, "-m", "bpfdeploy.cli", *argv[1:]]


def _settings(directory: Path) -> dict[str, str]:
    """packaging/bpfdeploy.conf, with the manifest directory pointed at the test's."""
    out = {}
    for line in CONF.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    out["BPFDEPLOY_MANIFEST_DIR"] = str(directory)
    return out


def _xdp_ids(ns: str) -> list[int]:
    shown = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "bpftool", "-j", "net", "show"],
                                      capture_output=True, text=True, check=True).stdout)
    return [x["id"] for block in shown for x in block.get("xdp", ())]


def _tc_filters(ns: str, dev: str) -> list:
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{ns}", "tc", "-j", "filter", "show", "dev", dev,
                           "ingress"], capture_output=True, text=True)
    return [f for f in json.loads(proc.stdout or "[]") if "options" in f] if proc.returncode == 0 else []


def test_the_boot_unit_command_puts_every_deployment_back_after_a_reboot(sandbox):
    directory = sandbox.tmp / "manifests"
    directory.mkdir()
    a, b, dev = _pair(sandbox)
    m_link, root_link, cg_link = _counter(sandbox, directory, 1, "link", "10-counter-link.yaml")
    m_multi, root_multi, cg_multi = _counter(sandbox, directory, 2, "multi", "20-counter-multi.yaml")
    m_xdp, root_xdp = _example(sandbox, "xdp-drop.yaml", directory / "30-xdp.yaml", device=dev, netns=a)
    m_tc, root_tc = _example(sandbox, "tc-mark.yaml", directory / "40-tc.yaml", device=dev, netns=a)
    (directory / "README.txt").write_text("not a manifest: ignored")
    roots = [root_link, root_multi, root_xdp, root_tc]
    command = _exec_start(_settings(directory))

    first = subprocess.run(command + ["--json"], env=sandbox.env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    reply = json.loads(first.stdout)
    check_reply("apply-all", reply)
    for deployment in reply["deployments"]:  # each entry is the body of an apply FILE reply
        check_reply("apply", {"format_version": reply["format_version"], **deployment})
    assert [Path(x["manifest"]).name for x in reply["deployments"]] == [
        "10-counter-link.yaml", "20-counter-multi.yaml", "30-xdp.yaml", "40-tc.yaml"]
    assert all(x["status"] == "changed" for x in reply["deployments"]) and reply["failed"] == []
    before = {root: prog_ids_under(root) for root in roots}

    _reboot(sandbox, roots, [cg_link, cg_multi], a, dev)
    assert all(not root.exists() for root in roots)
    assert _xdp_ids(a) == [] and _tc_filters(a, dev) == []
    assert not cg_link.exists() and not cg_multi.exists()

    boot = subprocess.run(command, env=sandbox.env, capture_output=True, text=True, timeout=300)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "Summary of 4 manifest(s)" in boot.stdout
    assert boot.stdout.count("changed ") == 4, boot.stdout

    # Everything is back, loaded anew (new ids), and a plan of each finds nothing to do.
    for root in roots:
        ids = prog_ids_under(root)
        assert sorted(ids) == sorted(before[root]) and not set(ids.values()) & set(before[root].values())
    for manifest in (m_link, m_multi, m_xdp, m_tc):
        assert sandbox.cli("plan", manifest, "--detailed-exitcode", check=False).returncode == 0, manifest

    # Map entries declared in the manifests are seeded again, and each program has its effect.
    assert map_values(root_link / "maps" / "counts")[7] == 701
    assert map_values(root_multi / "maps" / "counts")[7] == 702
    assert map_values(root_xdp / "maps" / "drop_port")[0] == 9
    for cgroup, root, key in ((cg_link, root_link, 1), (cg_multi, root_multi, 2)):
        sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=sandbox.netns(f"echo{key}"))
        assert map_values(root / "maps" / "counts")[key] >= 2
    attached = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", str(cg_multi)], capture_output=True,
                                         text=True, check=True).stdout)
    assert [(x["id"], x["attach_flags"]) for x in attached] == [(prog_ids_under(root_multi)[
        str(root_multi / "progs" / "count_packets")], "multi")]
    assert _xdp_ids(a) == [prog_ids_under(root_xdp)[str(root_xdp / "progs" / "xdp_drop_udp")]]
    assert _udp(sandbox, a, b, [9], 3, listen=9) == 0  # dropped by the XDP program again
    assert _udp(sandbox, a, b, [10], 3, listen=10) == 3
    assert [(f["pref"], f["options"]["handle"]) for f in _tc_filters(a, dev)] == [(10, "0x1")]
    # tc ingress sits behind XDP on the same device: the 3 datagrams to port 9 never reach it, the
    # 3 to port 10 do (ARP and neighbour traffic may add more, or not: it depends on timing).
    assert map_values(root_tc / "maps" / "tc_stats")[0]["packets"] >= 3

    # Idempotent: running it again changes nothing.
    again = subprocess.run(command + ["--json"], env=sandbox.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [x["status"] for x in json.loads(again.stdout)["deployments"]] == ["in sync"] * 4
    assert all(x["mutations"] == 0 for x in json.loads(again.stdout)["deployments"])


def test_apply_all_reports_each_manifest_and_one_failure_does_not_stop_the_others(sandbox):
    directory = sandbox.tmp / "manifests"
    directory.mkdir()
    good, root, _cgroup = _counter(sandbox, directory, 3, "link", "20-good.yaml")
    bad = directory / "10-bad.yaml"
    bad.write_text(f"version: 1\nname: {sandbox.id}-bad\nobjects:\n  x: {{source: /nonexistent.bpf.c}}\n")
    proc = sandbox.cli("apply", "--all", directory, "--json", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout)
    check_reply("apply-all", reply)
    assert reply["failed"] == [str(bad)] and reply["exit_code"] == 1
    by_name = {Path(x["manifest"]).name: x for x in reply["deployments"]}
    assert by_name["10-bad.yaml"]["status"] == "failed" and by_name["10-bad.yaml"]["exit_code"] == 1
    assert "not found" in by_name["10-bad.yaml"]["diagnostics"][0]["message"]
    assert by_name["20-good.yaml"]["status"] == "changed" and by_name["20-good.yaml"]["exit_code"] == 0
    assert prog_ids_under(root)  # applied although the manifest before it failed

    human = sandbox.cli("apply", "--all", directory, check=False)
    assert human.returncode == 1
    assert re.search(r"failed\s+10-bad.yaml", human.stdout) and re.search(r"in sync\s+20-good.yaml", human.stdout)
    assert "objects.x.source" in human.stderr  # the bad manifest's diagnostic, with its path

    # Both FILE and --all, or neither: a usage error.
    assert sandbox.cli("apply", good, "--all", directory, check=False).returncode == 64
    assert sandbox.cli("apply", check=False).returncode == 64
