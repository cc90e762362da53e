"""The planner on recorded kernel state: no root, no kernel calls.

The scenarios (a desired state and a live state each) are built in tests/unit/scenarios.py from
bpftool JSON recorded from a real kernel (``tests/fixtures/bpftool/``); test_apply.py carries
every one of them through apply against the strict fake kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scenarios as sc
from scenarios import (
    ALL_LINKS,
    ALL_MAPS,
    ALL_PROGRAMS,
    ATTACHMENTS,
    CGROUP,
    DEFUNCT_LINK,
    ENTRIES,
    GEOMETRY,
    META,
    NAME,
    PROGRAMS,
    ROOT,
    STAGED_PROG,
    digest,
    live_program,
    pin,
    u32,
    _text,
)

from bpfdeploy.kernel import live as live_module
from bpfdeploy.kernel.libbpf import BPF_F_ALLOW_MULTI
from bpfdeploy.kernel.live import index_by_pin, parse_links, parse_programs
from bpfdeploy.plan import (PLAN_FORMAT, STAGING_SUFFIX, Cleanup, Kind, LegacyAttach, LegacyDetach, NewMap, Resource,
                            WriteEntries, plan)


def by_address(p) -> dict:
    out = {}
    for a in p.actions:
        assert a.address not in out, f"two actions for {a.address}"
        out[a.address] = a
    return out


def changed(p) -> dict:
    return {a.address: a.kind for a in p.changes}


def planned(s: sc.Scenario):
    return plan(s.state, s.live, destroy=s.destroy)


# ---------------------------------------------------------------- the recording itself


def test_recording_holds_the_scratch_deployment():
    """The fixtures are what the cases below assume; re-recording must keep them so."""
    programs = index_by_pin(ALL_PROGRAMS, ROOT)
    assert {Path(p).name for p in programs} == {p for p, *_ in PROGRAMS} | {Path(STAGED_PROG).name}
    assert {Path(m).name for m in index_by_pin(ALL_MAPS, ROOT)} == set(GEOMETRY)
    links = index_by_pin(ALL_LINKS, ROOT)
    assert {Path(k).name for k in links} == {a[0] for a in ATTACHMENTS} | {"egress", "old-egress"}
    assert links[pin(DEFUNCT_LINK)].cgroup_id == 0  # detached: defunct but still pinned
    assert links[pin("links/ingress")].cgroup_id == META["cgroup_id"]
    assert links[pin("links/old-egress")].cgroup_id == META["old_cgroup_id"]
    assert links[pin("links/redirect")].type == "14"  # bpftool 7.1 has no name for sockmap links


def test_index_by_pin_keeps_only_pins_under_the_root():
    foreign = [p for p in ALL_PROGRAMS if any("/foreign/" in x for x in p.pins)]
    assert len(foreign) == 1 and len(foreign[0].pins) == 2  # also pinned at <scratch>/deploy-lookalike
    assert any(x.startswith(str(ROOT)) and not x.startswith(str(ROOT) + "/") for x in foreign[0].pins)
    indexed = index_by_pin(ALL_PROGRAMS + ALL_MAPS + ALL_LINKS, ROOT)
    assert indexed and all(k.startswith(str(ROOT) + "/") for k in indexed)
    assert foreign[0] not in indexed.values()


def test_parse_programs_fields():
    p = live_program("progs/sockredir")
    assert (p.type, p.name) == ("sk_msg", "bpf_redir")
    maps = index_by_pin(ALL_MAPS, ROOT)
    # sockredir reuses sockops' pinned sockhash: both programs reference the one map.
    assert maps[pin("maps/sock_ops_map")].id in p.map_ids
    assert maps[pin("maps/sock_ops_map")].id in live_program("progs/sockops").map_ids
    assert maps[pin("maps/sock_ops_map")].geometry == GEOMETRY["sock_ops_map"]


# ---------------------------------------------------------------- plans


def test_nothing_live_creates_everything_in_dependency_order():
    state = sc.nothing_live().state
    p = planned(sc.nothing_live())
    assert p.diagnostics == () and p.conflicts == ()
    assert {a.kind for a in p.actions} == {Kind.CREATE}
    assert [a.resource for a in p.actions] == (
        [Resource.CGROUP] + [Resource.MAP] * len(state.maps) + [Resource.PROGRAM] * len(state.programs)
        + [Resource.ATTACHMENT] * len(state.attachments))
    assert p.actions[0].address == f"cgroup:{CGROUP}"  # once, though three attachments use it
    new_map = by_address(p)["map/blocked_ports"].payload
    assert isinstance(new_map, NewMap) and new_map.entries == ENTRIES["blocked_ports"]
    assert new_map.inner == "blocked_ports" and state.program(new_map.loader) is not None  # the planner picks it
    assert p.counts()["create"] == len(p.actions)


def test_missing_cgroup_without_create_is_an_error():
    p = planned(sc.missing_cgroup_without_create())
    assert [d.message for d in p.errors] == [f"cgroup {CGROUP} does not exist"]
    assert not any(a.resource is Resource.CGROUP for a in p.actions)


def test_created_cgroup_still_used_without_create_is_kept():
    p = planned(sc.created_cgroup_still_used())  # the record says the deployment created CGROUP
    assert not any(a.resource is Resource.CGROUP for a in p.actions)


def test_everything_live_and_recorded_is_a_noop():
    state = sc.in_sync().state
    p = planned(sc.in_sync())
    assert p.changes == ()
    assert p.diagnostics == () and p.conflicts == ()
    assert p.counts()["no-op"] == len(state.maps) + len(state.programs) + len(state.attachments)
    # No-ops name the live object they stand for.
    ingress = by_address(p)["attach/ingress"]
    assert ingress.live_id == index_by_pin(ALL_LINKS, ROOT)[pin("links/ingress")].id


def test_changed_digest_replaces_the_program_and_moves_its_link_atomically():
    prog = live_program("progs/count_ingress")
    p = planned(sc.changed_digest())
    assert changed(p) == {"prog/count_ingress": Kind.REPLACE, "attach/ingress": Kind.UPDATE}
    actions = by_address(p)
    assert actions["prog/count_ingress"].live_id == prog.id
    assert "object changed" in actions["prog/count_ingress"].reason
    assert "atomic" in actions["attach/ingress"].transition
    order = [a.address for a in p.actions]
    assert order.index("prog/count_ingress") < order.index("attach/ingress")


def test_program_id_missing_from_the_record_is_replaced():
    prog = live_program("progs/count_ingress")
    p = planned(sc.program_id_unrecorded())
    assert changed(p) == {"prog/count_ingress": Kind.REPLACE, "attach/ingress": Kind.UPDATE}
    assert f"program id {prog.id}" in by_address(p)["prog/count_ingress"].reason


def test_no_record_at_all_refuses_every_pin_and_plans_nothing():
    """Issue 17 item 2: pins the record does not list are not bpfdeploy's; they used to be deleted."""
    live = sc.no_record().live
    p = planned(sc.no_record())
    assert p.actions == ()
    assert len(p.errors) == len(live.pinned)
    for pin_path, d in zip(live.pinned, p.errors):
        assert pin_path in d.message and "was not made by bpfdeploy" in d.message and d.path == "pin_root"
    destroy = planned(sc.destroy_without_a_record())
    assert destroy.actions == () and len(destroy.errors) == len(live.pinned)


