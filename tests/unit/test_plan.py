"""The planner on recorded kernel state: no root, no kernel calls.

The live side of every case comes from bpftool JSON that ``scripts/record-fixtures.sh``
recorded from a real kernel (``tests/fixtures/bpftool/``): a scratch deployment with pin
root ``meta.json["pin_root"]`` holding maps, programs and pinned bpf_links, plus a few
things a deployment must leave alone (another owner's program and link on the same cgroup
hook, a pin that shares the pin root's prefix). Ids are whatever the kernel gave when it was
recorded, so the tests read them from the fixtures instead of spelling them out.

The desired side is built directly from the dataclasses of ``bpfdeploy.desired``; its map
geometry is what the objects in ``bpf/`` define, so the "in sync" case also checks that the
recorded maps are the ones those objects make.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfdeploy import hooks
from bpfdeploy.desired import DesiredAttachment, DesiredMap, DesiredProgram, DesiredState, MapGeometry
from bpfdeploy.hooks import HookKind
from bpfdeploy.kernel import live as live_module
from bpfdeploy.kernel.libbpf import BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE
from bpfdeploy.kernel.live import (
    LiveHook,
    LiveState,
    hook_key,
    index_by_pin,
    parse_links,
    parse_maps,
    parse_programs,
)
from bpfdeploy.manifest.model import AttachMode, EntriesPolicy
from bpfdeploy.model.frozen import replace
from bpfdeploy.plan import (PLAN_FORMAT, STAGING_SUFFIX, Cleanup, Kind, LegacyAttach, LegacyDetach, NewMap, Resource,
                            WriteEntries, plan)
from bpfdeploy.record import LegacyAttachment, Record

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bpftool"


def _text(name: str) -> str:
    return (FIXTURES / name).read_text()


META = json.loads(_text("meta.json"))
ROOT = Path(META["pin_root"])
CGROUP = META["cgroup"]
NAME = "fixtures"

ALL_PROGRAMS = parse_programs(_text("prog-show.json"))
ALL_MAPS = parse_maps(_text("map-show.json"))
ALL_LINKS = parse_links(_text("link-show.json"))

# Pins record-fixtures.sh made to play a part in one case each; a clean deployment lacks them.
DEFUNCT_LINK = "links/egress"  # count_egress's link, detached after it was made
OLD_LINK = "links/old-egress"  # a link on another cgroup that no manifest wants any more
STAGED_PROG = "progs/count_ingress" + STAGING_SUFFIX  # left over from an interrupted apply
SCENARIO_PINS = (DEFUNCT_LINK, OLD_LINK, STAGED_PROG)


def pin(rel: str) -> str:
    return str(ROOT / rel)


def live_program(rel: str):
    return index_by_pin(ALL_PROGRAMS, ROOT)[pin(rel)]


def u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


# ---------------------------------------------------------------- the desired side

ARRAY, HASH, SOCKHASH = 2, 1, 18
# From the map definitions in bpf/*.bpf.c (not from the recording).
GEOMETRY = {
    "traffic": MapGeometry(ARRAY, 4, 16, 2, 0),  # struct traffic_counter: two __u64
    "sock_ops_map": MapGeometry(SOCKHASH, 20, 8, 65535, 0),  # struct sock_key -> __u64
    "redir_stats": MapGeometry(ARRAY, 4, 8, 2, 0),
    "blocked_ports": MapGeometry(HASH, 4, 4, 64, 0),
    "port_rewrites": MapGeometry(HASH, 4, 4, 64, 0),
    "policy_stats": MapGeometry(ARRAY, 4, 8, 3, 0),
}
OBJECT_MAPS = {
    "counters": ("traffic",),
    "sockops": ("sock_ops_map",),
    "sockredir": ("redir_stats", "sock_ops_map"),
    "policy": ("blocked_ports", "policy_stats", "port_rewrites"),
}
PROGRAMS = (  # pin name, object, function, program type
    ("count_ingress", "counters", "count_ingress", "cgroup_skb"),
    ("count_egress", "counters", "count_egress", "cgroup_skb"),
    ("sockops", "sockops", "bpf_sockops_handler", "sock_ops"),
    ("sockredir", "sockredir", "bpf_redir", "sk_msg"),
    ("connect_policy", "policy", "connect_policy", "cgroup_sock_addr"),
)
# What record-fixtures.sh wrote into the maps, and what the desired state lists.
ENTRIES = {"blocked_ports": ((u32(9), u32(1)),), "port_rewrites": ((u32(7777), u32(7778)),)}
ATTACHMENTS = (  # link name, program, attach type, target
    ("ingress", "count_ingress", "ingress", CGROUP),
    ("sockops", "sockops", "sock_ops", CGROUP),
    ("connect", "connect_policy", "connect4", CGROUP),
    ("redirect", "sockredir", "msg_verdict", "sock_ops_map"),
)
EGRESS = ("egress", "count_egress", "egress", CGROUP)


def digest(pin_name: str) -> str:
    return f"sha256-of-{pin_name}-build-1"


def attachment(name, program, attach_type, target, mode=AttachMode.LINK) -> DesiredAttachment:
    at = hooks.attach_type(attach_type)
    return DesiredAttachment(name=name, pin=ROOT / "links" / name, program=program, attach_type=at, target=target,
                             mode=mode, create_cgroup=at.kind is HookKind.CGROUP)


def desired(objects=tuple(OBJECT_MAPS), attachments=ATTACHMENTS) -> DesiredState:
    programs = tuple(
        DesiredProgram(pin_name=p, pin=ROOT / "progs" / p, object=o, function=f, prog_type=t, type_override=None, expected_attach_type=None,
                       digest=digest(p), object_path=Path(f"/cache/{o}.bpf.o"),
                       maps=tuple((m, m) for m in OBJECT_MAPS[o]))
        for p, o, f, t in PROGRAMS if o in objects)
    names = sorted({m for o in objects for m in OBJECT_MAPS[o]})
    maps = tuple(
        DesiredMap(name=m, pin=ROOT / "maps" / m, geometry=GEOMETRY[m], entries=ENTRIES.get(m, ()),
                   entries_policy=EntriesPolicy.ENFORCE, recreate_if_incompatible=False,
                   users=tuple(p.pin_name for p in programs if m in OBJECT_MAPS[p.object]))
        for m in names)
    return DesiredState(NAME, ROOT, maps, programs, tuple(attachment(*a) for a in attachments))


def with_map(state: DesiredState, name: str, **changes) -> DesiredState:
    maps = tuple(replace(m, **changes) if m.name == name else m for m in state.maps)
    assert maps != state.maps, f"no map {name}"
    return replace(state, maps=maps)


def with_attachment(state: DesiredState, name: str, **changes) -> DesiredState:
    atts = tuple(replace(a, **changes) if a.name == name else a for a in state.attachments)
    assert atts != state.attachments, f"no attachment {name}"
    return replace(state, attachments=atts)


# ---------------------------------------------------------------- the live side


def recorded_hooks(include_foreign: bool = True) -> dict:
    """What BPF_PROG_QUERY would answer on each hook, derived from the recorded links.

    A cgroup hook that holds links reports BPF_F_ALLOW_MULTI (links attach in multi mode).
    """
    hooks_: dict = {}
    for a in (*ATTACHMENTS, EGRESS):
        at = hooks.attach_type(a[2])
        target_id = META["cgroup_id"] if at.kind is HookKind.CGROUP else None
        hooks_[hook_key(at.kind, a[3], at.value)] = LiveHook((), 0, True, target_id)
    for link in ALL_LINKS:
        if not include_foreign and not any(p.startswith(str(ROOT) + "/") for p in link.pins):
            continue
        if link.type == "cgroup" and link.cgroup_id == META["cgroup_id"]:
            at = hooks.attach_type(link.attach_type)
            key, flags = hook_key(HookKind.CGROUP, CGROUP, at.value), BPF_F_ALLOW_MULTI
        elif link.type == "14":  # BPF_LINK_TYPE_SOCKMAP; bpftool 7.1 prints the number
            key, flags = hook_key(HookKind.SOCKMAP, "sock_ops_map", hooks.attach_type("msg_verdict").value), 0
        else:
            continue
        old = hooks_[key]
        hooks_[key] = replace(old, prog_ids=old.prog_ids + (link.prog_id,), attach_flags=flags)
    return hooks_


def full_record(**changes) -> Record:
    """The record an apply of desired() would have written: every desired program's id and digest."""
    by_pin = index_by_pin(ALL_PROGRAMS, ROOT)
    digests = {str(by_pin[pin(f"progs/{p}")].id): digest(p) for p, *_ in PROGRAMS}
    # It made every pin of the recording under the pin root, so the record lists them all.
    owned = tuple(sorted({*index_by_pin(ALL_PROGRAMS, ROOT), *index_by_pin(ALL_MAPS, ROOT), *index_by_pin(ALL_LINKS, ROOT)}))
    fields = dict(name=NAME, pin_root=str(ROOT), boot_id="boot-1", digests=digests, created_cgroups=(CGROUP,),
                  pins=owned)
    fields.update(changes)
    return Record(**fields)


