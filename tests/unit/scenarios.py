"""The planning scenarios of tests/unit/test_plan.py, shared with tests/unit/test_apply.py.

Each scenario is a desired state and a live state (and whether it is a destroy), built from the
bpftool JSON that ``scripts/record-fixtures.sh`` recorded from a real kernel
(``tests/fixtures/bpftool/``): a scratch deployment with pin root ``meta.json["pin_root"]``
holding maps, programs and pinned bpf_links, plus a few things a deployment must leave alone
(another owner's program and link on the same cgroup hook, a pin that shares the pin root's
prefix). Ids are whatever the kernel gave when it was recorded, so they are read from the
fixtures instead of spelled out.

The desired side is built directly from the classes of ``bpfdeploy.desired``; its map geometry
is what the objects in ``bpf/`` define, so the "in sync" case also checks that the recorded maps
are the ones those objects make.

test_plan.py checks what the planner makes of each scenario; test_apply.py carries every one
of them through apply against the strict fake kernel (``SCENARIOS`` lists them by name).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

from bpfdeploy import hooks
from bpfdeploy.desired import DesiredAttachment, DesiredMap, DesiredProgram, DesiredState, MapGeometry
from bpfdeploy.hooks import HookKind
from bpfdeploy.kernel.libbpf import BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE
from bpfdeploy.kernel.live import LiveHook, LiveState, hook_key, index_by_pin, parse_links, parse_maps, parse_programs
from bpfdeploy.manifest.model import AttachMode, EntriesPolicy, PinAccess
from bpfdeploy.model.frozen import replace
from bpfdeploy.plan import STAGING_SUFFIX
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


# ---------------------------------------------------------------- the scenarios


class Scenario(NamedTuple):
    state: DesiredState
    live: LiveState
    destroy: bool = False


SCENARIOS: dict[str, Callable[[], Scenario]] = {}  # name -> builder, in the order test_plan.py has them


def scenario(name: str):
    def register(build: Callable[[], Scenario]) -> Callable[[], Scenario]:
        assert name not in SCENARIOS, name
        SCENARIOS[name] = build
        return build
    return register


def empty_live() -> LiveState:
    return LiveState(pin_root=ROOT, pin_root_exists=False, pinned=(),
                     record=Record(name=NAME, pin_root=str(ROOT), boot_id="boot-1"))


def nothing_desired() -> DesiredState:
    return DesiredState(NAME, ROOT, (), (), ())


@scenario("nothing live")
def nothing_live() -> Scenario:
    return Scenario(desired(), empty_live())


@scenario("counters on a bare host")
def counters_on_a_bare_host() -> Scenario:
    """A first deployment of the counters object (one map, two programs, one cgroup link); its hook is empty."""
    state = desired(objects=("counters",), attachments=(ATTACHMENTS[0],))
    hooks_ = {k: replace(h, prog_ids=()) for k, h in recorded_hooks(False).items()}
    return Scenario(state, LiveState(pin_root=ROOT, pin_root_exists=False, pinned=(), hooks=hooks_,
                                     existing_cgroups=frozenset({CGROUP})))


@scenario("missing cgroup without create")
def missing_cgroup_without_create() -> Scenario:
    state = with_attachment(desired(attachments=ATTACHMENTS[:1]), "ingress", create_cgroup=False)
    hooks_ = {k: replace(h, target_exists=False) for k, h in recorded_hooks(False).items()}
    return Scenario(state, live_state(hooks_=hooks_, record=full_record(created_cgroups=()),
                                      existing_cgroups=frozenset()))


@scenario("created cgroup still used without create")
def created_cgroup_still_used() -> Scenario:
    state = desired()
    for name in ("ingress", "sockops", "connect"):
        state = with_attachment(state, name, create_cgroup=False)
    return Scenario(state, live_state())  # the record says the deployment created CGROUP


@scenario("in sync")
def in_sync() -> Scenario:
    return Scenario(desired(), live_state())


def _older_build(record: Record, digest_: str = "sha256-of-an-older-build") -> Record:
    prog = live_program("progs/count_ingress")
    return replace(record, digests={**record.digests, str(prog.id): digest_})


@scenario("changed digest")
def changed_digest() -> Scenario:
    return Scenario(desired(), live_state(record=_older_build(full_record())))


@scenario("program id missing from the record")
def program_id_unrecorded() -> Scenario:
    prog = live_program("progs/count_ingress")
    record = full_record()
    record = replace(record, digests={k: v for k, v in record.digests.items() if k != str(prog.id)})
    return Scenario(desired(), live_state(record=record))


@scenario("every program rebuilt")
def every_program_rebuilt() -> Scenario:
    state = desired()
    return Scenario(replace(state, programs=tuple(replace(x, digest="new") for x in state.programs)), live_state())


def _no_record_live() -> LiveState:
    return live_state(record=Record(name=NAME, pin_root=str(ROOT), boot_id="another-boot"))


@scenario("no record")
def no_record() -> Scenario:
    return Scenario(desired(), _no_record_live())


@scenario("destroy without a record")
def destroy_without_a_record() -> Scenario:
    return Scenario(nothing_desired(), _no_record_live(), destroy=True)


@scenario("record lists some pins")
def record_lists_some_pins() -> Scenario:
    live = live_state(without=())
    foreign = pin("maps/traffic")
    record = full_record(pins=tuple(x for x in live.record.pins if x != foreign))
    return Scenario(desired(), replace(live, record=record))


@scenario("record from before pins were recorded")
def record_before_pins() -> Scenario:
    live = live_state(without=(), extra_pins=(str(ROOT / "state"),))
    return Scenario(desired(), replace(live, record=full_record(pins=None)))


NESTED = pin("maps/sub/traffic")


def nested_pin(record_kind: str) -> Scenario:
    """maps/sub/traffic, with a record that does not list it, lists it, or predates pin lists."""
    base = live_state()
    live = replace(base, pinned=tuple(sorted(base.pinned + (NESTED,))),
                   maps={**base.maps, NESTED: base.maps[pin("maps/traffic")]})
    record = {"unlisted": base.record, "listed": full_record(pins=base.record.pins + (NESTED,)),
              "no pin list": full_record(pins=None)}[record_kind]
    return Scenario(desired(), replace(live, record=record))


NESTED_RECORDS = ("unlisted", "listed", "no pin list")
for _kind in NESTED_RECORDS:
    scenario(f"nested pin, record {_kind}")(lambda k=_kind: nested_pin(k))


@scenario("symlinks and foreign mounts under the pin root")
def unsafe_pin_root() -> Scenario:
    return Scenario(desired(), replace(live_state(), unsafe=(
        (pin("maps"), "is a symlink (to /sys/fs/bpf/elsewhere)"),
        (pin("progs/sub"), "is a mount point of another file system"))))


@scenario("incompatible map geometry")
def incompatible_geometry() -> Scenario:
    return Scenario(with_map(desired(), "traffic", geometry=replace(GEOMETRY["traffic"], max_entries=4)), live_state())


@scenario("incompatible map geometry, recreate")
def incompatible_geometry_recreate() -> Scenario:
    state = with_map(desired(), "traffic", geometry=replace(GEOMETRY["traffic"], value_size=8),
                     recreate_if_incompatible=True)
    return Scenario(state, live_state())


def entries_differ(live_value: bytes | None) -> Scenario:
    values = {(pin("maps/blocked_ports"), u32(9)): live_value, (pin("maps/port_rewrites"), u32(7777)): u32(7778)}
    return Scenario(desired(), live_state(map_values=values))


scenario("enforced entry has another value")(lambda: entries_differ(u32(0)))
scenario("enforced entry is missing")(lambda: entries_differ(None))


@scenario("every enforced entry is missing")
def every_entry_missing() -> Scenario:
    return Scenario(desired(), live_state(map_values={}))


@scenario("seeded entries")
def seeded_entries() -> Scenario:
    state = with_map(desired(), "blocked_ports", entries_policy=EntriesPolicy.SEED)
    values = {(pin("maps/blocked_ports"), u32(9)): u32(0), (pin("maps/port_rewrites"), u32(7777)): u32(7778)}
    return Scenario(state, live_state(map_values=values))


@scenario("defunct link")
def defunct_link() -> Scenario:
    return Scenario(desired(attachments=ATTACHMENTS + (EGRESS,)), live_state(without=(OLD_LINK, STAGED_PROG)))


@scenario("link on another cgroup")
def link_on_another_cgroup() -> Scenario:
    """links/old-egress is on <cgroup>/old; a manifest that wants it on <cgroup> moves it."""
    state = desired(attachments=ATTACHMENTS + (("old-egress", "count_egress", "egress", CGROUP),))
    return Scenario(state, live_state(without=(DEFUNCT_LINK, STAGED_PROG)))


def foreign_ingress_id() -> int:
    """The program that another owner linked on the scratch cgroup's ingress hook."""
    ours = {p.id for p in index_by_pin(ALL_PROGRAMS, ROOT).values()}
    ids = [link.prog_id for link in ALL_LINKS if link.attach_type == "cgroup_inet_ingress"
           and link.cgroup_id == META["cgroup_id"] and link.prog_id not in ours]
    assert len(ids) == 1
    return ids[0]