def test_a_record_that_lists_some_pins_refuses_the_others():
    p = planned(sc.record_lists_some_pins())
    assert p.actions == () and [d.message.split(" ")[0] for d in p.errors] == ["maps/traffic"]


def test_a_record_from_before_pins_were_recorded_vouches_for_the_layout_only():
    p = planned(sc.record_before_pins())
    assert [d.message.split(" ")[0] for d in p.errors] == ["state"] and p.actions == ()


def test_nested_pin_is_named_by_its_path_under_the_pin_root():
    """Issue 17 item 3: maps/sub/x was shown as map/x in the same plan as map/x itself."""
    # bpfdeploy never pins below maps/, progs/ or links/, so even a record that lists it does not make it ours.
    for record_kind in sc.NESTED_RECORDS:
        p = planned(sc.nested_pin(record_kind))
        assert p.actions == ()
        assert [d.message.split(" ")[0] for d in p.errors] == ["maps/sub/traffic"]


def test_symlinks_and_foreign_mounts_under_the_pin_root_are_errors_and_nothing_is_planned():
    """Issue 17 item 1: a symlinked maps/ sent pins outside the pin root."""
    p = planned(sc.unsafe_pin_root())
    assert p.actions == ()
    assert [d.message for d in p.errors] == [
        f"{pin('maps')} is a symlink (to /sys/fs/bpf/elsewhere): the pin root must be real directories on bpffs",
        f"{pin('progs/sub')} is a mount point of another file system: the pin root must be real directories on bpffs"]