def live_state(without=SCENARIO_PINS, record: Record | None = None, hooks_=None, map_values=None,
               existing_cgroups=frozenset({CGROUP}), extra_pins=()) -> LiveState:
    """The recorded state, minus the pins in ``without`` (relative to the pin root)."""
    gone = {pin(p) for p in without}
    keep = lambda index: {k: v for k, v in index.items() if k not in gone}  # noqa: E731
    programs = keep(index_by_pin(ALL_PROGRAMS, ROOT))
    maps = keep(index_by_pin(ALL_MAPS, ROOT))
    links = keep(index_by_pin(ALL_LINKS, ROOT))
    if map_values is None:
        map_values = {(pin(f"maps/{m}"), k): v for m, entries in ENTRIES.items() for k, v in entries}
    return LiveState(
        pin_root=ROOT, pin_root_exists=True, pinned=tuple(sorted({*programs, *maps, *links, *extra_pins})),
        programs=programs, maps=maps, links=links,
        hooks=recorded_hooks(include_foreign=False) if hooks_ is None else hooks_,
        record=record or full_record(), map_values=map_values,
        names={p.id: p.name for p in ALL_PROGRAMS}, existing_cgroups=existing_cgroups,
        map_names={m.id: m.name for m in ALL_MAPS})


def by_address(p) -> dict:
    out = {}
    for a in p.actions:
        assert a.address not in out, f"two actions for {a.address}"
        out[a.address] = a
    return out