@scenario("foreign program on a link hook")
def foreign_on_a_link_hook() -> Scenario:
    return Scenario(desired(), live_state(hooks_=recorded_hooks(include_foreign=True)))


def foreign_on_ingress(state: DesiredState, flags: int, without: tuple = ("links/ingress",)) -> Scenario:
    """The foreign program attached the legacy way on ingress with ``flags``, and our ingress link gone."""
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.CGROUP, CGROUP, hooks.attach_type("ingress").value)
    hooks_[key] = LiveHook((foreign_ingress_id(),), flags, True, META["cgroup_id"])
    return Scenario(state, live_state(hooks_=hooks_, without=SCENARIO_PINS + without))


LEGACY_MODES = {"exclusive": (AttachMode.EXCLUSIVE, 0), "override": (AttachMode.OVERRIDE, BPF_F_ALLOW_OVERRIDE)}
for _name, (_mode, _flags) in LEGACY_MODES.items():
    scenario(f"foreign program on a legacy hook, {_name}")(
        lambda m=_mode, f=_flags: foreign_on_ingress(with_attachment(desired(), "ingress", mode=m), f))
scenario("foreign program on a multi legacy hook")(lambda: foreign_on_ingress(
    with_attachment(desired(), "ingress", mode=AttachMode.MULTI), BPF_F_ALLOW_MULTI))
