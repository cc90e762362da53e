"""Planning: a pure function from (desired state, live state) to a Plan.

No I/O, no clock, no globals: everything the planner knows arrived in its arguments, so
it is tested on recorded bpftool JSON without root. A Plan is data: the applier carries
out its actions in order and never re-decides from their reasons.

Order: cgroups, maps, programs, attachments; deletions in the reverse order at the end.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

from bpfdeploy.model.desired import DesiredAttachment, DesiredMap, DesiredProgram, DesiredState, PinAccess
from bpfdeploy.diagnostics import Diagnostic
from bpfdeploy.hooks import (BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, BY_VALUE, TC_EGRESS, TC_INGRESS, HookKind,
                             split_device_target)
from bpfdeploy.model.frozen import field, frozen
from bpfdeploy.model.live import LiveState, hook_key
from bpfdeploy.manifest.paths import format_path
from bpfdeploy.manifest.model import AttachMode, EntriesPolicy
from bpfdeploy.model.plan_fields import (EntryChange, State, access_state, attachment_state, cgroup_state,
                                         deleted_link_state, entries_state, geometry_state, legacy_hook_state,
                                         legacy_state, link_state, live_access_state, live_program_state,
                                         program_state, qdisc_state, tc_filter_state)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms); type checkers read it as True
if TYPE_CHECKING:
    from bpfdeploy.record import LegacyAttachment

# 2: before/after are objects of typed fields (they were text), a map update lists its entries.
# The same number as every --json reply's format_version (render/replies.FORMAT_VERSION).
PLAN_FORMAT = 2
BPFFS = "/sys/fs/bpf"  # where bpfdeploy's pins live (kernel/apply.ensure_bpffs mounts it)
STAGING_SUFFIX = "__bpfdeploy_new"  # staged pins of replacements; renamed over the old pin at commit


class Kind(enum.Enum):
    CREATE = "create"
    UPDATE = "update"  # changed in place (link moved to a new program, map entries written)
    REPLACE = "replace"  # a new object takes the old one's place
    DELETE = "delete"
    NOOP = "no-op"


class Resource(enum.Enum):
    CGROUP = "cgroup"
    MAP = "map"
    PROGRAM = "prog"
    ATTACHMENT = "attach"
    PIN = "pin"  # a pin under our root that nothing desired explains (an orphan)
    QDISC = "qdisc"  # the clsact qdisc that tc filters need
    ACCESS = "access"  # owner, group and mode of a pin or of the pin root's directories


def link_target(a: DesiredAttachment, hook) -> str:
    """What a device or tracing link is attached to, as the record keeps it (a uprobe with its offset
    and inode, an XDP link with its mode)."""
    if a.attach_type.short[0] in ("uprobe", "uretprobe") and hook is not None and hook.identity:
        return f"{a.target} {hook.identity}"
    if a.attach_type.name == "xdp":
        return f"{a.target} mode {a.xdp_mode or 'auto'}"
    return a.target


MODE_FLAGS = {AttachMode.MULTI: BPF_F_ALLOW_MULTI, AttachMode.OVERRIDE: BPF_F_ALLOW_OVERRIDE, AttachMode.EXCLUSIVE: 0}


# -- payloads: what apply needs beyond the desired object, one small immutable type per kind.
# The planner decides everything in them; apply reads fields, never reasons or strings.

@frozen
class NewMap:
    """A map to create (or recreate): loaded from the object of program ``loader`` (a pin name), where
    it is called ``inner``, then pinned and filled with ``entries``. The planner picks the loader: the
    first program that uses the map (desired.resolve checked that every user defines it alike)."""

    loader: str
    inner: str
    entries: tuple[tuple[bytes, bytes], ...]


@frozen
class WriteEntries:
    """Entries of a live map to overwrite: only those that differ from the manifest."""

    entries: tuple[tuple[bytes, bytes], ...]


@frozen
class XdpTakeover:
    """Our own XDP link that holds the device now: removed just before the new link is made."""

    holder_pin: str


@frozen
class LegacyAttach:
    """A cgroup attach without a link, with the BPF_F_ALLOW_* ``flags`` of its mode.

    ``old``: our attach there now (from the record), if any. ``detach_first``: the mode changes on
    the same hook, which the kernel refuses while the old attach holds other flags (a gap).
    ``retire``: the old attach is on another hook and is detached after the commit."""

    flags: int
    old: LegacyAttachment | None = None
    detach_first: bool = False
    retire: LegacyDetach | None = None


@frozen
class TcFilterRemoval:
    """A tc filter of ours to delete, at its (pref, handle) on a device's clsact qdisc."""

    device: str
    netns: str | None
    direction: str  # "ingress" | "egress"
    priority: int
    handle: int


@frozen
class TcFilter:
    """A tc bpf filter at a fixed (pref, handle): ``tc filter replace`` creates it or swaps its program.

    ``old``: our filter there now (from the record); ``retire``: our filter at a place the manifest
    no longer names, deleted after the commit."""

    device: str
    netns: str | None
    direction: str
    priority: int
    handle: int
    old: LegacyAttachment | None = None
    retire: TcFilterRemoval | None = None


@frozen
class LegacyDetach:
    """A legacy cgroup attach of ours to detach (the program by id from the hook)."""

    old: LegacyAttachment


@frozen
class Qdisc:
    """A clsact qdisc on a device: added for tc filters, deleted when we added it and none is left."""

    device: str
    netns: str | None


@frozen
class Cleanup:
    """A staged pin left by a killed apply: removed first, so that staging can use the name again."""


Payload = NewMap | WriteEntries | XdpTakeover | LegacyAttach | TcFilter | TcFilterRemoval | LegacyDetach | Qdisc | Cleanup