def changed(p) -> dict:
    return {a.address: a.kind for a in p.changes}


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
    state = desired()
    empty = LiveState(pin_root=ROOT, pin_root_exists=False, pinned=(),
                      record=Record(name=NAME, pin_root=str(ROOT), boot_id="boot-1"))
    p = plan(state, empty)
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
    state = desired(attachments=ATTACHMENTS[:1])
    state = with_attachment(state, "ingress", create_cgroup=False)
    hooks_ = {k: replace(h, target_exists=False) for k, h in recorded_hooks(False).items()}
    live = live_state(hooks_=hooks_, record=full_record(created_cgroups=()), existing_cgroups=frozenset())
    p = plan(state, live)
    assert [d.message for d in p.errors] == [f"cgroup {CGROUP} does not exist"]
    assert not any(a.resource is Resource.CGROUP for a in p.actions)


def test_created_cgroup_still_used_without_create_is_kept():
    state = with_attachment(desired(), "ingress", create_cgroup=False)
    state = with_attachment(state, "sockops", create_cgroup=False)
    state = with_attachment(state, "connect", create_cgroup=False)
    p = plan(state, live_state())  # the record says the deployment created CGROUP
    assert not any(a.resource is Resource.CGROUP for a in p.actions)


def test_everything_live_and_recorded_is_a_noop():
    state = desired()
    p = plan(state, live_state())
    assert p.changes == ()
    assert p.diagnostics == () and p.conflicts == ()
    assert p.counts()["no-op"] == len(state.maps) + len(state.programs) + len(state.attachments)
    # No-ops name the live object they stand for.
    ingress = by_address(p)["attach/ingress"]
    assert ingress.live_id == index_by_pin(ALL_LINKS, ROOT)[pin("links/ingress")].id


