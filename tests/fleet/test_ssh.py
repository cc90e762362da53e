"""The collection over real SSH: rollout.yml and destroy.yml against simulated hosts, each
host's effect checked on that host (a counter that moves with traffic in the host's cgroup)."""

from __future__ import annotations

import pytest

from tests.fleet.fleet import APP_CGROUP, DATA, PLAYBOOKS, TRAFFIC_MAP, summary_of

pytestmark = [pytest.mark.fleet, pytest.mark.kernel]

V1 = DATA / "manifests/fleet-v1.yaml"
V2 = DATA / "manifests/fleet-v2.yaml"
BROKEN = DATA / "manifests/fleet-broken.yaml"
APPLY = "Apply the manifest"
HEALTH = {"rollout_health_script": str(PLAYBOOKS / "health/counter_moves.py"),
          "rollout_health_args": f"--map {TRAFFIC_MAP} --cgroup {APP_CGROUP} --packets 20"}


def rollout(fleet, manifest, hosts, *args, inventory=(), pipelining=True, **extra):
    return fleet.playbook("rollout.yml", *args, inventory=inventory, pipelining=pipelining,
                          extra={"rollout_manifest": str(manifest), "rollout_hosts": hosts, **HEALTH, **extra})


def destroy(fleet, hosts):
    run = fleet.playbook("destroy.yml", extra={"destroy_manifest": str(V1), "destroy_hosts": hosts})
    assert run.rc == 0, summary_of(run)
    return run


def test_first_run_changes_every_host_then_none_and_check_mode_changes_nothing(fleet):
    numbers = (1, 2, 3)
    names = [fleet.host(i) for i in numbers]
    destroy(fleet, fleet.limit(*numbers))

    first = rollout(fleet, V1, fleet.limit(*numbers), pipelining=False)  # modules travel over SFTP here
    assert first.rc == 0, summary_of(first)
    assert first.changed(APPLY) == {h: True for h in names}
    for h in names:
        assert set(fleet.programs(h)) == {"fleet_ingress", "fleet_egress"}
        assert fleet.counter(h, 2) == 1  # release 1 counts on this host

    # Each host's effect is its own: traffic on host 1 moves host 1's counter only.
    before = {h: fleet.counter(h, 1) for h in names}
    moved = fleet.traffic(names[0], 25)
    assert moved["rc"] == 0 and moved["moved"] == 25, moved
    assert fleet.counter(names[0], 1) == before[names[0]] + 25
    assert {h: fleet.counter(h, 1) for h in names[1:]} == {h: before[h] for h in names[1:]}

    second = rollout(fleet, V1, fleet.limit(*numbers))
    assert second.rc == 0, summary_of(second)
    assert second.changed(APPLY) == {h: False for h in names}
    assert all(r["mutations"] == 0 for r in second.results[APPLY].values())

    # Check mode with a new release: every host would change, none does.
    ids = {h: fleet.programs(h) for h in names}
    pins = {h: fleet.pins(h) for h in names}
    state = {h: fleet.state_files(h) for h in names}
    check = rollout(fleet, V2, fleet.limit(*numbers), "--check")
    assert check.rc == 0, summary_of(check)
    assert check.changed(APPLY) == {h: True for h in names}
    for h in names:
        result = check.results[APPLY][h]
        assert result["mutations"] == 0 and result["actions"] == []
        assert {a["action"] for a in result["plan"]["actions"]} >= {"replace"}
        assert fleet.programs(h) == ids[h] and fleet.pins(h) == pins[h] and fleet.state_files(h) == state[h]
        fleet.traffic(h, 1)
        assert fleet.counter(h, 2) == 1  # still release 1


def ensure_v1(fleet, numbers):
    run = rollout(fleet, V1, fleet.limit(*numbers), rollout_serial=[len(numbers)])
    assert run.rc == 0, summary_of(run)
    for i in numbers:
        fleet.traffic(fleet.host(i), 5)
        assert fleet.counter(fleet.host(i), 2) == 1


def test_an_upgrade_rolls_out_batch_by_batch_keeping_map_contents(fleet):
    numbers = (1, 2, 3)
    names = [fleet.host(i) for i in numbers]
    ensure_v1(fleet, numbers)
    before = {h: fleet.counter(h, 1) for h in names}
    ids = {h: fleet.programs(h) for h in names}
    run = rollout(fleet, V2, fleet.limit(*numbers), rollout_serial=[1, 2])
    assert run.rc == 0, summary_of(run)
    assert run.batches() == [[names[0]], sorted(names[1:])]  # the canary first, alone
    assert run.changed(APPLY) == {h: True for h in names}
    for h in names:
        assert fleet.counter(h, 2) == 2  # release 2 counts here now
        assert fleet.counter(h, 1) >= before[h] + 20  # the same map: contents kept, and the health check counted
        assert set(fleet.programs(h).values()).isdisjoint(ids[h].values())  # new programs
        result = run.results[APPLY][h]
        assert {a["address"]: a["action"] for a in result["plan"]["actions"]}["map/fleet_traffic"] == "no-op"