NON_MULTI = {"exclusive": 0, "override": BPF_F_ALLOW_OVERRIDE}
for _name, _flags in NON_MULTI.items():
    scenario(f"foreign {_name} attach on a link hook")(lambda f=_flags: foreign_on_ingress(desired(), f))


@scenario("foreign verdict on a sockmap")
def foreign_verdict_on_a_sockmap() -> Scenario:
    hooks_ = recorded_hooks(include_foreign=False)
    key = hook_key(HookKind.SOCKMAP, "sock_ops_map", hooks.attach_type("msg_verdict").value)
    hooks_[key] = LiveHook((foreign_ingress_id(),), 0, True, None)  # any id that is not ours
    return Scenario(desired(), live_state(hooks_=hooks_, without=SCENARIO_PINS + ("links/redirect",)))


@scenario("pins no longer desired")
def pins_no_longer_desired() -> Scenario:
    state = desired(objects=("counters", "sockops", "sockredir"), attachments=ATTACHMENTS[:2] + ATTACHMENTS[3:])
    return Scenario(state, live_state(without=(), hooks_=recorded_hooks(include_foreign=False)))


STAGED_LINK = pin("links/ingress" + STAGING_SUFFIX)


@scenario("staged link of an interrupted apply")
def staged_link_left() -> Scenario:
    live = live_state()
    link = live.links[pin("links/ingress")]
    live = replace(live, links={**live.links, STAGED_LINK: link}, pinned=tuple(sorted(live.pinned + (STAGED_LINK,))),
                   record=full_record(pins=live.record.pins + (STAGED_LINK,)))  # the killed apply journaled it
    return Scenario(desired(), live)