def test_changed_digest_replaces_the_program_and_moves_its_link_atomically():
    record = full_record()
    prog = live_program("progs/count_ingress")
    record = replace(record, digests={**record.digests, str(prog.id): "sha256-of-an-older-build"})
    p = plan(desired(), live_state(record=record))
    assert changed(p) == {"prog/count_ingress": Kind.REPLACE, "attach/ingress": Kind.UPDATE}
    actions = by_address(p)
    assert actions["prog/count_ingress"].live_id == prog.id
    assert "object changed" in actions["prog/count_ingress"].reason
    assert "atomic" in actions["attach/ingress"].transition
    order = [a.address for a in p.actions]
    assert order.index("prog/count_ingress") < order.index("attach/ingress")


def test_program_id_missing_from_the_record_is_replaced():
    prog = live_program("progs/count_ingress")
    record = full_record()
    record = replace(record, digests={k: v for k, v in record.digests.items() if k != str(prog.id)})
    p = plan(desired(), live_state(record=record))
    assert changed(p) == {"prog/count_ingress": Kind.REPLACE, "attach/ingress": Kind.UPDATE}
    assert f"program id {prog.id}" in by_address(p)["prog/count_ingress"].reason


def test_no_record_at_all_refuses_every_pin_and_plans_nothing():
    """Issue 17 item 2: pins the record does not list are not bpfdeploy's; they used to be deleted."""
    live = live_state(record=Record(name=NAME, pin_root=str(ROOT), boot_id="another-boot"))
    p = plan(desired(), live)
    assert p.actions == ()
    assert len(p.errors) == len(live.pinned)
    for pin_path, d in zip(live.pinned, p.errors):
        assert pin_path in d.message and "was not made by bpfdeploy" in d.message and d.path == "pin_root"
    destroy = plan(DesiredState(NAME, ROOT, (), (), ()), live, destroy=True)
    assert destroy.actions == () and len(destroy.errors) == len(live.pinned)


def test_a_record_that_lists_some_pins_refuses_the_others():
    live = live_state(without=())
    foreign = pin("maps/traffic")
    record = full_record(pins=tuple(x for x in live.record.pins if x != foreign))
    p = plan(desired(), replace(live, record=record))
    assert p.actions == () and [d.message.split(" ")[0] for d in p.errors] == ["maps/traffic"]


def test_a_record_from_before_pins_were_recorded_vouches_for_the_layout_only():
    live = live_state(without=(), extra_pins=(str(ROOT / "state"),))
    p = plan(desired(), replace(live, record=full_record(pins=None)))
    assert [d.message.split(" ")[0] for d in p.errors] == ["state"] and p.actions == ()


def test_nested_pin_is_named_by_its_path_under_the_pin_root():
    """Issue 17 item 3: maps/sub/x was shown as map/x in the same plan as map/x itself."""
    nested = pin("maps/sub/traffic")
    base = live_state()
    live = replace(base, pinned=tuple(sorted(base.pinned + (nested,))),
                               maps={**base.maps, nested: base.maps[pin("maps/traffic")]})
    # bpfdeploy never pins below maps/, progs/ or links/, so even a record that lists it does not make it ours.
    for record in (base.record, full_record(pins=base.record.pins + (nested,)), full_record(pins=None)):
        p = plan(desired(), replace(live, record=record))
        assert p.actions == ()
        assert [d.message.split(" ")[0] for d in p.errors] == ["maps/sub/traffic"]


