"""The live state: what the kernel, bpffs and the deployment record say is there now.

Read once, before planning, by bpfdeploy/kernel/live.py (``read_live_state``); the planner
compares it with the desired state. Pure data: nothing here reads files or the kernel.
"""

from __future__ import annotations

from pathlib import Path

from bpfdeploy.hooks import HookKind
from bpfdeploy.model.desired import MapGeometry
from bpfdeploy.model.frozen import field, frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms); type checkers read it as True
if TYPE_CHECKING:
    from bpfdeploy.record import Record


@frozen
class LiveProgram:
    id: int
    type: str
    name: str
    tag: str
    pins: tuple[str, ...]
    map_ids: tuple[int, ...]
    loaded_at: int = 0
    run_cnt: int = 0
    run_time_ns: int = 0


@frozen
class LiveMap:
    id: int
    name: str
    geometry: MapGeometry
    pins: tuple[str, ...]


@frozen
class LiveLink:
    id: int
    type: str  # bpftool's link type name, or the number when bpftool 7.1 does not know it
    prog_id: int
    pins: tuple[str, ...]
    cgroup_id: int | None = None
    attach_type: str | None = None
    netns_ino: int | None = None
    ifindex: int | None = None  # xdp and tcx links (read through libbpf: bpftool 7.1 does not print it)


HookKey = tuple[str, str, int]  # (kind, target, attach type value)


@frozen
class LiveHook:
    """What BPF_PROG_QUERY says is attached at one hook."""

    prog_ids: tuple[int, ...]
    attach_flags: int
    target_exists: bool = True
    target_id: int | None = None  # cgroup id (inode), netns inode, ifindex, or a uprobe's file offset
    error: str = ""
    identity: str = ""  # uprobe: offset and inode the probe must sit on
    filters: tuple = ()  # tc: (pref, handle, program id) of each bpf filter
    clsact: bool = False  # tc: the device has a clsact qdisc


@frozen
class LiveState:
    pin_root: Path
    pin_root_exists: bool
    pinned: tuple[str, ...]  # every file under the pin root
    overlapping: tuple = ()  # (name, pin root) of other deployments whose pin root overlaps ours
    programs: dict = field(default_factory=dict)  # pin path -> LiveProgram
    maps: dict = field(default_factory=dict)  # pin path -> LiveMap
    links: dict = field(default_factory=dict)  # pin path -> LiveLink
    hooks: dict = field(default_factory=dict)  # HookKey -> LiveHook
    record: Record | None = None
    bpffs_mounted: bool = True
    map_values: dict = field(default_factory=dict)  # (map pin, key bytes) -> value bytes | None
    names: dict = field(default_factory=dict)  # program id -> name, for every program on the host
    existing_cgroups: frozenset = frozenset()  # cgroups the record says we created that still exist
    map_names: dict = field(default_factory=dict)  # map id -> name (cut to 15 characters), every map on the host
    # path -> (uid, gid, mode) of every pin or directory whose access the manifest sets (missing: not there)
    pin_stats: dict = field(default_factory=dict)
    unsafe: tuple[tuple[str, str], ...] = ()  # (path, what it is) of symlinks and foreign mounts in or above the pin root

    def program_ids(self) -> set[int]:
        return {p.id for p in self.programs.values()}


def hook_key(kind: HookKind | str, target: str, attach_type: int) -> HookKey:
    return (kind.value if isinstance(kind, HookKind) else kind, target, attach_type)