@frozen
class Action:
    """One step of a plan. Apply carries out the plan's actions in the plan's order.

    address: stable name of the resource (``prog/bpf_redir``); reason: for the reader only.
    desired: the DesiredMap/DesiredProgram/DesiredAttachment to create or keep, or the cgroup path
    (None for deletes). live_pin / live_id: the existing kernel object this action changes or removes.
    payload: what apply needs beyond that (one of the payload types above, or None).
    before / after: what the resource is now and will be (text for the reader, typed fields for JSON).
    entries: for a map update, each listed entry whose live value differs (old -> new).
    transition: for replacements, whether the hook sees a gap or an overlap.
    """

    kind: Kind
    resource: Resource
    address: str
    reason: str = ""
    desired: DesiredMap | DesiredProgram | DesiredAttachment | PinAccess | str | None = None
    live_pin: str = ""
    live_id: int = 0
    before: State | None = None
    after: State | None = None
    transition: str = ""
    payload: Payload | None = None
    entries: tuple[EntryChange, ...] = ()

    def to_json(self) -> dict:
        out = {"action": self.kind.value, "resource": self.resource.value, "address": self.address,
               "reason": self.reason, "before": self.before.to_json() if self.before else None,
               "after": self.after.to_json() if self.after else None,
               "before_text": self.before.text if self.before else None,
               "after_text": self.after.text if self.after else None}
        if self.transition:
            out["transition"] = self.transition
        if self.entries:
            out["entries"] = [e.to_json() for e in self.entries]
        return out


@frozen
class Plan:
    name: str
    pin_root: str
    actions: tuple[Action, ...]
    diagnostics: tuple[Diagnostic, ...] = ()  # errors stop apply; warnings (conflicts) are shown
    conflicts: tuple[str, ...] = field(default=())
    artifacts: dict | None = None  # where the objects came from when not built here (artifacts.Provenance)
    # (attachment name, why) of optional attachments left out because their hook cannot be used
    skipped: tuple[tuple[str, str], ...] = ()
    chains: tuple = ()  # order.Chain of each hook whose programs run in a chain we order or share
    # bpffs mounts apply makes first (the pin base is not a bpffs here); apply then plans again
    mounts: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind is not Kind.NOOP)

    @property
    def pending(self) -> bool:
        """Whether apply has anything to do: an action, or a bpffs to mount."""
        return bool(self.changes or self.mounts)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def counts(self) -> dict[str, int]:
        out = {k.value: 0 for k in Kind}
        for a in self.actions:
            out[a.kind.value] += 1
        return out

    def to_json(self) -> dict:
        return {"format_version": PLAN_FORMAT, "deployment": self.name, "pin_root": self.pin_root,
                "summary": self.counts(), "changes": self.pending,
                "actions": [a.to_json() for a in self.actions],
                "conflicts": list(self.conflicts), "diagnostics": [d.to_json() for d in self.diagnostics],
                "artifacts": self.artifacts,
                "skipped": [{"attachment": name, "reason": why} for name, why in self.skipped],
                "chains": [c.to_json() for c in self.chains],
                "mounts": [{"fstype": "bpf", "target": m} for m in self.mounts]}


def _anchors_first(attachments) -> list:
    """Attachments in manifest order, except that one placed before/after another comes after it,
    so that apply makes the anchor's link first."""
    names = {a.name for a in attachments}
    if not any(a.order is not None and a.order.anchor in names for a in attachments):
        return list(attachments)  # nothing is anchored to another: manifest order (the usual case)
    out: list = []
    done: set[str] = set()
    pending = list(attachments)
    while pending:
        ready = next((a for a in pending if a.order is None or a.order.anchor is None or a.order.anchor in done
                      or a.order.anchor not in names), pending[0])
        out.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return out


def plan(desired: DesiredState, live: LiveState, manifest_file: str = "", destroy: bool = False) -> Plan:
    p = _Planner(desired, live, manifest_file)
    if destroy:
        p.gone = "removed by destroy"
    return p.run()


LAYOUT = ("links", "progs", "maps")  # the only directories bpfdeploy pins in, one level deep


def _relative(root: Path | str, pin: str) -> str:
    """A pin's path below the pin root, as Path.relative_to gives it (in string operations: the
    planner asks this of every pin, and building Paths was most of a no-op plan at N = 2,000)."""
    prefix = str(root).rstrip("/") + "/"
    if pin.startswith(prefix) and "//" not in pin and "/./" not in pin and not pin.endswith("/"):
        return pin[len(prefix):]
    return str(Path(pin).relative_to(root))


def _with_parents(path: str, known: set[str]) -> set[str]:
    """The path and its parents as Path(path).parents names them (strings: see _relative),
    stopping at the first one already known (its parents are known too)."""
    if "//" in path or "/./" in path or path.endswith(("/", "/.")) or not path.startswith("/"):
        p = Path(path)
        return {str(x) for x in (p, *p.parents)}
    out = set()
    while path not in known and path not in out:
        out.add(path)
        path = os.path.dirname(path)
    return out


def _in_layout(root: Path | str, pin: str) -> bool:
    parts = _relative(root, pin).split("/")
    return len(parts) == 2 and parts[0] in LAYOUT


def pin_address(root: Path | str, pin: str) -> str:
    """How a pin is named in a plan: its path relative to the pin root (maps/sub/x, never x)."""
    return _relative(root, pin)


