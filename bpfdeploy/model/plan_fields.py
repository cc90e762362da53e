"""The two sides of a planned change, as a reader sees them and as typed fields (pure data).

A plan action says what a resource is now (``before``) and what it will be (``after``). Each
side is a ``State``: one line of text for the human view, and the same facts as named fields for
the JSON view, so that a wrapper reads ``after.max_entries`` instead of parsing prose. A map whose
listed entries differ also carries one ``EntryChange`` per key (old -> new), as Terraform shows
attribute changes. Pure: no I/O; the planner builds these from the desired and live state.
"""

from __future__ import annotations


from bpfdeploy import hooks
from bpfdeploy.model.frozen import frozen

# Entries of these widths are shown as unsigned little-endian integers too (as the manifest
# writes an integer key or value); any other width only as bytes.
_INT_WIDTHS = (1, 2, 4, 8)


@frozen
class State:
    """One side of a change. ``fields`` are (name, JSON-ready value) pairs, in a fixed order."""

    text: str
    fields: tuple[tuple[str, object], ...] = ()

    def to_json(self) -> dict:
        return dict(self.fields)


def bytes_hex(data: bytes) -> str:
    """Bytes in memory order, as the manifest writes a hex string: ``0x0a000001``."""
    return "0x" + data.hex()


def bytes_text(data: bytes | None) -> str:
    """An entry's key or value for a reader: an integer when it has an integer's width."""
    if data is None:
        return "(absent)"
    if len(data) in _INT_WIDTHS:
        return str(int.from_bytes(data, "little"))
    return bytes_hex(data)


@frozen
class EntryChange:
    """A listed map entry whose live value differs: ``old`` is None when the key is absent."""

    key: bytes
    old: bytes | None
    new: bytes

    def text(self) -> str:
        return f"key {bytes_text(self.key)}: {bytes_text(self.old)} -> {bytes_text(self.new)}"

    def to_json(self) -> dict:
        out: dict = {"key": bytes_hex(self.key), "old": None if self.old is None else bytes_hex(self.old),
                     "new": bytes_hex(self.new)}
        for name, data in (("key", self.key), ("old", self.old), ("new", self.new)):
            if data is not None and len(data) in _INT_WIDTHS:
                out[f"{name}_uint"] = int.from_bytes(data, "little")
        return out


def geometry_state(g) -> State:
    """A map's definition (a desired.MapGeometry)."""
    return State(g.describe(), (("map_type", hooks.MAP_TYPE_NAMES.get(g.type, str(g.type))), ("key_size", g.key_size),
                                ("value_size", g.value_size), ("max_entries", g.max_entries), ("flags", g.flags)))


def entries_state(changes: tuple[EntryChange, ...], side: str, listed: int) -> State:
    """The listed entries of a map, before (live values) or after (as the manifest lists them)."""
    values = [{"key": bytes_hex(c.key), "value": None if getattr(c, side) is None else bytes_hex(getattr(c, side))}
              for c in changes]
    text = f"{len(changes)} entries differ" if side == "old" else f"{listed} entries as listed"
    return State(text, (("entries", values),))


def program_state(p) -> State:
    """A program to load (a desired.DesiredProgram)."""
    origin = "artifact" if p.from_artifacts else "build"
    return State(f"{p.prog_type} {p.function} from {p.object} ({origin} {p.digest[:12]})",
                 (("prog_type", p.prog_type), ("function", p.function), ("object", p.object), ("build", p.digest),
                  ("origin", origin)))


def live_program_state(prog) -> State:
    """A loaded program (a kernel.live program)."""
    return State(f"{prog.type} {prog.name} id {prog.id}",
                 (("prog_type", prog.type), ("name", prog.name), ("prog_id", prog.id)))


def attachment_state(a) -> State:
    """An attachment as the manifest asks for it (a desired.DesiredAttachment)."""
    legacy = a.mode.legacy
    optional = a.optional
    text = f"{a.program} -> {a.hook_text()}" + (f" ({a.mode.value})" if legacy else "") + (
        " (optional)" if optional else "")
    fields: list[tuple[str, object]] = [("program", a.program), ("attach_type", a.attach_type.short[0]),
                                        ("hook_kind", a.kind.value), ("target", a.target), ("mode", a.mode.value),
                                        ("optional", optional)]
    if a.attach_type.tc_filter:
        fields += [("priority", a.priority), ("handle", a.handle)]
    return State(text, tuple(fields))


def link_state(link) -> State:
    return State(f"link id {link.id} holding program id {link.prog_id}", (("link_id", link.id),
                                                                          ("prog_id", link.prog_id)))


def deleted_link_state(link) -> State:
    return State(f"link id {link.id}", (("link_id", link.id), ("prog_id", link.prog_id)))


def legacy_state(prog_id: int, mode: str) -> State:
    return State(f"legacy attach of program id {prog_id} ({mode})", (("prog_id", prog_id), ("mode", mode)))


def legacy_hook_state(attach_type: str, target: str, prog_id: int) -> State:
    return State(f"legacy {attach_type} on cgroup {target}", (("attach_type", attach_type), ("hook_kind", "cgroup"),
                                                              ("target", target), ("prog_id", prog_id)))


def tc_filter_state(priority: int, handle: int, target: str, prog_id: int | None = None) -> State:
    text = f"tc filter pref {priority} handle {handle}" + (
        f" holding program id {prog_id}" if prog_id is not None else f" on {target}")
    fields: list[tuple[str, object]] = [("priority", priority), ("handle", handle), ("target", target)]
    if prog_id is not None:
        fields.append(("prog_id", prog_id))
    return State(text, tuple(fields))


def cgroup_state(path: str) -> State:
    return State(path, (("cgroup", path),))


def qdisc_state(device: str) -> State:
    return State(f"clsact on {device}", (("qdisc", "clsact"), ("device", device)))


def live_access_state(uid: int, gid: int, mode: int) -> State:
    """Owner, group and mode of a pin as they are."""
    return State(f"owner {uid} group {gid} mode {mode:04o}", (("uid", uid), ("gid", gid), ("mode", f"{mode:04o}")))


def access_state(access) -> State:
    """Owner, group and mode as the manifest asks (a manifest.model.PinAccess; unset fields are left out)."""
    fields: list[tuple[str, object]] = []
    if access.uid is not None:
        fields.append(("uid", access.uid))
    if access.gid is not None:
        fields.append(("gid", access.gid))
    if access.mode is not None:
        fields.append(("mode", f"{access.mode:04o}"))
    return State(access.describe(), tuple(fields))
