"""The desired state: what the manifest and its objects say the kernel should hold.

Built by bpfdeploy/desired.py (``resolve``) from the manifest and the opened objects; read by
the planner, apply, status and metrics. Pure data: nothing here reads files or the kernel.
"""

from __future__ import annotations

from pathlib import Path

from bpfdeploy import hooks
from bpfdeploy.hooks import AttachType, HookKind
from bpfdeploy.manifest.model import AttachMode, EntriesPolicy, Order, PinAccess
from bpfdeploy.model.frozen import frozen

# Map types whose entries are plain bytes that a manifest can write: hash, array, lru_hash, lpm_trie.
# (Per-CPU maps need a value per CPU; fd, socket, ring, queue and storage maps hold no plain values.)
ENTRY_MAP_TYPES = {1, 2, 9, 11}


@frozen
class MapGeometry:
    """What must match for a pinned map to be reused: the kernel adopts the pinned map's shape silently."""

    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int

    def describe(self) -> str:
        kind = hooks.MAP_TYPE_NAMES.get(self.type, str(self.type))
        return f"{kind} key {self.key_size}B value {self.value_size}B max_entries {self.max_entries} flags {self.flags:#x}"

    def compatible_with(self, live: "MapGeometry") -> bool:
        # libbpf sizes a perf_event_array with max_entries 0 to the CPU count at load.
        max_ok = self.max_entries == live.max_entries or (self.type == 4 and 0 in (self.max_entries, live.max_entries))
        return (self.type, self.key_size, self.value_size, self.flags) == (
            live.type, live.key_size, live.value_size, live.flags) and max_ok


@frozen
class DesiredMap:
    name: str
    pin: Path
    geometry: MapGeometry
    entries: tuple[tuple[bytes, bytes], ...]
    entries_policy: EntriesPolicy
    recreate_if_incompatible: bool
    users: tuple[str, ...]  # program pin names whose object uses this map
    access: PinAccess | None = None  # owner/group/mode its pin must have (None: left alone)


@frozen
class DesiredProgram:
    pin_name: str
    pin: Path
    object: str
    function: str
    prog_type: str  # bpftool's name
    type_override: int | None
    # Set with type_override when the program's hooks need an expected attach type that its
    # SEC() name does not give (for example a cgroup/connect_unix program on libbpf 1.1).
    expected_attach_type: int | None
    digest: str  # sha256 hex of the object digest, function, type: a change means replace
    object_path: Path
    maps: tuple[tuple[str, str], ...]  # (map name in the object, deployment map name)
    globals: tuple[tuple[str, bytes], ...] = ()  # global variables' values, written before load
    access: PinAccess | None = None  # owner/group/mode its pin must have (None: left alone)
    origin: str = ""  # the object's source or file as the manifest gives it: named in load failures
    from_artifacts: bool = False  # its object came from verified artifacts (bpfdeploy build --out), not a build here


@frozen
class DesiredAttachment:
    name: str
    pin: Path  # link pin (for legacy attaches: nothing is pinned there)
    program: str  # program pin name
    attach_type: AttachType
    target: str  # cgroup path, deployment map name, netns file, "device[@netns file]", or the traced thing
    mode: AttachMode
    create_cgroup: bool
    where: tuple = ()  # manifest path, for diagnostics
    device: str | None = None
    netns: str | None = None  # for device hooks: the netns file the device is in (None: ours)
    xdp_mode: str | None = None
    priority: int = 1
    handle: int = 1
    trace_target: str | None = None  # tracepoint "category/name", raw tracepoint, kprobe function
    binary: str | None = None
    symbol: str | None = None
    offset: int | None = None
    pid: int | None = None
    # optional: a failure to attach it is a warning (apply exits PARTIAL) instead of a rollback
    optional: bool = False
    order: Order | None = None  # its place in the chain of programs on the hook (None: appended)

    @property
    def kind(self) -> HookKind:
        return self.attach_type.kind

    def hook_text(self) -> str:
        if self.kind is HookKind.TRACE:  # "tracepoint syscalls/sys_enter_kill", not "tracepoint on trace ..."
            return f"{self.attach_type.short[0]} {self.target}" if self.target else self.attach_type.short[0]
        return f"{self.attach_type.short[0]} on {self.kind.value} {self.target}"


@frozen
class DesiredState:
    name: str
    pin_root: Path
    maps: tuple[DesiredMap, ...]
    programs: tuple[DesiredProgram, ...]
    attachments: tuple[DesiredAttachment, ...]
    pin_root_access: PinAccess | None = None  # of the pin root and its maps/progs/links directories

    def access_paths(self) -> tuple[tuple[str, Path, PinAccess], ...]:
        """(address, path, access) of every pin or directory whose owner/group/mode the manifest sets."""
        out = []
        if self.pin_root_access is not None:
            out.append(("access/pin_root", self.pin_root, self.pin_root_access))
            out += [(f"access/pin_root/{sub}", self.pin_root / sub, self.pin_root_access)
                    for sub in ("maps", "progs", "links")]
        out += [(f"access/map/{m.name}", m.pin, m.access) for m in self.maps if m.access is not None]
        out += [(f"access/prog/{p.pin_name}", p.pin, p.access) for p in self.programs if p.access is not None]
        return tuple(out)

    def program(self, pin_name: str) -> DesiredProgram | None:
        return self._index()[0].get(pin_name)

    def map(self, name: str) -> DesiredMap | None:
        return self._index()[1].get(name)

    __slots__ = ("_by_name",)  # (programs by pin name, maps by name): planner and applier ask per attachment

    def _index(self) -> tuple[dict, dict]:
        try:
            return self._by_name
        except AttributeError:
            programs: dict = {}
            maps: dict = {}
            for p in self.programs:
                programs.setdefault(p.pin_name, p)  # the first, as a search in order finds
            for m in self.maps:
                maps.setdefault(m.name, m)
            object.__setattr__(self, "_by_name", (programs, maps))
            return self._by_name
