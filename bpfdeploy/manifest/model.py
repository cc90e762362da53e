"""The desired state as the manifest states it: frozen value classes (model.frozen), paths resolved.

What the objects themselves contain (program types, map geometry) is added later by
``bpfdeploy.desired`` once the objects are built; this model is what the user wrote.
"""

from __future__ import annotations

import enum
from pathlib import Path

from bpfdeploy.hooks import AttachType, HookKind
from bpfdeploy.model.frozen import frozen

DEFAULT_PIN_BASE = "/sys/fs/bpf/bpfdeploy"


class AttachMode(enum.Enum):
    LINK = "link"  # pinned bpf_link: identity is its pin, replaced atomically
    MULTI = "multi"  # legacy attach with BPF_F_ALLOW_MULTI
    OVERRIDE = "override"  # legacy attach with BPF_F_ALLOW_OVERRIDE
    EXCLUSIVE = "exclusive"  # legacy attach with no flag: the only program on the hook

    @property
    def legacy(self) -> bool:
        return self is not AttachMode.LINK


class OrderKind(enum.Enum):
    """Where an attachment goes in the chain of programs on its hook (kernel mprog: tcx, cgroup links)."""

    FIRST = "first"  # BPF_F_BEFORE with no anchor: in front of every program on the hook
    LAST = "last"  # BPF_F_AFTER with no anchor: behind every program
    BEFORE = "before"  # BPF_F_BEFORE | BPF_F_LINK: right in front of another attachment's link
    AFTER = "after"  # BPF_F_AFTER | BPF_F_LINK: right behind it


@frozen
class Order:
    kind: OrderKind
    anchor: str | None = None  # the other attachment's name (before/after)

    def describe(self) -> str:
        return self.kind.value + (f" {self.anchor}" if self.anchor else "")


class EntriesPolicy(enum.Enum):
    ENFORCE = "enforce"  # every apply writes the listed keys
    SEED = "seed"  # written once, when the map is created


@frozen
class PinAccess:
    """Who may open a pin (or search a pin directory): the file's owner, group and mode bits.

    Each field is None when the manifest leaves it alone (then apply never changes it, and the
    plan never reports drift in it). owner/group are numeric ids resolved from the names the
    manifest gave; the names are kept for the plan's text.
    """

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None  # permission bits only (0o7777 at most)
    owner_name: str = ""
    group_name: str = ""

    def describe(self) -> str:
        parts = []
        if self.uid is not None:
            parts.append(f"owner {self.owner_name or self.uid}")
        if self.gid is not None:
            parts.append(f"group {self.group_name or self.gid}")
        if self.mode is not None:
            parts.append(f"mode {self.mode:04o}")
        return " ".join(parts)

    def differs(self, uid: int, gid: int, mode: int) -> bool:
        """Whether a file with this owner, group and mode breaks what the manifest asks."""
        return ((self.uid is not None and uid != self.uid) or (self.gid is not None and gid != self.gid)
                or (self.mode is not None and (mode & 0o7777) != self.mode))


@frozen
class ProgramSpec:
    """One program to load from an object, as the manifest names it."""

    object: str  # the object's name in the manifest
    function: str  # the program's function name in the object
    pin: str  # pin name under <pin_root>/progs/; attachments refer to it
    type_override: str | None  # program type forced by the manifest, else from SEC()
    where: tuple  # manifest path, for diagnostics
    access: PinAccess | None = None  # owner/group/mode of the program's pin


@frozen
class ObjectSpec:
    """A BPF object: built from C or prebuilt."""

    name: str
    source: Path | None  # C source (absolute), when built by us
    file: Path | None  # prebuilt ELF object (absolute)
    cflags: tuple[str, ...]
    include_dirs: tuple[Path, ...]
    defines: tuple[tuple[str, str | None], ...]
    vmlinux_h: bool
    programs: tuple[ProgramSpec, ...] | None  # None: every program in the object, pinned by function name
    map_renames: tuple[tuple[str, str], ...]  # (name in the object, deployment map name)
    where: tuple
    globals: tuple[tuple[str, object], ...] = ()  # (variable, value as written), set before load

    def deployment_map_name(self, object_map: str) -> str:
        for inner, outer in self.map_renames:
            if inner == object_map:
                return outer
        return object_map