def test_failures_stop_the_rollout_roll_the_canary_back_and_leave_later_batches_untouched(fleet):
    """Host 5 lacks BTF (release 2 requires it), host 4 is unreachable, and host 1, the canary,
    gets a release that loads but counts nothing, so its health check fails."""
    numbers = (1, 2, 3, 4, 5)
    names = {i: fleet.host(i) for i in numbers}
    ensure_v1(fleet, numbers)
    before = {h: fleet.counter(h, 1) for h in names.values()}
    ids = {h: fleet.programs(h) for h in names.values()}

    # Default pre-flight threshold: one host that cannot run release 2 stops everything before any change.
    gated = rollout(fleet, V2, fleet.limit(1, 2, 5))
    assert gated.rc != 0
    assert APPLY not in gated.results
    pre = gated.results["Check the manifest against this host's kernel and tools"]
    assert pre[names[5]]["fits"] is False and "requires.btf" in pre[names[5]]["msg"]
    assert {h: fleet.programs(h) for h in names.values()} == ids

    fleet.close_masters()
    fleet.set_link(names[4], up=False)
    try:
        extra_vars = fleet.host_vars("broken-canary", {names[1]: {"rollout_host_manifest": str(BROKEN)}})
        run = rollout(fleet, V2, fleet.limit(*numbers), inventory=[extra_vars], rollout_serial=[1, "100%"],
                      rollout_preflight_max_fail_percentage=40)
    finally:
        fleet.set_link(names[4], up=True)
    assert run.rc != 0
    pre = run.results["Check the manifest against this host's kernel and tools"]
    assert pre[names[4]].get("unreachable") and pre[names[5]]["fits"] is False
    assert set(run.results[APPLY]) == {names[1]}, summary_of(run)  # the canary only: the rollout stopped
    assert run.results[APPLY][names[1]]["changed"]
    assert not run.results["Post-check - the declared health check"][names[1]].get("rc") in (0, None)
    back = run.results["Roll back to the previous release kept on this host (the apply succeeded, a post-check did not)"]
    assert back[names[1]]["changed"] and back[names[1]]["release"]["last_failed"], back[names[1]]

    # The canary runs release 1 again, on the same map: its counts are kept.
    assert fleet.traffic(names[1], 10)["moved"] == 10
    assert fleet.counter(names[1], 2) == 1 and fleet.counter(names[1], 1) >= before[names[1]] + 10
    # Every other host is untouched: the same programs, the same counts, release 1.
    for i in (2, 3, 4, 5):
        h = names[i]
        assert fleet.programs(h) == ids[h], h
        assert fleet.counter(h, 1) == before[h] and fleet.counter(h, 2) == 1, h


def test_destroy_removes_the_deployment_from_every_host(fleet):
    numbers = (1, 2, 3)
    ensure_v1(fleet, numbers)
    run = fleet.playbook("destroy.yml", extra={"destroy_deployment": "fleet-counters",
                                               "destroy_hosts": fleet.limit(*numbers)})
    assert run.rc == 0, summary_of(run)
    assert run.changed("Destroy the deployment") == {fleet.host(i): True for i in numbers}
    for i in numbers:
        h = fleet.host(i)
        assert fleet.programs(h) == {} and fleet.pins(h) == []
        assert fleet.on(h, ["test", "-e", "/sys/fs/cgroup/unified/fleet-app"], check=False).returncode != 0
        assert not [f for f in fleet.state_files(h) if f.startswith("ansible/releases/")]
    again = fleet.playbook("destroy.yml", extra={"destroy_deployment": "fleet-counters",
                                                 "destroy_hosts": fleet.limit(*numbers)})
    assert again.rc == 0 and again.changed("Destroy the deployment") == {fleet.host(i): False for i in numbers}