def test_symlinks_and_foreign_mounts_under_the_pin_root_are_errors_and_nothing_is_planned():
    """Issue 17 item 1: a symlinked maps/ sent pins outside the pin root."""
    live = replace(live_state(), unsafe=((pin("maps"), "is a symlink (to /sys/fs/bpf/elsewhere)"),
                                                     (pin("progs/sub"), "is a mount point of another file system")))
    p = plan(desired(), live)
    assert p.actions == ()
    assert [d.message for d in p.errors] == [
        f"{pin('maps')} is a symlink (to /sys/fs/bpf/elsewhere): the pin root must be real directories on bpffs",
        f"{pin('progs/sub')} is a mount point of another file system: the pin root must be real directories on bpffs"]


def test_incompatible_map_geometry_is_an_error_by_default():
    state = with_map(desired(), "traffic", geometry=replace(GEOMETRY["traffic"], max_entries=4))
    p = plan(state, live_state())
    assert len(p.errors) == 1
    error = p.errors[0]
    assert error.path == "maps.traffic"
    assert "cannot be reused" in error.message
    assert "max_entries 2" in error.message and "max_entries 4" in error.message
    assert "recreate" in error.hint
    assert "map/traffic" not in by_address(p)  # neither kept nor replaced
    assert p.changes == ()


def test_incompatible_map_geometry_with_recreate_replaces_the_map_and_its_users():
    state = with_map(desired(), "traffic", geometry=replace(GEOMETRY["traffic"], value_size=8),
                     recreate_if_incompatible=True)
    p = plan(state, live_state())
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
    values = {(pin("maps/blocked_ports"), u32(9)): live_value,
              (pin("maps/port_rewrites"), u32(7777)): u32(7778)}
    p = plan(desired(), live_state(map_values=values))
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
    state = with_map(desired(), "blocked_ports", entries_policy=EntriesPolicy.SEED)
    values = {(pin("maps/blocked_ports"), u32(9)): u32(0), (pin("maps/port_rewrites"), u32(7777)): u32(7778)}
    p = plan(state, live_state(map_values=values))
    assert p.changes == ()


def test_defunct_link_is_replaced():
    link = index_by_pin(ALL_LINKS, ROOT)[pin(DEFUNCT_LINK)]
    assert link.cgroup_id == 0
    state = desired(attachments=ATTACHMENTS + (EGRESS,))
    p = plan(state, live_state(without=(OLD_LINK, STAGED_PROG)))
    assert changed(p) == {"attach/egress": Kind.REPLACE}
    action = by_address(p)["attach/egress"]
    assert "defunct" in action.reason
    assert (action.live_pin, action.live_id) == (pin(DEFUNCT_LINK), link.id)


def test_link_on_another_cgroup_is_replaced():
    """links/old-egress is on <cgroup>/old; a manifest that wants it on <cgroup> moves it."""
    state = desired(attachments=ATTACHMENTS + (("old-egress", "count_egress", "egress", CGROUP),))
    p = plan(state, live_state(without=(DEFUNCT_LINK, STAGED_PROG)))
    assert changed(p) == {"attach/old-egress": Kind.REPLACE}
    assert f"cgroup id {META['old_cgroup_id']}" in by_address(p)["attach/old-egress"].reason


def _foreign_ingress_id() -> int:
    """The program that another owner linked on the scratch cgroup's ingress hook."""
    ours = {p.id for p in index_by_pin(ALL_PROGRAMS, ROOT).values()}
    ids = [l.prog_id for l in ALL_LINKS if l.attach_type == "cgroup_inet_ingress"
           and l.cgroup_id == META["cgroup_id"] and l.prog_id not in ours]
    assert len(ids) == 1
    return ids[0]


def test_foreign_program_on_a_link_hook_is_a_conflict_not_an_action():
    foreign = _foreign_ingress_id()
    p = plan(desired(), live_state(hooks_=recorded_hooks(include_foreign=True)))
    assert p.errors == ()
    assert len(p.conflicts) == 1
    assert f"id {foreign} (count_ingress)" in p.conflicts[0]
    assert CGROUP in p.conflicts[0]
    assert p.changes == ()
    assert all(a.live_id != foreign for a in p.actions)