def test_incompatible_map_geometry_is_an_error_by_default():
    p = planned(sc.incompatible_geometry())
    assert len(p.errors) == 1
    error = p.errors[0]
    assert error.path == "maps.traffic"
    assert "cannot be reused" in error.message
    assert "max_entries 2" in error.message and "max_entries 4" in error.message
    assert "recreate" in error.hint
    assert "map/traffic" not in by_address(p)  # neither kept nor replaced
    assert p.changes == ()


def test_incompatible_map_geometry_with_recreate_replaces_the_map_and_its_users():
    p = planned(sc.incompatible_geometry_recreate())
    assert p.errors == ()
    assert changed(p) == {"map/traffic": Kind.REPLACE, "prog/count_ingress": Kind.REPLACE,
                          "prog/count_egress": Kind.REPLACE, "attach/ingress": Kind.UPDATE}
    actions = by_address(p)
    assert actions["map/traffic"].live_id == index_by_pin(ALL_MAPS, ROOT)[pin("maps/traffic")].id
    assert "map 'traffic' is created anew" in actions["prog/count_egress"].reason
    order = [a.address for a in p.actions]
    assert order.index("map/traffic") < order.index("prog/count_ingress") < order.index("attach/ingress")


@pytest.mark.parametrize("live_value", [u32(0), None], ids=["other-value", "key-missing"])
def test_enforced_entries_that_differ_update_the_map(live_value):
    p = planned(sc.entries_differ(live_value))
    assert changed(p) == {"map/blocked_ports": Kind.UPDATE}
    action = by_address(p)["map/blocked_ports"]
    assert action.payload == WriteEntries(((u32(9), u32(1)),))  # only the entries that differ
    # each changed key is shown old -> new, in the human view and in JSON
    assert [e.text() for e in action.entries] == [f"key 9: {'0' if live_value else '(absent)'} -> 1"]
    entry = action.to_json()["entries"][0]
    assert entry["key"] == "0x09000000" and entry["new"] == "0x01000000" and entry["new_uint"] == 1
    assert entry["old"] == (None if live_value is None else "0x00000000")
    assert action.to_json()["after"] == {"entries": [{"key": "0x09000000", "value": "0x01000000"}]}
    assert action.live_id == index_by_pin(ALL_MAPS, ROOT)[pin("maps/blocked_ports")].id


def test_seeded_entries_are_not_enforced():
    p = planned(sc.seeded_entries())
    assert p.changes == ()


def test_defunct_link_is_replaced():
    link = index_by_pin(ALL_LINKS, ROOT)[pin(DEFUNCT_LINK)]
    assert link.cgroup_id == 0
    p = planned(sc.defunct_link())
    assert changed(p) == {"attach/egress": Kind.REPLACE}
    action = by_address(p)["attach/egress"]
    assert "defunct" in action.reason
    assert (action.live_pin, action.live_id) == (pin(DEFUNCT_LINK), link.id)


def test_link_on_another_cgroup_is_replaced():
    """links/old-egress is on <cgroup>/old; a manifest that wants it on <cgroup> moves it."""
    p = planned(sc.link_on_another_cgroup())
    assert changed(p) == {"attach/old-egress": Kind.REPLACE}
    assert f"cgroup id {META['old_cgroup_id']}" in by_address(p)["attach/old-egress"].reason


def test_foreign_program_on_a_link_hook_is_a_conflict_not_an_action():
    foreign = sc.foreign_ingress_id()
    p = planned(sc.foreign_on_a_link_hook())
    assert p.errors == ()
    assert len(p.conflicts) == 1
    assert f"id {foreign} (count_ingress)" in p.conflicts[0]
    assert CGROUP in p.conflicts[0]
    assert p.changes == ()
    assert all(a.live_id != foreign for a in p.actions)


@pytest.mark.parametrize("mode", sorted(sc.LEGACY_MODES))
def test_foreign_program_on_a_legacy_hook_is_an_error(mode):
    foreign = sc.foreign_ingress_id()
    p = planned(sc.SCENARIOS[f"foreign program on a legacy hook, {mode}"]())
    assert len(p.errors) == 1
    assert p.errors[0].message.startswith("conflict:") and f"id {foreign}" in p.errors[0].message
    assert "attach/ingress" not in by_address(p)  # nothing is planned on that hook
    assert p.conflicts == ()


def test_foreign_program_on_a_multi_legacy_hook_is_a_conflict():
    foreign = sc.foreign_ingress_id()
    p = planned(sc.SCENARIOS["foreign program on a multi legacy hook"]())
    assert p.errors == ()
    assert len(p.conflicts) == 1 and f"id {foreign}" in p.conflicts[0]
    assert by_address(p)["attach/ingress"].kind is Kind.CREATE
    assert by_address(p)["attach/ingress"].payload == LegacyAttach(BPF_F_ALLOW_MULTI)


