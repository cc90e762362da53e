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