def _build(fleet, manifest, out, key):
    import subprocess

    from tests.fleet.fleet import REPO

    proc = subprocess.run([str(REPO / ".venv/bin/bpfdeploy"), "build", str(manifest), "--out", str(out),
                           "--sign-key", str(key)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _key(tmp_path, name):
    import subprocess

    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key


def test_artifacts_built_once_deploy_without_clang_and_tampering_is_refused_there(fleet, tmp_path):
    import shutil

    host = fleet.host(6)
    assert fleet.on(host, ["sh", "-c", "command -v clang"], check=False).returncode != 0  # really no clang there
    release_key, other_key = _key(tmp_path, "release"), _key(tmp_path, "intruder")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'release namespaces="bpfdeploy" {release_key.with_suffix(".pub").read_text()}')
    v1_dist, v2_dist = tmp_path / "dist-v1", tmp_path / "dist-v2"
    _build(fleet, V1, v1_dist, release_key)
    _build(fleet, V2, v2_dist, release_key)
    signed = {"rollout_allowed_signers": str(signers)}

    # From sources, this host cannot run it: refused in pre-flight, nothing changed.
    refused = rollout(fleet, V1, host)
    assert refused.rc != 0 and "clang" in refused.results[
        "Check the manifest against this host's kernel and tools"][host]["msg"]
    assert fleet.programs(host) == {}

    deployed = rollout(fleet, V1, host, rollout_artifacts=str(v1_dist), **signed)
    assert deployed.rc == 0, summary_of(deployed)
    result = deployed.results[APPLY][host]
    assert result["changed"] and result["plan"]["artifacts"]["signature"] == "good", result["plan"].get("artifacts")
    assert fleet.counter(host, 2) == 1 and fleet.traffic(host, 10)["moved"] == 10
    ids = fleet.programs(host)
    counted = fleet.counter(host, 1)

    # One byte changed in an object of release 2: refused on this host, nothing changed.
    tampered = tmp_path / "dist-tampered"
    shutil.copytree(v2_dist, tampered)
    obj = next((tampered / "objects").glob("*.o"))
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    bad = rollout(fleet, V2, host, rollout_artifacts=str(tampered), **signed)
    assert bad.rc != 0
    assert "sha256" in bad.results["Check the manifest against this host's kernel and tools"][host]["msg"]
    assert fleet.programs(host) == ids and fleet.counter(host, 1) == counted and fleet.counter(host, 2) == 1

    # Release 2 signed by a key the host does not trust: refused there, nothing changed.
    forged = tmp_path / "dist-forged"
    shutil.copytree(v2_dist, forged)
    import subprocess

    (forged / "artifacts.json.sig").unlink()
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-n", "bpfdeploy", "-f", str(other_key),
                    str(forged / "artifacts.json")], check=True)
    bad = rollout(fleet, V2, host, rollout_artifacts=str(forged), **signed)
    assert bad.rc != 0
    assert "signature" in bad.results["Check the manifest against this host's kernel and tools"][host]["msg"]
    assert fleet.programs(host) == ids and fleet.counter(host, 1) == counted and fleet.counter(host, 2) == 1

    # The good release 2 goes on, and a host that built locally agrees with the artifacts: no changes.
    good = rollout(fleet, V2, host, rollout_artifacts=str(v2_dist), **signed)
    assert good.rc == 0 and good.results[APPLY][host]["changed"], summary_of(good)
    assert fleet.counter(host, 2) in (1, 2) and fleet.traffic(host, 5)["moved"] == 5 and fleet.counter(host, 2) == 2
    built_here = rollout(fleet, V2, fleet.host(1), rollout_serial=[1])  # host 1 builds release 2 itself
    assert built_here.rc == 0, summary_of(built_here)
    assert recorded_digests(fleet, fleet.host(1)) == recorded_digests(fleet, host)
    again = rollout(fleet, V2, host, "--check", rollout_artifacts=str(v2_dist), **signed)
    assert again.rc == 0 and again.results[APPLY][host]["changed"] is False
    fleet.playbook("destroy.yml", extra={"destroy_deployment": "fleet-counters", "destroy_hosts": host})


def recorded_digests(fleet, host) -> set[str]:
    """The build digests the deployment record on HOST holds for its programs."""
    import json

    record = json.loads((fleet.dir / "hosts" / host / "state" / "fleet-counters.json").read_text())
    return set(record["digests"].values())


def test_a_failed_apply_is_rolled_back_on_its_host_and_stops_the_rollout(fleet):
    """The canary's apply fails at its last step (bpfdeploy's own fault injection, BPFDEPLOY_FAIL_AT,
    given to that host only): bpfdeploy undoes every step there, the playbook does not roll back
    again, and the later batch is never touched."""
    numbers = (1, 2, 3)
    names = [fleet.host(i) for i in numbers]
    ensure_v1(fleet, numbers)
    ids = {h: fleet.programs(h) for h in names}
    counts = {h: fleet.counter(h, 1) for h in names}
    failing = fleet.host_vars("failing-apply", {names[0]: {"rollout_environment": {
        "BPFDEPLOY_FAIL_AT": "attach/fleet_egress-egress-fleet-app"}}})
    run = rollout(fleet, V2, fleet.limit(*numbers), inventory=[failing], rollout_serial=[1, "100%"])
    assert run.rc != 0
    applied = run.results[APPLY]
    assert set(applied) == {names[0]}, summary_of(run)
    result = applied[names[0]]
    assert result.get("failed") and result["rolled_back"] is True and "injected failure" in result["msg"]
    assert result["failed_step"] == "update attach/fleet_egress-egress-fleet-app"
    skipped = run.results["Roll back to the previous release kept on this host (the apply succeeded, a post-check did not)"]
    assert skipped[names[0]].get("skipped")
    assert "bpfdeploy rolled the kernel back (rolled_back: True)" in run.results[
        "Fail this host, so that max_fail_percentage counts it"][names[0]]["msg"]
    for h in names:  # the canary as it was (release 1, the same programs and counts), the rest untouched
        assert fleet.programs(h) == ids[h] and fleet.counter(h, 1) == counts[h] and fleet.counter(h, 2) == 1, h