GONE_CGROUP = CGROUP + "/removed-by-hand"


def legacy_sysctl() -> LegacyAttachment:
    return LegacyAttachment("legacy-sysctl", hooks.attach_type("sysctl").value, CGROUP,
                            live_program("progs/count_ingress").id, 0)


@scenario("destroy")
def destroy_everything() -> Scenario:
    legacy = legacy_sysctl()
    record = full_record(created_cgroups=(CGROUP, GONE_CGROUP), legacy=(legacy,))
    hooks_ = {hook_key(HookKind.CGROUP, CGROUP, legacy.attach_type): LiveHook((legacy.prog_id,), 0, True,
                                                                              META["cgroup_id"])}
    live = live_state(without=(), record=record, hooks_=hooks_, existing_cgroups=frozenset({CGROUP}))
    return Scenario(nothing_desired(), live, destroy=True)


@scenario("destroy of the recorded pins")
def destroy_recorded_pins() -> Scenario:
    return Scenario(nothing_desired(), live_state(without=()), destroy=True)


@scenario("destroy of nothing")
def destroy_nothing() -> Scenario:
    return Scenario(nothing_desired(), empty_live(), destroy=True)


@scenario("changed digest beside a staged program")
def changed_digest_and_staged_program() -> Scenario:
    """What test_plan_to_json renders: a replace, its link update and the cleanup of a staged pin."""
    return Scenario(desired(), live_state(without=(OLD_LINK, DEFUNCT_LINK), record=_older_build(full_record(), "old")))


PIN_ACCESS = PinAccess(gid=1000, mode=0o640, group_name="metrics")
ACCESS_MAP = sorted(GEOMETRY)[0]


def pin_access(stats: dict) -> Scenario:
    state = replace(with_map(desired(), ACCESS_MAP, access=PIN_ACCESS), pin_root_access=PinAccess(mode=0o755))
    return Scenario(state, replace(live_state(), pin_stats=stats))


@scenario("pin access drift")
def pin_access_drift() -> Scenario:
    return pin_access({pin(f"maps/{ACCESS_MAP}"): (0, 0, 0o600), str(ROOT): (0, 0, 0o755)})


@scenario("pin access as asked")
def pin_access_as_asked() -> Scenario:
    return pin_access({pin(f"maps/{ACCESS_MAP}"): (0, 1000, 0o640), str(ROOT): (5, 5, 0o755)})


@scenario("pin access of a new pin")
def pin_access_of_a_new_pin() -> Scenario:
    state = with_map(desired(), ACCESS_MAP, access=PinAccess(mode=0o644))
    return Scenario(state, live_state(without=(f"maps/{ACCESS_MAP}",)))


MISSING_CGROUP = "/sys/fs/cgroup/unified/nowhere"


def on_a_missing_cgroup(optional: bool) -> Scenario:
    state = desired()
    first = state.attachments[0]
    state = with_attachment(state, first.name, target=MISSING_CGROUP, create_cgroup=False, optional=optional)
    return Scenario(state, live_state())


scenario("optional attachment on a missing cgroup")(lambda: on_a_missing_cgroup(True))
scenario("required attachment on a missing cgroup")(lambda: on_a_missing_cgroup(False))