@pytest.mark.parametrize("mode, flags", [(AttachMode.EXCLUSIVE, 0), (AttachMode.OVERRIDE, BPF_F_ALLOW_OVERRIDE)])
def test_foreign_program_on_a_legacy_hook_is_an_error(mode, flags):
    foreign = _foreign_ingress_id()
    state = with_attachment(desired(), "ingress", mode=mode)
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.CGROUP, CGROUP, hooks.attach_type("ingress").value)
    hooks_[key] = LiveHook((foreign,), flags, True, META["cgroup_id"])
    p = plan(state, live_state(hooks_=hooks_, without=SCENARIO_PINS + ("links/ingress",)))
    assert len(p.errors) == 1
    assert p.errors[0].message.startswith("conflict:") and f"id {foreign}" in p.errors[0].message
    assert "attach/ingress" not in by_address(p)  # nothing is planned on that hook
    assert p.conflicts == ()


def test_foreign_program_on_a_multi_legacy_hook_is_a_conflict():
    foreign = _foreign_ingress_id()
    state = with_attachment(desired(), "ingress", mode=AttachMode.MULTI)
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.CGROUP, CGROUP, hooks.attach_type("ingress").value)
    hooks_[key] = LiveHook((foreign,), BPF_F_ALLOW_MULTI, True, META["cgroup_id"])
    p = plan(state, live_state(hooks_=hooks_, without=SCENARIO_PINS + ("links/ingress",)))
    assert p.errors == ()
    assert len(p.conflicts) == 1 and f"id {foreign}" in p.conflicts[0]
    assert by_address(p)["attach/ingress"].kind is Kind.CREATE
    assert by_address(p)["attach/ingress"].payload == LegacyAttach(BPF_F_ALLOW_MULTI)


@pytest.mark.parametrize("flags", [0, BPF_F_ALLOW_OVERRIDE], ids=["exclusive", "override"])
def test_foreign_non_multi_attach_on_a_link_hook_is_an_error(flags):
    foreign = _foreign_ingress_id()
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.CGROUP, CGROUP, hooks.attach_type("ingress").value)
    hooks_[key] = LiveHook((foreign,), flags, True, META["cgroup_id"])
    p = plan(desired(), live_state(hooks_=hooks_, without=SCENARIO_PINS + ("links/ingress",)))
    assert len(p.errors) == 1 and f"id {foreign}" in p.errors[0].message
    assert "attach/ingress" not in by_address(p)


def test_foreign_verdict_on_a_sockmap_is_an_error():
    foreign = _foreign_ingress_id()  # any id that is not ours
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.SOCKMAP, "sock_ops_map", hooks.attach_type("msg_verdict").value)
    hooks_[key] = LiveHook((foreign,), 0, True, None)
    p = plan(desired(), live_state(hooks_=hooks_, without=SCENARIO_PINS + ("links/redirect",)))
    assert len(p.errors) == 1 and f"id {foreign}" in p.errors[0].message
    assert "attach/redirect" not in by_address(p)


def test_pins_no_longer_desired_are_deleted_links_then_programs_then_maps():
    state = desired(objects=("counters", "sockops", "sockredir"), attachments=ATTACHMENTS[:2] + ATTACHMENTS[3:])
    p = plan(state, live_state(without=(), hooks_=recorded_hooks(include_foreign=False)))
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
    staged = pin("links/ingress" + STAGING_SUFFIX)
    live = live_state()
    link = live.links[pin("links/ingress")]
    live = replace(live, links={**live.links, staged: link}, pinned=tuple(sorted(live.pinned + (staged,))),
                               record=full_record(pins=live.record.pins + (staged,)))  # the killed apply journaled it
    p = plan(desired(), live)
    assert changed(p) == {f"pin/links/ingress{STAGING_SUFFIX}": Kind.DELETE}
    assert "interrupted apply" in p.changes[0].reason
    assert p.changes[0].payload == Cleanup() and p.actions[0] is p.changes[0]