@frozen
class MapEntry:
    key: int | str | tuple[int, ...]
    value: int | str | tuple[int, ...]
    where: tuple


@frozen
class MapSettings:
    """What the manifest says about a deployment map (its geometry comes from the objects)."""

    name: str
    entries: tuple[MapEntry, ...]
    entries_policy: EntriesPolicy
    recreate_if_incompatible: bool
    where: tuple
    access: PinAccess | None = None  # owner/group/mode of the map's pin


@frozen
class CgroupTarget:
    path: Path  # absolute, inside the cgroup v2 mount
    create: bool


@frozen
class AttachmentSpec:
    """One attachment: a program on a hook, held by a pinned link or a legacy attach."""

    name: str  # link pin name under <pin_root>/links/ (also the identity of legacy attaches)
    program: str  # program pin name
    attach_type: AttachType
    cgroup: CgroupTarget | None
    map: str | None  # deployment map name (sockmap/sockhash)
    netns: Path | None  # netns file: the flow dissector's target, or where a device lives
    mode: AttachMode
    where: tuple
    device: str | None = None  # xdp, tc, tcx
    xdp_mode: str | None = None  # generic | driver | offload; None: the kernel picks
    priority: int = 1  # tc filter pref
    handle: int = 1  # tc filter handle
    trace_target: str | None = None  # tracepoint "category/name", raw tracepoint or kprobe function
    binary: Path | None = None  # uprobe
    symbol: str | None = None
    offset: int | None = None
    pid: int | None = None
    optional: bool = False  # its failure is a warning and the rest is applied (exit PARTIAL)
    order: Order | None = None  # its place in the chain on its hook (None: the kernel appends it)

    @property
    def kind(self) -> HookKind:
        return self.attach_type.kind


@frozen
class MetricLabel:
    name: str
    field: str | None  # field of the key struct (BTF); None: the whole key
    decode: str  # integer | ipv4 | ipv6 | port | string | enum | hex
    enum: tuple[tuple[str, str], ...]  # decode enum: (number, name)


@frozen
class MetricSpec:
    """A Prometheus metric made from one deployment map."""

    name: str
    help: str
    type: str  # counter | gauge
    map: str
    value_field: str | None  # field of the value struct (BTF); None: the value itself
    labels: tuple[MetricLabel, ...]
    where: tuple


@frozen
class ArtifactPolicy:
    """The manifest's ``artifacts`` section: how objects built elsewhere are trusted.

    Applies only when the deployment is planned or applied with artifacts (``--artifacts``);
    a local build ignores it.
    """

    require_signature: bool  # a good signature is needed (with an allowed_signers file from here or the caller)
    allowed_signers: Path | None  # absolute; None: only the caller's --allowed-signers
    where: tuple = ("artifacts",)


@frozen
class Manifest:
    """A validated manifest."""

    file: Path
    name: str
    pin_root: Path
    objects: tuple[ObjectSpec, ...]
    maps: tuple[MapSettings, ...]
    attachments: tuple[AttachmentSpec, ...]
    lines: dict  # manifest path -> line, for diagnostics found after loading
    requires: dict = None  # the manifest's requires section as written (None: nothing declared)
    metrics: tuple = ()  # MetricSpec, for `bpfdeploy metrics`
    pin_root_access: PinAccess | None = None  # owner/group/mode of the pin root and its maps/progs/links
    artifacts: ArtifactPolicy | None = None  # the artifacts section (None: not written)

    def map_settings(self, name: str) -> MapSettings | None:
        for m in self.maps:
            if m.name == name:
                return m
        return None

    def line_of(self, path: tuple) -> int | None:
        from bpfdeploy.manifest.paths import line_of

        return line_of(self.lines, path)