@pytest.mark.parametrize("mode", sorted(sc.NON_MULTI))
def test_foreign_non_multi_attach_on_a_link_hook_is_an_error(mode):
    foreign = sc.foreign_ingress_id()
    p = planned(sc.SCENARIOS[f"foreign {mode} attach on a link hook"]())
    assert len(p.errors) == 1 and f"id {foreign}" in p.errors[0].message
    assert "attach/ingress" not in by_address(p)


def test_foreign_verdict_on_a_sockmap_is_an_error():
    foreign = sc.foreign_ingress_id()  # the scenario puts it on the sockmap's verdict hook
    p = planned(sc.foreign_verdict_on_a_sockmap())
    assert len(p.errors) == 1 and f"id {foreign}" in p.errors[0].message
    assert "attach/redirect" not in by_address(p)


def test_pins_no_longer_desired_are_deleted_links_then_programs_then_maps():
    p = planned(sc.pins_no_longer_desired())
    # The staged pin of a killed apply is removed first, before anything is staged again.
    assert p.actions[0].address == f"pin/{STAGED_PROG}" and p.actions[0].payload == Cleanup()
    assert "interrupted apply" in p.actions[0].reason
    deletes = [a for a in p.actions if a.kind is Kind.DELETE and not isinstance(a.payload, Cleanup)]
    assert p.actions[-len(deletes):] == tuple(deletes)  # after every other action
    assert [a.address for a in deletes] == [
        "attach/connect", "attach/egress", "attach/old-egress",
        "prog/connect_policy",
        "map/blocked_ports", "map/policy_stats", "map/port_rewrites",
    ]
    assert [a.resource for a in deletes] == [Resource.ATTACHMENT] * 3 + [Resource.PROGRAM] + [Resource.MAP] * 3
    assert all(a.live_pin.startswith(str(ROOT) + "/") for a in deletes)
    assert not any(a.resource is Resource.CGROUP for a in deletes)  # still used by the manifest
    assert p.errors == ()


def test_staged_link_left_by_an_interrupted_apply_is_deleted():
    p = planned(sc.staged_link_left())
    assert changed(p) == {f"pin/links/ingress{STAGING_SUFFIX}": Kind.DELETE}
    assert "interrupted apply" in p.changes[0].reason
    assert p.changes[0].payload == Cleanup() and p.actions[0] is p.changes[0]


def test_destroy_deletes_everything_under_the_pin_root():
    legacy = sc.legacy_sysctl()
    s = sc.destroy_everything()
    live = s.live
    assert set(live.record.created_cgroups) == {CGROUP, sc.GONE_CGROUP} and sc.GONE_CGROUP not in live.existing_cgroups
    p = planned(s)
    assert {a.kind for a in p.actions} == {Kind.DELETE}
    under_root = [a for a in p.actions if a.live_pin.startswith(str(ROOT) + "/")]
    assert {a.live_pin for a in under_root} == set(live.pinned)
    # links (and legacy attaches), then programs (the staged one is a bare pin), then maps, then cgroups
    groups = [a.resource.value for a in p.actions]
    assert groups == (["pin"] + ["attach"] * (1 + len(live.links)) + ["prog"] * (len(live.programs) - 1)
                      + ["map"] * len(live.maps) + ["cgroup"])
    assert p.actions[0].payload == Cleanup()  # the staged program pin goes first
    assert p.actions[1].address == "attach/legacy-sysctl" and p.actions[1].payload == LegacyDetach(legacy)
    assert p.actions[-1].address == f"cgroup:{CGROUP}"  # not the one already gone
    assert all(a.reason.startswith("removed by destroy") for a in p.actions
               if a.resource in (Resource.PROGRAM, Resource.MAP) or a.live_pin.startswith(pin("links/")))


def test_destroy_of_nothing_is_empty():
    p = planned(sc.destroy_nothing())
    assert p.actions == () and p.diagnostics == ()


