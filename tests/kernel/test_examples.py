"""The bundled example manifests, deployed for real, with their effect checked."""

from __future__ import annotations

import json

from tests.kernel.conftest import map_values
from tests.kernel.traffic import CONNECT, ECHO, FRAMES


def _pin_root(sandbox, manifest):
    import yaml

    return __import__("pathlib").Path(yaml.safe_load(manifest.read_text())["pin_root"])


def test_sockmap_redirect_moves_messages_through_the_sockhash(sandbox):
    manifest = sandbox.example("sockmap-redirect.yaml")
    root = _pin_root(sandbox, manifest)
    sandbox.cli("apply", manifest)
    cgroup = sandbox.cgroups[0]
    netns = sandbox.netns()

    # Inside the cgroup: every message of a loopback echo is redirected by bpf_redir.
    assert sandbox.run_in(ECHO.format(n=10), cgroup=cgroup, netns=netns).stdout.strip() == "10"
    stats = map_values(root / "maps" / "redir_stats")
    assert stats[0] == 20, stats  # 10 requests + 10 echoes
    assert stats[1] == 0

    # Outside the cgroup (same netns): the sockops program does not see the sockets, nothing is redirected.
    assert sandbox.run_in(ECHO.format(n=5), netns=netns).stdout.strip() == "5"
    assert map_values(root / "maps" / "redir_stats")[0] == 20


def test_sockhash_gains_entries_while_connected(sandbox):
    manifest = sandbox.example("sockmap-redirect.yaml")
    root = _pin_root(sandbox, manifest)
    sandbox.cli("apply", manifest)
    code = f"""
import socket, subprocess, json
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cl = socket.create_connection(srv.getsockname()); peer, _ = srv.accept()
dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", "{root}/maps/sock_ops_map"],
                      capture_output=True, text=True, check=True).stdout
print(len(json.loads(dump)))
"""
    out = sandbox.run_in(code, cgroup=sandbox.cgroups[0], netns=sandbox.netns())
    assert out.stdout.strip() == "2"  # both ends of the connection


def test_cgroup_counters_count_only_the_cgroups_traffic(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = _pin_root(sandbox, manifest)
    sandbox.cli("apply", manifest)
    netns = sandbox.netns()
    before = map_values(root / "maps" / "traffic")
    assert before[0]["packets"] == 0 and before[1]["packets"] == 0

    sandbox.run_in(ECHO.format(n=3), cgroup=sandbox.cgroups[0], netns=netns)
    inside = map_values(root / "maps" / "traffic")
    assert inside[0]["packets"] > 0 and inside[1]["packets"] > 0
    assert inside[0]["bytes"] > 0 and inside[1]["bytes"] > 0

    sandbox.run_in(ECHO.format(n=3), netns=netns)  # not in the cgroup
    assert map_values(root / "maps" / "traffic") == inside


def test_connect_policy_refuses_one_port_and_rewrites_another(sandbox):
    manifest = sandbox.example("connect-policy.yaml")
    root = _pin_root(sandbox, manifest)
    sandbox.cli("apply", manifest)
    netns = sandbox.netns()
    code = CONNECT.format(listen=[7778, 7800], ports=[9, 7777, 7800])
    inside = json.loads(sandbox.run_in(code, cgroup=sandbox.cgroups[0], netns=netns).stdout)
    assert inside["9"] == ["EPERM", 0]
    assert inside["7777"] == ["connected", 7778]
    assert inside["7800"] == ["connected", 7800]
    assert map_values(root / "maps" / "policy_stats") == {0: 1, 1: 1, 2: 1}

    outside = json.loads(sandbox.run_in(code, netns=netns).stdout)
    assert outside["9"] == ["ECONNREFUSED", 0]
    assert outside["7777"] == ["ECONNREFUSED", 0]


def test_changing_a_policy_entry_updates_the_map_without_reloading(sandbox):
    manifest = sandbox.example("connect-policy.yaml")
    sandbox.cli("apply", manifest)
    from tests.kernel.conftest import prog_ids_under

    root = _pin_root(sandbox, manifest)
    ids = prog_ids_under(root)
    import yaml

    data = yaml.safe_load(manifest.read_text())
    data["maps"]["blocked_ports"]["entries"] = [{"key": 19, "value": 1}]
    manifest.write_text(yaml.safe_dump(data))
    plan = sandbox.cli_json("plan", manifest)
    kinds = {a["address"]: a["action"] for a in plan["actions"]}
    assert kinds["map/blocked_ports"] == "update"
    assert kinds["prog/connect_policy"] == "no-op"
    sandbox.cli("apply", manifest)
    assert prog_ids_under(root) == ids
    netns = sandbox.netns()
    got = json.loads(sandbox.run_in(CONNECT.format(listen=[], ports=[19]), cgroup=sandbox.cgroups[0], netns=netns).stdout)
    assert got["19"] == ["EPERM", 0]
    # enforce keeps the listed keys only; port 9 stays blocked because its entry is still in the map
    assert map_values(root / "maps" / "blocked_ports") == {9: 1, 19: 1}


def test_flow_dissector_in_a_netns_sees_the_netns_packets(sandbox):
    netns = sandbox.netns()
    root = sandbox.pin_root(f"{sandbox.id}-fd")
    from tests.kernel.conftest import REPO

    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-fd
        pin_root: {root}
        objects:
          dissector:
            source: {REPO}/bpf/flow-dissector/flow_dissector.bpf.c
        attachments:
          - program: count_dissect
            type: flow_dissector
            netns: {netns}
    """)
    sandbox.cli("apply", manifest)
    assert map_values(root / "maps" / "dissect_count") == {0: 0}
    sandbox.run_in(FRAMES.format(n=5), netns=netns)
    assert map_values(root / "maps" / "dissect_count")[0] >= 5
    before = map_values(root / "maps" / "dissect_count")[0]
    sandbox.run_in(FRAMES.format(n=5), netns=sandbox.netns("other"))  # another netns: not ours
    assert map_values(root / "maps" / "dissect_count")[0] == before