def test_destroy_deletes_everything_under_the_pin_root():
    gone = CGROUP + "/removed-by-hand"
    legacy = LegacyAttachment("legacy-sysctl", hooks.attach_type("sysctl").value, CGROUP,
                              live_program("progs/count_ingress").id, 0)
    record = full_record(created_cgroups=(CGROUP, gone), legacy=(legacy,))
    hooks_ = {hook_key(HookKind.CGROUP, CGROUP, legacy.attach_type): LiveHook((legacy.prog_id,), 0, True,
                                                                              META["cgroup_id"])}
    live = live_state(without=(), record=record, hooks_=hooks_, existing_cgroups=frozenset({CGROUP}))
    p = plan(DesiredState(NAME, ROOT, (), (), ()), live, destroy=True)
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
    empty = LiveState(pin_root=ROOT, pin_root_exists=False, pinned=(),
                      record=Record(name=NAME, pin_root=str(ROOT), boot_id="boot-1"))
    p = plan(DesiredState(NAME, ROOT, (), (), ()), empty, destroy=True)
    assert p.actions == () and p.diagnostics == ()


def test_plan_to_json():
    record = full_record()
    prog = live_program("progs/count_ingress")
    record = replace(record, digests={**record.digests, str(prog.id): "old"})
    p = plan(desired(), live_state(without=(OLD_LINK, DEFUNCT_LINK), record=record))
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
    data = plan(desired(), live_state()).to_json()
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
    from bpfdeploy.manifest.model import PinAccess

    wanted = PinAccess(gid=1000, mode=0o640, group_name="metrics")
    name = sorted(GEOMETRY)[0]
    state = replace(with_map(desired(), name, access=wanted), pin_root_access=PinAccess(mode=0o755))
    map_pin = str(ROOT / "maps" / name)
    live = replace(live_state(), pin_stats={map_pin: (0, 0, 0o600), str(ROOT): (0, 0, 0o755)})
    p = plan(state, live)
    assert changed(p) == {f"access/map/{name}": Kind.UPDATE}
    action = by_address(p)[f"access/map/{name}"]
    assert action.resource is Resource.ACCESS and action.live_pin == map_pin
    assert (action.before.text, action.after.text) == ("owner 0 group 0 mode 0600", "group metrics mode 0640")
    assert action.to_json()["before"] == {"uid": 0, "gid": 0, "mode": "0600"}
    assert action.to_json()["after"] == {"gid": 1000, "mode": "0640"}
    assert by_address(p)["access/pin_root"].kind is Kind.NOOP  # mode 0755 as asked; owner/group not asked

    fixed = replace(live, pin_stats={map_pin: (0, 1000, 0o640), str(ROOT): (5, 5, 0o755)})
    assert plan(state, fixed).changes == ()


def test_pin_access_of_a_new_pin_is_not_a_separate_action():
    from bpfdeploy.manifest.model import PinAccess

    name = sorted(GEOMETRY)[0]
    state = with_map(desired(), name, access=PinAccess(mode=0o644))
    p = plan(state, live_state(without=(f"maps/{name}",)))
    assert by_address(p)[f"map/{name}"].kind is Kind.CREATE
    assert not [a for a in p.actions if a.resource is Resource.ACCESS]


# ---------------------------------------------------------------- optional attachments


def test_optional_attachment_on_a_missing_cgroup_is_skipped_with_a_warning():
    state = desired()
    first = state.attachments[0]
    missing = "/sys/fs/cgroup/unified/nowhere"
    state = with_attachment(state, first.name, target=missing, create_cgroup=False, optional=True)
    p = plan(state, live_state())
    assert p.errors == ()
    assert p.skipped == ((first.name, f"cgroup {missing} does not exist"),)
    assert f"attach/{first.name}" not in by_address(p)
    assert any(d.severity == "warning" and "is skipped" in d.message for d in p.diagnostics)
    assert p.to_json()["skipped"] == [{"attachment": first.name, "reason": f"cgroup {missing} does not exist"}]
    # Its link, still pinned, is not deleted as "no longer in the manifest".
    assert not [a for a in p.actions if a.kind is Kind.DELETE and a.address == f"attach/{first.name}"]

    required = with_attachment(desired(), first.name, target=missing, create_cgroup=False)
    assert [d.message for d in plan(required, live_state()).errors] == [f"cgroup {missing} does not exist"]