class _Planner:
    def __init__(self, desired: DesiredState, live: LiveState, file: str):
        self.d, self.live, self.file = desired, live, file
        self.actions: list[Action] = []
        self.deletes: list[Action] = []
        self.cleanup: list[Action] = []  # leftovers of a killed apply, removed before anything else
        self.qdiscs: set[str] = set()  # devices whose clsact qdisc this plan adds
        self.ours = live.program_ids()  # ids of the programs pinned under our root
        self.diags: list[Diagnostic] = []
        self.conflicts: list[str] = []
        self.unseen_hooks: set = set()  # hooks holding programs while no bpffs is mounted (owner unknown)
        self.replaced_maps: set[str] = set()
        self.new_programs: set[str] = set()  # pin names loaded anew (create or replace)
        self.explained: set[str] = set()  # live pins that a desired object accounts for
        self.gone = "no longer in the manifest"
        self.skipped: list[tuple[str, str]] = []  # optional attachments left out, and why
        self.chains: list = []  # order.Chain per shared hook
        self.reorder: set[str] = set()  # existing attachments out of their place: made again there
        self.missing_cgroups: set[str] = set()  # cgroups that neither exist nor are created

    def run(self) -> Plan:
        for other, root in self.live.overlapping:
            self.diags.append(Diagnostic(
                f"pin root {self.d.pin_root} overlaps deployment {other!r} (pin root {root})", self.file, "pin_root",
                hint="every deployment needs a pin root of its own, neither inside nor around another's"))
        if self.live.overlapping or self._unsafe_pin_root():
            return Plan(self.d.name, str(self.d.pin_root), (), tuple(self.diags))
        self._cgroups()
        for m in self.d.maps:
            self._map(m)
        for p in self.d.programs:
            self._program(p)
        self._chains()
        for a in _anchors_first(self.d.attachments):
            self._attachment(a)
        self._access()
        self._leftovers()
        actions = tuple(self.cleanup) + tuple(self.actions) + tuple(self.deletes)
        mounts: tuple[str, ...] = ()
        if not self.live.bpffs_mounted:
            mounts = (BPFFS,)
            held = f"; {len(self.unseen_hooks)} of the manifest's hooks hold programs whose owner it cannot tell" \
                if self.unseen_hooks else ""
            self.diags.append(Diagnostic(
                f"bpffs is not mounted on {BPFFS}, so no pin of this deployment can be seen{held}", self.file,
                "pin_root", severity="warning",
                hint=f"apply mounts it (mount -t bpf bpf {BPFFS}) and plans again before it changes anything"))
        return Plan(self.d.name, str(self.d.pin_root), actions, tuple(self.diags), tuple(self.conflicts),
                    skipped=tuple(self.skipped), chains=tuple(self.chains), mounts=mounts)

    # -- chains of programs on shared hooks (tcx, cgroup links): where each program runs
    def _chains(self) -> None:
        from bpfdeploy.order import Chain, ChainEntry, plan_chain

        groups: dict[tuple, list[DesiredAttachment]] = {}
        for a in self.d.attachments:
            chained = (a.kind is HookKind.CGROUP and a.mode is AttachMode.LINK) or \
                a.attach_type.name in ("tcx_ingress", "tcx_egress")
            if chained:
                groups.setdefault(hook_key(a.kind, a.target, a.attach_type.value), []).append(a)
        for key, atts in groups.items():
            hook = self.live.hooks.get(key)
            live_ids = list(hook.prog_ids) if hook is not None else []
            if not any(a.order for a in atts) and len(live_ids) + sum(
                    1 for a in atts if str(a.pin) not in self.live.links) < 2:
                continue  # one program alone: no chain worth showing
            holders: dict[int, list[str]] = {}
            for a in atts:
                link = self.live.links.get(str(a.pin))
                if link is not None and link.prog_id in live_ids:
                    holders.setdefault(link.prog_id, []).append(a.name)
            live = []
            for pid in live_ids:
                name = holders[pid].pop(0) if holders.get(pid) else None
                label = name or f"{self.live.names.get(pid, '?')} (id {pid}" + \
                    (", not ours)" if pid not in self.ours else ")")
                live.append((pid, name, label))
            present = {n for _pid, n, _l in live if n}
            labels, moved, notes = plan_chain(live, [(a.name, a.order, a.name in present) for a in atts])
            self.reorder.update(moved)
            ids = {n or label: pid for pid, n, label in live}
            ours = {a.name for a in atts}
            entries = tuple(ChainEntry(label, ids.get(label, 0) if label not in moved else 0, label in ours,
                                       label in ours and (label in moved or label not in present))
                            for label in labels)
            first = atts[0]
            self.chains.append(Chain(f"{first.attach_type.short[0]} on {first.kind.value} {first.target}", entries,
                                     tuple(notes)))
            for note in notes:
                self.diags.append(Diagnostic(f"{first.hook_text()}: {note}", self.file, format_path(first.where),
                                             severity="warning"))

    # -- confinement: nothing is planned in a pin root that is not wholly the deployment's
    def _unsafe_pin_root(self) -> bool:
        """Report symlinks, foreign mounts and pins the record does not own; True if there are any.

        A symlink would send pins (and their removal) outside the pin root; a pin bpfdeploy did not
        make is someone else's, and bpfdeploy removes nothing it did not create.
        """
        for path, what in self.live.unsafe:
            self.diags.append(Diagnostic(
                f"{path} {what}: the pin root must be real directories on bpffs", self.file, "pin_root",
                hint="remove it (bpfdeploy follows no symlink and changes nothing until it is gone), "
                     "or choose another pin root"))
        record = self.live.record
        root = str(self.d.pin_root)
        owned = set(record.pins) if record is not None and record.pins is not None else None  # None: all
        for pin in self.live.pinned:
            if record is not None and (owned is None or pin in owned) and _in_layout(root, pin):
                continue
            self.diags.append(Diagnostic(
                f"{pin_address(root, pin)} ({pin}) is inside the pin root but was not made by bpfdeploy: "
                f"the record of deployment {self.d.name!r} does not list it", self.file, "pin_root",
                hint="bpfdeploy removes nothing it did not create: move that pin away (or remove it yourself), "
                     "or choose a pin root of the deployment's own"))
        return bool(self.diags)

    # -- cgroups
    def _cgroups(self) -> None:
        seen = set()
        for a in self.d.attachments:
            if a.kind is not HookKind.CGROUP or a.target in seen:
                continue
            seen.add(a.target)
            hook = self.live.hooks.get(hook_key(a.kind, a.target, a.attach_type.value))
            exists = hook is not None and hook.target_exists
            if not exists and a.create_cgroup:
                self.actions.append(Action(Kind.CREATE, Resource.CGROUP, f"cgroup:{a.target}",
                                           "the manifest asks for it and it does not exist", after=cgroup_state(a.target),
                                           desired=a.target))
            elif not exists:
                self.missing_cgroups.add(a.target)
                users = [x for x in self.d.attachments if x.kind is HookKind.CGROUP and x.target == a.target]
                if all(x.optional for x in users):
                    continue  # each optional attachment on it is skipped with a warning
                self.diags.append(Diagnostic(f"cgroup {a.target} does not exist", self.file, format_path(a.where),
                                             hint="create it, or set create: true on the attachment's cgroup"))
        for a in self.d.attachments:
            if a.kind is HookKind.NETNS:
                hook = self.live.hooks.get(hook_key(a.kind, a.target, a.attach_type.value))
                if hook is not None and not hook.target_exists:
                    self.diags.append(Diagnostic(f"network namespace {a.target} does not exist", self.file,
                                                 format_path(a.where), hint="create it first (ip netns add NAME)"))

    # -- maps
    def _map(self, m: DesiredMap) -> None:
        address = f"map/{m.name}"
        live = self.live.maps.get(str(m.pin))
        self.explained.add(str(m.pin))
        after = geometry_state(m.geometry)
        if live is None:
            self.actions.append(Action(Kind.CREATE, Resource.MAP, address, "not pinned yet", desired=m, after=after,
                                       payload=self._new_map(m)))
            self.replaced_maps.add(m.name)
            return
        if not m.geometry.compatible_with(live.geometry):
            before = geometry_state(live.geometry)
            if m.recreate_if_incompatible:
                self.actions.append(Action(Kind.REPLACE, Resource.MAP, address,
                                           "its definition changed; on_incompatible_change: recreate (contents are lost)",
                                           desired=m, live_pin=str(m.pin), live_id=live.id, before=before, after=after,
                                           payload=self._new_map(m)))
                self.replaced_maps.add(m.name)
            else:
                self.diags.append(Diagnostic(
                    f"map {m.name!r} cannot be reused: the pinned map is {before.text}, the objects now define {after.text}",
                    self.file, f"maps.{m.name}",
                    hint="keep the old definition, or set maps." + m.name + ".on_incompatible_change: recreate "
                         "to replace it with a new, empty map"))
            return
        if m.entries_policy is EntriesPolicy.ENFORCE:
            differ = tuple((k, v) for k, v in m.entries if self.live.map_values.get((str(m.pin), k)) != v)
            if differ:
                changes = tuple(EntryChange(k, self.live.map_values.get((str(m.pin), k)), v) for k, v in differ)
                self.actions.append(Action(Kind.UPDATE, Resource.MAP, address,
                                           f"{len(differ)} of its {len(m.entries)} listed entries differ",
                                           desired=m, live_pin=str(m.pin), live_id=live.id,
                                           before=entries_state(changes, "old", len(m.entries)),
                                           after=entries_state(changes, "new", len(m.entries)),
                                           payload=WriteEntries(differ), entries=changes))
                return
        self.actions.append(Action(Kind.NOOP, Resource.MAP, address, "in sync", desired=m, live_pin=str(m.pin),
                                   live_id=live.id, before=after, after=after))

    def _new_map(self, m: DesiredMap) -> NewMap:
        user = next(p for p in self.d.programs if any(outer == m.name for _inner, outer in p.maps))
        inner = next(i for i, outer in user.maps if outer == m.name)
        return NewMap(user.pin_name, inner, m.entries)

    # -- programs
    def _program(self, p: DesiredProgram) -> None:
        address = f"prog/{p.pin_name}"
        live = self.live.programs.get(str(p.pin))
        self.explained.add(str(p.pin))
        after = program_state(p)
        if live is None:
            self.actions.append(Action(Kind.CREATE, Resource.PROGRAM, address, "not pinned yet", desired=p, after=after))
            self.new_programs.add(p.pin_name)
            return
        before = live_program_state(live)
        reason = self._program_change(p, live)
        if reason:
            self.actions.append(Action(Kind.REPLACE, Resource.PROGRAM, address, reason, desired=p,
                                       live_pin=str(p.pin), live_id=live.id, before=before, after=after,
                                       transition="loaded beside the old one; its attachments move to it atomically"))
            self.new_programs.add(p.pin_name)
        else:
            self.actions.append(Action(Kind.NOOP, Resource.PROGRAM, address, "in sync", desired=p, live_pin=str(p.pin),
                                       live_id=live.id, before=before, after=before))

    def _program_change(self, p: DesiredProgram, live) -> str:
        record = self.live.record
        recorded = record.digest_of(live.id) if record else None
        if recorded is None:
            return f"program id {live.id} at the pin was not loaded by this deployment (replaced by hand, or no record)"
        if recorded != p.digest:
            return "its object changed (source, flags or file)"
        for inner, outer in p.maps:
            if outer in self.replaced_maps:
                return f"map {outer!r} is created anew"
            m = self.d.map(outer)
            live_map = self.live.maps.get(str(m.pin)) if m else None
            if live_map is None:
                continue
            # A program may leave some of its object's maps unused, so only a map of the same
            # name that is not the pinned one shows that the pin was replaced by hand.
            others = [i for i in live.map_ids if i != live_map.id and self.live.map_names.get(i) == inner[:15]]
            if others:
                return (f"it uses map id {others[0]} as {inner!r}, not the pinned {outer!r} (id {live_map.id}): "
                        "the map was replaced by hand")
        return ""

    # -- attachments
    def _attachment(self, a: DesiredAttachment) -> None:
        if not a.optional:
            self._plan_attachment(a)
            return
        if a.kind is HookKind.CGROUP and a.target in self.missing_cgroups:
            self._skip(a, f"cgroup {a.target} does not exist")
            return
        # An optional attachment whose hook cannot be used is left out with a warning, instead
        # of stopping the plan: its errors become the reason it is skipped.
        diags, actions, qdiscs = len(self.diags), len(self.actions), set(self.qdiscs)
        self._plan_attachment(a)
        errors = [d for d in self.diags[diags:] if d.severity == "error"]
        if errors:
            self.diags[diags:] = [d for d in self.diags[diags:] if d.severity != "error"]
            del self.actions[actions:]
            self.qdiscs = qdiscs
            self._skip(a, "; ".join(d.message for d in errors))

    def _skip(self, a: DesiredAttachment, why: str) -> None:
        self.explained.add(str(a.pin))  # a link of it that is still pinned is kept, not deleted
        self.skipped.append((a.name, why))
        self.diags.append(Diagnostic(f"optional attachment {a.name!r} is skipped: {why}", self.file,
                                     format_path(a.where), severity="warning",
                                     hint="apply makes the rest and exits 5 (PARTIAL); the next apply tries again"))

    def _plan_attachment(self, a: DesiredAttachment) -> None:
        address = f"attach/{a.name}"
        prog_changed = a.program in self.new_programs
        after = attachment_state(a)
        key = hook_key(a.kind, a.target, a.attach_type.value)
        hook = self.live.hooks.get(key)
        live_prog = self.live.programs.get(str(self.d.program(a.program).pin))
        ours = self.ours
        if a.kind in (HookKind.DEVICE, HookKind.TRACE) and hook is not None and not hook.target_exists:
            self.diags.append(Diagnostic(f"{a.hook_text()}: {hook.error or 'it does not exist'}", self.file,
                                         format_path(a.where)))
            return
        if a.attach_type.tc_filter:
            self._tc_attachment(a, address, after, hook, live_prog, prog_changed, ours)
            return
        if hook is not None and hook.prog_ids and not self.live.bpffs_mounted:
            # No bpffs here: none of our pins can be seen, so every program looks foreign. Whose they
            # are is decided by the plan apply makes after mounting it, not reported as conflicts now.
            self.unseen_hooks.add(key)
        elif hook is not None and hook.prog_ids:
            foreign = [i for i in hook.prog_ids if i not in ours]
            if foreign:
                names = ", ".join(f"id {i} ({self.live.names.get(i, '?')})" for i in foreign)
                text = f"{a.hook_text()}: {names} attached there, not owned by deployment {self.d.name!r}"
                # Only a cgroup hook in multi mode runs several programs side by side. Elsewhere a
                # second attach is refused (EPERM) or silently replaces the other program (a sockmap
                # verdict, the netns flow dissector), and bpfdeploy never removes what it does not own.
                shared = ((a.kind is HookKind.CGROUP and a.mode in (AttachMode.LINK, AttachMode.MULTI)
                           and hook.attach_flags == BPF_F_ALLOW_MULTI)
                          or a.attach_type.name in ("tcx_ingress", "tcx_egress"))  # tcx runs a chain
                if shared:
                    if text + "; left alone, both run" not in self.conflicts:  # once per hook, not per attachment
                        self.conflicts.append(text + "; left alone, both run")
                else:
                    why = ("the hook holds one program" if a.kind is not HookKind.CGROUP else
                           "the other program is attached without BPF_F_ALLOW_MULTI" if hook.attach_flags != BPF_F_ALLOW_MULTI
                           else f"a {a.mode.value} attach would replace it or be refused")
                    self.diags.append(Diagnostic(
                        f"conflict: {text}; {why}, and bpfdeploy never removes what it does not own",
                        self.file, format_path(a.where), hint="detach the other program yourself"
                        + (", or use mode: link or multi" if a.kind is HookKind.CGROUP else "")))
                    return
        if a.mode is AttachMode.LINK:
            self._link_attachment(a, address, after, hook, live_prog, prog_changed)
        else:
            self._legacy_attachment(a, address, after, hook, live_prog, prog_changed)

    def _xdp_holder(self, a, hook) -> str | None:
        """Our own XDP link already on the device (a device holds one XDP program)."""
        if a.attach_type.name != "xdp" or hook is None or hook.target_id is None:
            return None
        return next((pin for pin, link in sorted(self.live.links.items())
                     if link.type == "xdp" and link.ifindex == hook.target_id), None)

    def _link_attachment(self, a, address, after, hook, live_prog, prog_changed) -> None:
        self.explained.add(str(a.pin))
        link = self.live.links.get(str(a.pin))
        holder = self._xdp_holder(a, hook)
        takeover = XdpTakeover(holder) if holder else None
        gap = "a device holds one XDP program: the old link is removed just before the new one is made (gap)"
        if link is None:
            self.actions.append(Action(Kind.CREATE, Resource.ATTACHMENT, address, "not attached yet", desired=a,
                                       after=after, payload=takeover, transition=gap if holder else ""))
            return
        before = link_state(link)
        target_reason = self._link_target_mismatch(a, link, hook)
        recorded = self.live.record.link_targets.get(a.name) if self.live.record else None
        # Device links: the kernel tells the device (ifindex); the record adds the XDP mode.
        # Tracing links: only the record tells what they are attached to.
        check = a.kind is HookKind.TRACE or (a.kind is HookKind.DEVICE and recorded is not None)
        if not target_reason and check and recorded != link_target(a, hook):
            target_reason = (f"it was made for {recorded}" if recorded else "its hook is not recorded") + \
                f", the manifest now says {link_target(a, hook)}"
        transition = gap if holder else "the new link is attached before the old one is removed (brief overlap)"
        if not target_reason and a.name in self.reorder:
            target_reason = f"it is out of its place in the chain on its hook (order: {a.order.describe()})"
            if a.attach_type.name in ("tcx_ingress", "tcx_egress") and not prog_changed:
                transition = ("a tcx hook holds a program once: the old link is detached just before the new one "
                              "is made at its place (gap for this program)")
        if target_reason:
            self.actions.append(Action(Kind.REPLACE, Resource.ATTACHMENT, address, target_reason, desired=a,
                                       live_pin=str(a.pin), live_id=link.id, before=before, after=after,
                                       payload=takeover, transition=transition))
            return
        if (prog_changed or live_prog is None or link.prog_id != live_prog.id) and not a.attach_type.link_update:
            self.actions.append(Action(Kind.REPLACE, Resource.ATTACHMENT, address,
                                       f"program {a.program!r} is replaced, and a {a.attach_type.short[0]} link "
                                       "cannot be moved to it", desired=a, live_pin=str(a.pin), live_id=link.id,
                                       before=before, after=after,
                                       transition="a new link is made before the old one is removed: both programs "
                                                  "run for a moment (overlap)"))
            return
        if prog_changed:
            self.actions.append(Action(Kind.UPDATE, Resource.ATTACHMENT, address,
                                       f"program {a.program!r} is replaced", desired=a, live_pin=str(a.pin),
                                       live_id=link.id, before=before, after=after,
                                       transition="atomic link update: no gap, no overlap"))
            return
        if live_prog is None or link.prog_id != live_prog.id:
            # Another program of this deployment there: the manifest switched programs (a change, not drift).
            held = next((Path(pin).name for pin, p in self.live.programs.items()
                         if p.id == link.prog_id and Path(pin).parent == Path(self.d.pin_root) / "progs"), None)
            self.actions.append(Action(Kind.UPDATE, Resource.ATTACHMENT, address,
                                       f"the manifest now attaches program {a.program!r} here (instead of {held!r})"
                                       if held else
                                       f"the link holds program id {link.prog_id}, not the pinned {a.program!r}",
                                       desired=a, live_pin=str(a.pin), live_id=link.id, before=before, after=after,
                                       transition="atomic link update: no gap, no overlap"))
            return
        self.actions.append(Action(Kind.NOOP, Resource.ATTACHMENT, address, "in sync", desired=a, live_pin=str(a.pin),
                                   live_id=link.id, before=before, after=after))

    def _link_target_mismatch(self, a, link, hook) -> str:
        if a.kind is HookKind.DEVICE:
            if link.ifindex in (None, 0):
                return "the link is defunct (its device is gone or it was detached)"
            if hook is not None and hook.target_id is not None and link.ifindex != hook.target_id:
                return f"the link is on ifindex {link.ifindex}, not {a.device} (ifindex {hook.target_id})"
            return ""
        if a.kind is HookKind.CGROUP:
            if link.cgroup_id in (None, 0):
                return "the link is defunct (its cgroup is gone or it was detached)"
            if hook is not None and hook.target_id is not None and link.cgroup_id != hook.target_id:
                return f"the link is on cgroup id {link.cgroup_id}, not {a.target}"
            if link.attach_type and link.attach_type != a.attach_type.name:
                return f"the link's attach type is {link.attach_type}, not {a.attach_type.name}"
        elif a.kind is HookKind.NETNS:
            if link.netns_ino in (None, 0):
                return "the link is defunct (its network namespace is gone or it was detached)"
            if hook is not None and hook.target_id is not None and link.netns_ino != hook.target_id:
                return f"the link is in another network namespace (inode {link.netns_ino})"
        elif a.kind is HookKind.SOCKMAP:
            if a.target in self.replaced_maps:
                return f"map {a.target!r} is created anew"
            if hook is not None and link.prog_id not in hook.prog_ids:
                return "the link no longer holds the map's verdict (detached by hand)"
        return ""

    def _legacy_attachment(self, a, address, after, hook, live_prog, prog_changed) -> None:
        record = self.live.record
        old = next((x for x in (record.legacy if record else ()) if x.name == a.name), None)
        flags = MODE_FLAGS[a.mode]
        attached = hook is not None and old is not None and old.prog_id in hook.prog_ids
        if old is None or not attached:
            reason = "not attached yet" if old is None else f"program id {old.prog_id} is no longer attached there"
            self.actions.append(Action(Kind.CREATE, Resource.ATTACHMENT, address, reason, desired=a, after=after,
                                       payload=LegacyAttach(flags)))
            return
        before = legacy_state(old.prog_id, a.mode.value)
        if old.target != a.target or old.attach_type != a.attach_type.value:
            self.actions.append(Action(Kind.REPLACE, Resource.ATTACHMENT, address, "its hook changed",
                                       desired=a, live_id=old.prog_id, before=before, after=after,
                                       payload=LegacyAttach(flags, old, retire=LegacyDetach(old)),
                                       transition="attached at the new hook before the old is detached"))
            return
        if old.flags != flags:
            # The kernel refuses mixed flags on one hook, so this cannot be make-before-break.
            self.actions.append(Action(Kind.REPLACE, Resource.ATTACHMENT, address, "its attach mode changed",
                                       desired=a, live_id=old.prog_id, before=before, after=after,
                                       payload=LegacyAttach(flags, old, detach_first=True),
                                       transition="the old attach is removed before the new one "
                                       "is made: the hook has no program for a moment (gap)"))
            return
        if prog_changed or live_prog is None or live_prog.id != old.prog_id:
            self.actions.append(Action(Kind.UPDATE, Resource.ATTACHMENT, address, f"program {a.program!r} is replaced",
                                       desired=a, live_id=old.prog_id, before=before, after=after,
                                       payload=LegacyAttach(flags, old), transition="atomic replace (BPF_F_REPLACE)" if a.mode is AttachMode.MULTI
                                       else "atomic: the new program takes the hook's only slot"))
            return
        self.actions.append(Action(Kind.NOOP, Resource.ATTACHMENT, address, "in sync", desired=a, live_id=old.prog_id,
                                   before=before, after=after, payload=LegacyAttach(flags, old)))

    def _tc_attachment(self, a, address, after, hook, live_prog, prog_changed, ours) -> None:
        """A tc filter at a fixed (pref, handle) on the device's clsact qdisc."""
        record = self.live.record
        old = next((x for x in (record.legacy if record else ()) if x.name == a.name), None)
        filters = hook.filters if hook is not None else ()
        at_slot = [f for f in filters if (f[0], f[1]) == (a.priority, a.handle)]
        ours_there = old is not None and any(f[2] == old.prog_id for f in at_slot) and \
            (old.target, old.attach_type, old.priority, old.handle) == (a.target, a.attach_type.value, a.priority, a.handle)
        foreign = [f for f in at_slot if f[2] not in ours and not ours_there]
        if foreign:
            self.diags.append(Diagnostic(
                f"conflict: {a.hook_text()}: the tc filter pref {a.priority} handle {a.handle} holds program id "
                f"{foreign[0][2]} ({self.live.names.get(foreign[0][2], '?')}), not owned by deployment {self.d.name!r}",
                self.file, format_path(a.where), hint="choose another priority/handle, or remove that filter yourself"))
            return
        others = [f for f in filters if (f[0], f[1]) != (a.priority, a.handle) and f[2] not in ours]
        if others:
            self.conflicts.append(f"{a.hook_text()}: other tc filters are there (pref {others[0][0]}); left alone, "
                                  "they run in priority order with ours")
        if hook is not None and not hook.clsact and a.target not in self.qdiscs:
            self.qdiscs.add(a.target)
            self.actions.append(Action(Kind.CREATE, Resource.QDISC, f"qdisc:{a.target}", "the device has no clsact qdisc",
                                       desired=a, after=qdisc_state(a.device), payload=Qdisc(a.device, a.netns)))
        direction = "ingress" if a.attach_type.value == TC_INGRESS else "egress"
        filter_ = TcFilter(a.device, a.netns, direction, a.priority, a.handle, old)
        moved = old is not None and (old.target, old.attach_type, old.priority, old.handle) != (
            a.target, a.attach_type.value, a.priority, a.handle)
        if moved:
            old_hook = self.live.hooks.get(hook_key(HookKind.DEVICE, old.target, old.attach_type))
            still = old_hook is not None and (old.priority, old.handle, old.prog_id) in old_hook.filters
            self.actions.append(Action(Kind.REPLACE, Resource.ATTACHMENT, address, "its device, direction, priority "
                                       "or handle changed", desired=a, live_id=old.prog_id, after=after,
                                       before=tc_filter_state(old.priority, old.handle, old.target),
                                       payload=TcFilter(a.device, a.netns, direction, a.priority, a.handle,
                                                        old if still else None,
                                                        retire=_tc_removal(old) if still else None),
                                       transition="the new filter is added before the old one is removed"))
            return
        if old is None or not ours_there:
            reason = "not attached yet" if old is None else "the recorded filter is gone or was changed"
            self.actions.append(Action(Kind.CREATE, Resource.ATTACHMENT, address, reason, desired=a, after=after,
                                       payload=filter_))
            return
        before = tc_filter_state(old.priority, old.handle, old.target, old.prog_id)
        if prog_changed or live_prog is None or live_prog.id != old.prog_id:
            self.actions.append(Action(Kind.UPDATE, Resource.ATTACHMENT, address, f"program {a.program!r} is replaced",
                                       desired=a, live_id=old.prog_id, before=before, after=after, payload=filter_,
                                       transition="atomic: tc filter replace"))
            return
        self.actions.append(Action(Kind.NOOP, Resource.ATTACHMENT, address, "in sync", desired=a, live_id=old.prog_id,
                                   before=before, after=after, payload=filter_))

    # -- owner, group and mode of pins (a new pin gets them when it is made: only drift is planned here)
    def _access(self) -> None:
        for address, path, access in self.d.access_paths():
            kind, _, name = address.partition("/")[2].partition("/")
            if (kind == "map" and name in self.replaced_maps) or (kind == "prog" and name in self.new_programs):
                continue  # a new pin: made with the access the manifest asks
            stat = self.live.pin_stats.get(str(path))
            if stat is None:
                continue  # not there yet: apply makes it with that access
            uid, gid, mode = stat
            before = live_access_state(uid, gid, mode)
            if access.differs(uid, gid, mode):
                self.actions.append(Action(Kind.UPDATE, Resource.ACCESS, address,
                                           "its owner, group or mode differs from the manifest", live_pin=str(path),
                                           before=before, after=access_state(access), desired=access))
            else:
                self.actions.append(Action(Kind.NOOP, Resource.ACCESS, address, "in sync", live_pin=str(path),
                                           before=before, after=before, desired=access))

    # -- what is live but no longer desired, in reverse dependency order
    def _leftovers(self) -> None:
        root = str(self.d.pin_root)
        legacy_names = {a.name for a in self.d.attachments if a.mode.legacy or a.attach_type.tc_filter}
        record = self.live.record
        for old in (record.legacy if record else ()):
            if old.name in legacy_names:  # still a legacy attach or tc filter: planned above
                continue
            if old.attach_type in (TC_INGRESS, TC_EGRESS):
                hook = self.live.hooks.get(hook_key(HookKind.DEVICE, old.target, old.attach_type))
                if hook is not None and (old.priority, old.handle, old.prog_id) in hook.filters:
                    self.deletes.append(Action(Kind.DELETE, Resource.ATTACHMENT, f"attach/{old.name}", self.gone,
                                               live_id=old.prog_id, payload=_tc_removal(old),
                                               before=tc_filter_state(old.priority, old.handle, old.target)))
                continue
            hook = self.live.hooks.get(hook_key(HookKind.CGROUP, old.target, old.attach_type))
            if hook is not None and old.prog_id in hook.prog_ids:
                at = BY_VALUE.get(old.attach_type)
                self.deletes.append(Action(Kind.DELETE, Resource.ATTACHMENT, f"attach/{old.name}",
                                           self.gone, live_id=old.prog_id,
                                           before=legacy_hook_state(at.short[0] if at else str(old.attach_type),
                                                                    old.target, old.prog_id),
                                           payload=LegacyDetach(old)))
        order = {"links": 0, "progs": 1, "maps": 2}
        leftovers = sorted((p for p in self.live.pinned if p not in self.explained),
                           key=lambda p: (order.get(_relative(root, p).split("/")[0], 3), p))
        for pin in leftovers:
            rel = pin_address(root, pin)
            top = rel.split("/")[0]
            direct = rel.count("/") == 1  # maps/sub/x is not map/x: only a direct child is named by kind
            staged = pin.endswith(STAGING_SUFFIX)
            if staged and direct and top in ("links", "progs", "maps"):
                # Garbage of a killed apply: removed first, so that staging can use the name again.
                self.cleanup.append(Action(Kind.DELETE, Resource.PIN, f"pin/{rel}", "left over from an interrupted apply",
                                           live_pin=pin, payload=Cleanup()))
            elif top == "links" and direct and pin in self.live.links:
                link = self.live.links[pin]
                self.deletes.append(Action(Kind.DELETE, Resource.ATTACHMENT, f"attach/{Path(pin).name}", self.gone,
                                           live_pin=pin, live_id=link.id, before=deleted_link_state(link)))
            elif top == "progs" and direct and pin in self.live.programs:
                prog = self.live.programs[pin]
                self.deletes.append(Action(Kind.DELETE, Resource.PROGRAM, f"prog/{Path(pin).name}", self.gone,
                                           live_pin=pin, live_id=prog.id, before=live_program_state(prog)))
            elif top == "maps" and direct and pin in self.live.maps:
                m = self.live.maps[pin]
                self.deletes.append(Action(Kind.DELETE, Resource.MAP, f"map/{Path(pin).name}",
                                           f"{self.gone} (its contents are dropped)",
                                           live_pin=pin, live_id=m.id, before=geometry_state(m.geometry)))
            elif top in ("links", "progs", "maps"):
                self.deletes.append(Action(Kind.DELETE, Resource.PIN, f"pin/{rel}", "not part of the manifest",
                                           live_pin=pin))
            else:
                # Outside the layout bpfdeploy writes: someone else's pin. Never delete it.
                self.diags.append(Diagnostic(
                    f"{pin} is inside the pin root but was not made by bpfdeploy", self.file, "pin_root",
                    hint="choose a pin root of the deployment's own; bpfdeploy removes nothing it did not create"))
        tc_targets = {a.target for a in self.d.attachments if a.attach_type.tc_filter}
        for qdisc in (record.created_qdiscs if record else ()):
            if qdisc not in tc_targets:
                self.deletes.append(Action(Kind.DELETE, Resource.QDISC, f"qdisc:{qdisc}",
                                           "added by this deployment and no longer used (removed only when it "
                                           "holds no filters)", live_pin=qdisc, before=qdisc_state(qdisc),
                                           payload=Qdisc(*split_device_target(qdisc))))
        wanted_cgroups: set[str] = set()  # every used cgroup and its parents, which stay too
        for a in self.d.attachments:
            if a.kind is HookKind.CGROUP:
                wanted_cgroups |= _with_parents(a.target, wanted_cgroups)
        # Children before their parents.
        for cgroup in sorted(record.created_cgroups if record else (), key=lambda c: (-c.count("/"), c)):
            if cgroup not in wanted_cgroups and cgroup in self.live.existing_cgroups:
                self.deletes.append(Action(Kind.DELETE, Resource.CGROUP, f"cgroup:{cgroup}",
                                           "created by this deployment and no longer used (removed only if empty)",
                                           live_pin=cgroup, before=cgroup_state(cgroup)))


def _tc_removal(old: LegacyAttachment) -> TcFilterRemoval:
    device, netns = split_device_target(old.target)
    return TcFilterRemoval(device, netns, "ingress" if old.attach_type == TC_INGRESS else "egress",
                           old.priority, old.handle)