def test_plan_to_json():
    prog = live_program("progs/count_ingress")
    p = planned(sc.changed_digest_and_staged_program())
    data = json.loads(json.dumps(p.to_json()))  # plain JSON types only
    from bpfdeploy.render.replies import FORMAT_VERSION

    assert data["format_version"] == PLAN_FORMAT == FORMAT_VERSION == 2  # one number for every reply
    assert data["deployment"] == NAME and data["pin_root"] == str(ROOT)
    assert data["summary"] == {"create": 0, "update": 1, "replace": 1, "delete": 1,
                               "no-op": len(p.actions) - 3}
    assert data["changes"] is True
    assert len(data["actions"]) == len(p.actions)
    assert [a["action"] for a in data["actions"]].count("replace") == 1
    replaced = next(a for a in data["actions"] if a["action"] == "replace")
    assert replaced["address"] == "prog/count_ingress" and "transition" in replaced
    # before/after are typed fields (the text is kept beside them for readers)
    assert replaced["before"] == {"prog_type": prog.type, "name": prog.name, "prog_id": prog.id}
    assert replaced["after"]["function"] == "count_ingress" and replaced["after"]["build"] == digest("count_ingress")
    assert replaced["before_text"] == f"{prog.type} {prog.name} id {prog.id}"
    noop_map = next(a for a in data["actions"] if a["resource"] == "map" and a["action"] == "no-op")
    assert set(noop_map["after"]) == {"map_type", "key_size", "value_size", "max_entries", "flags"}
    assert all(isinstance(v, int) for k, v in noop_map["after"].items() if k != "map_type")
    assert data["conflicts"] == [] and data["diagnostics"] == []


def test_noop_plan_to_json_has_no_changes():
    data = planned(sc.in_sync()).to_json()
    assert data["changes"] is False
    assert data["summary"]["no-op"] == len(data["actions"])


# ---------------------------------------------------------------- bpftool 7.1's invalid JSON


def test_net_show_with_a_flow_dissector_is_invalid_json_and_still_parses():
    text = _text("net-show-flow-dissector.txt")
    with pytest.raises(ValueError):
        json.loads(text)  # the recording really holds bpftool 7.1's broken output
    data = live_module._load_json(text, "net show")
    dissector = next(p for p in ALL_PROGRAMS if p.type == "flow_dissector")
    assert data == [{"xdp": [], "tc": [], "flow_dissector": [{"id": dissector.id}]}]


def test_empty_bpftool_output_is_an_empty_list():
    assert live_module._load_json("\n", "cgroup show") == []
    assert parse_programs("[]") == [] and parse_links("") == []


# ---------------------------------------------------------------- pin owner, group and mode


def test_pin_access_drift_is_an_update_and_matching_access_a_noop():
    name = sc.ACCESS_MAP
    map_pin = str(ROOT / "maps" / name)
    p = planned(sc.pin_access_drift())
    assert changed(p) == {f"access/map/{name}": Kind.UPDATE}
    action = by_address(p)[f"access/map/{name}"]
    assert action.resource is Resource.ACCESS and action.live_pin == map_pin
    assert (action.before.text, action.after.text) == ("owner 0 group 0 mode 0600", "group metrics mode 0640")
    assert action.to_json()["before"] == {"uid": 0, "gid": 0, "mode": "0600"}
    assert action.to_json()["after"] == {"gid": 1000, "mode": "0640"}
    assert by_address(p)["access/pin_root"].kind is Kind.NOOP  # mode 0755 as asked; owner/group not asked

    assert planned(sc.pin_access_as_asked()).changes == ()


def test_pin_access_of_a_new_pin_is_not_a_separate_action():
    name = sc.ACCESS_MAP
    p = planned(sc.pin_access_of_a_new_pin())
    assert by_address(p)[f"map/{name}"].kind is Kind.CREATE
    assert not [a for a in p.actions if a.resource is Resource.ACCESS]


# ---------------------------------------------------------------- optional attachments


def test_optional_attachment_on_a_missing_cgroup_is_skipped_with_a_warning():
    s = sc.on_a_missing_cgroup(optional=True)
    first, missing = sc.desired().attachments[0], sc.MISSING_CGROUP
    p = planned(s)
    assert p.errors == ()
    assert p.skipped == ((first.name, f"cgroup {missing} does not exist"),)
    assert f"attach/{first.name}" not in by_address(p)
    assert any(d.severity == "warning" and "is skipped" in d.message for d in p.diagnostics)
    assert p.to_json()["skipped"] == [{"attachment": first.name, "reason": f"cgroup {missing} does not exist"}]
    # Its link, still pinned, is not deleted as "no longer in the manifest".
    assert not [a for a in p.actions if a.kind is Kind.DELETE and a.address == f"attach/{first.name}"]

    required = sc.on_a_missing_cgroup(optional=False)
    assert [d.message for d in planned(required).errors] == [f"cgroup {missing} does not exist"]
