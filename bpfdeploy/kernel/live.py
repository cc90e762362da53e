"""Read the live state once, before planning: what the kernel says about one deployment.

Sources: ``bpftool prog|map|link show -j -f`` (run side by side), the pins under the
deployment's pin root, BPF_PROG_QUERY on each hook the manifest names (cgroups, sockmaps,
netns: bpftool cannot show sockmap attachments, and ``cgroup tree`` is O(N) in time and
memory), and the deployment record. Nothing here changes the kernel.

The ``parse_*`` functions are pure, so the planner can be tested on recorded JSON.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path

from bpfdeploy.diagnostics import HostError
from bpfdeploy.hooks import (BPF_TCX_EGRESS, BPF_TCX_INGRESS, BY_VALUE, TC_EGRESS, TC_INGRESS, HookKind,
                             split_device_target)
from bpfdeploy.kernel import runner
from bpfdeploy.model.desired import DesiredState, MapGeometry
# The live types live in the model; re-exported here for the modules that read them.
from bpfdeploy.model.live import HookKey, LiveHook, LiveLink, LiveMap, LiveProgram, LiveState, hook_key  # noqa: F401
from bpfdeploy.record import Record, other_deployments, read_record

# ---------------------------------------------------------------- parsing (pure)

_BAD_FLOW_DISSECTOR = re.compile(r'"flow_dissector":\[\s*"id":\s*(\d+)\s*\]')


def _load_json(text: str, what: str):
    text = text.strip()
    if not text:
        return []  # bpftool prints nothing for some empty listings
    try:
        return json.loads(text)
    except ValueError:
        # bpftool 7.1 `net show -j` prints "flow_dissector":["id":N], which is not JSON.
        fixed = _BAD_FLOW_DISSECTOR.sub(r'"flow_dissector":[{"id":\1}]', text)
        try:
            return json.loads(fixed)
        except ValueError as exc:
            raise HostError(f"bpftool {what} printed invalid JSON: {exc}") from None


def parse_programs(text: str) -> list[LiveProgram]:
    out = []
    for p in _load_json(text, "prog show"):
        out.append(LiveProgram(id=p["id"], type=str(p.get("type", "")), name=p.get("name", ""), tag=p.get("tag", ""),
                               pins=tuple(p.get("pinned", ())), map_ids=tuple(p.get("map_ids", ())),
                               loaded_at=p.get("loaded_at", 0), run_cnt=p.get("run_cnt", 0),
                               run_time_ns=p.get("run_time_ns", 0)))
    return out


_MAP_TYPE_VALUES = None


def _map_type_value(name) -> int:
    global _MAP_TYPE_VALUES
    if isinstance(name, int):
        return name
    if _MAP_TYPE_VALUES is None:
        from bpfdeploy.hooks import MAP_TYPE_NAMES

        _MAP_TYPE_VALUES = {v: k for k, v in MAP_TYPE_NAMES.items()}
    return _MAP_TYPE_VALUES.get(name, -1)


def parse_maps(text: str) -> list[LiveMap]:
    out = []
    for m in _load_json(text, "map show"):
        geometry = MapGeometry(_map_type_value(m.get("type")), m.get("bytes_key", 0), m.get("bytes_value", 0),
                               m.get("max_entries", 0), m.get("flags", 0))
        out.append(LiveMap(id=m["id"], name=m.get("name", ""), geometry=geometry, pins=tuple(m.get("pinned", ()))))
    return out


def parse_links(text: str) -> list[LiveLink]:
    out = []
    for link in _load_json(text, "link show"):
        out.append(LiveLink(id=link["id"], type=str(link.get("type", "")), prog_id=link.get("prog_id", 0),
                            pins=tuple(link.get("pinned", ())), cgroup_id=link.get("cgroup_id"),
                            attach_type=_attach_type_text(link.get("attach_type")), netns_ino=link.get("netns_ino")))
    return out


def _attach_type_text(value) -> str | None:
    """bpftool 7.1 prints attach types newer than itself as numbers: use our long names."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        at = BY_VALUE.get(int(value))
        return at.name if at else str(value)
    return value


def index_by_pin(items, root: Path) -> dict:
    """Keep the objects pinned under root, by pin path (an object pinned twice appears twice)."""
    prefix = str(root).rstrip("/") + "/"
    out = {}
    for item in items:
        for pin in item.pins:
            if pin.startswith(prefix):
                out[pin] = item
    return out


# ---------------------------------------------------------------- reading (kernel, read-only)


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    try:
        return os.statvfs(path) is not None and _fs_type(path) == "bpf"
    except OSError:
        return False


def _fs_type(path: str) -> str:
    best, kind = "", ""
    with open("/proc/self/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 2 and (path == fields[1] or path.startswith(fields[1].rstrip("/") + "/")):
                if len(fields[1]) >= len(best):
                    best, kind = fields[1], fields[2]
    return kind


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def walk_pin_root(root: Path, bpffs: str = "/sys/fs/bpf") -> tuple[bool, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(pin root exists, every pin under it, (path, what) of everything that makes it unsafe).

    Nothing is followed: each entry is looked at with lstat. A symlink anywhere in or above the
    pin root, or a directory on another file system, would let a pin land outside the pin root
    (or hide pins from this walk), so it is reported, and nothing below it is read.
    """
    unsafe: list[tuple[str, str]] = []
    try:
        device = os.lstat(bpffs).st_dev
    except OSError as exc:
        return False, (), ((bpffs, f"cannot be read: {exc.strerror}"),)
    for part in [*reversed(root.parents), root]:
        if len(str(part)) <= len(bpffs):
            continue
        what = _unsafe_dir(str(part), device)
        if what == "missing":
            return False, (), ()
        if what:
            return False, (), ((str(part), what),)
    pins: list[str] = []
    todo = [str(root)]
    while todo:
        directory = todo.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            unsafe.append((directory, f"cannot be listed: {exc.strerror}"))
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                unsafe.append((entry.path, f"cannot be read: {exc.strerror}"))
                continue
            if stat.S_ISLNK(st.st_mode):
                unsafe.append((entry.path, f"is a symlink (to {_link_text(entry.path)})"))
            elif stat.S_ISDIR(st.st_mode):
                if st.st_dev != device:
                    unsafe.append((entry.path, "is a mount point of another file system"))
                else:
                    todo.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                pins.append(entry.path)
            else:
                unsafe.append((entry.path, "is neither a pin nor a directory"))
    return True, tuple(sorted(pins)), tuple(sorted(unsafe))


def _unsafe_dir(path: str, device: int) -> str:
    """'' for a real directory on bpffs, 'missing', or what else the path is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"is a symlink (to {_link_text(path)})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_dev != device:
        return "is a mount point of another file system"
    return ""


def _link_text(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


LIVE_READS = tuple(("bpftool", "-j", "-f", kind, "show") for kind in ("prog", "map", "link"))


def read_live_state(desired: DesiredState, state_dir: Path | None = None) -> LiveState:
    """Everything the planner needs about this deployment, read once.

    bpftool's three reads are the slowest part (every program, map and link on the host, and
    every pin of bpffs: 70 ms with 2,000 programs), so they start first and run while the pin
    root is walked and the hooks are queried."""
    root = desired.pin_root
    mounted = bpffs_mounted()
    started = [(list(a), runner.start(list(a))) for a in LIVE_READS] if mounted and desired.attachments else None
    try:
        record = read_record(desired.name, str(root), state_dir)
        existing_cgroups = frozenset(c for c in record.created_cgroups if os.path.isdir(c))
        overlapping = tuple((n, r) for n, r in other_deployments(desired.name, state_dir)
                            if _overlaps(Path(r), root))
        if not mounted:
            return LiveState(root, False, (), overlapping, record=record, bpffs_mounted=False,
                             hooks=_read_hooks(desired, record, {}), existing_cgroups=existing_cgroups)
        root_exists, pinned, unsafe = walk_pin_root(root)
        if started is None and pinned:
            started = [(list(a), runner.start(list(a))) for a in LIVE_READS]
        hooks = _read_hooks(desired, record, None)  # all but sockmaps' (they need the maps)
        results = [runner.finish(a, p) for a, p in started] if started else None
    except BaseException:
        for _argv, proc in started or ():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        raise
    programs = maps = links = names = map_names = {}
    if results:
        for i, r in enumerate(results):
            for attempt in range(4):
                if r.returncode == 0:
                    break
                # bpftool fails when an object it listed is freed before it reads it (ENOENT), or
                # is still being made by another process (a link whose id is reserved: EAGAIN).
                # Busy hosts see it several times in a row: read again, a little later each time.
                time.sleep(0.01 * attempt)
                results[i] = r = runner.run(list(r.argv))
            if r.returncode != 0:
                raise HostError(f"{' '.join(r.argv)} failed: {r.error_text()}")
        all_programs = parse_programs(results[0].stdout)
        names = {p.id: p.name for p in all_programs}
        programs = index_by_pin(all_programs, root)
        all_maps = parse_maps(results[1].stdout)
        map_names = {m.id: m.name for m in all_maps}
        maps = index_by_pin(all_maps, root)
        links = _with_ifindex(index_by_pin(parse_links(results[2].stdout), root))
    hooks.update(_read_hooks(desired, record, maps, only_sockmaps=True))
    map_values = _read_map_values(desired, maps)
    return LiveState(root, root_exists, pinned, overlapping, programs, maps, links,
                     hooks, record, True, map_values, names,
                     existing_cgroups, map_names, read_pin_stats(desired), unsafe)


def read_pin_stats(desired: DesiredState) -> dict:
    """Owner, group and mode of the pins and directories whose access the manifest sets."""
    out = {}
    for _address, path, _access in desired.access_paths():
        try:
            st = os.lstat(path)
        except OSError:
            continue
        out[str(path)] = (st.st_uid, st.st_gid, st.st_mode & 0o7777)
    return out


# Link types whose device bpftool 7.1 does not print. It names a link type it does not know by its
# number: BPF_LINK_TYPE_TCX is 11 (a newer bpftool says "tcx").
DEVICE_LINK_TYPES = ("xdp", "tcx", "11")


def _with_ifindex(links: dict) -> dict:
    """Add the device of xdp and tcx links, which bpftool 7.1 does not print."""
    from bpfdeploy.model.frozen import replace

    from bpfdeploy.kernel import libbpf

    out = {}
    for pin, link in links.items():
        if link.type in DEVICE_LINK_TYPES:
            try:
                fd = libbpf.obj_get(pin)
                try:
                    link = replace(link, ifindex=libbpf.link_info(fd).u0)
                finally:
                    os.close(fd)
            except Exception:
                pass
        out[pin] = link
    return out


def _read_map_values(desired: DesiredState, maps: dict) -> dict:
    from bpfdeploy.kernel import libbpf

    out = {}
    for m in desired.maps:
        live = maps.get(str(m.pin))
        if not m.entries or live is None or not m.geometry.compatible_with(live.geometry):
            continue
        fd = libbpf.obj_get(str(m.pin))
        try:
            for key, _value in m.entries:
                out[(str(m.pin), key)] = libbpf.map_lookup(fd, key, live.geometry.value_size)
        finally:
            os.close(fd)
    return out


def _read_hooks(desired: DesiredState, record: Record, maps: dict | None, only_sockmaps: bool = False) -> dict:
    """What is attached at every hook the deployment uses now or used before (legacy attaches).

    maps None: every hook but sockmaps'; only_sockmaps: those alone (a sockmap's hook is a
    pinned map of the deployment, known once bpftool has listed the maps); maps {}: all, none
    of the sockmaps there."""
    out: dict = {}
    fd_hooks: dict[HookKey, str] = {}
    device_hooks: dict[HookKey, tuple[str, str | None]] = {}  # -> (device, netns file)
    for att in desired.attachments:
        sockmap = att.kind is HookKind.SOCKMAP
        if (only_sockmaps and not sockmap) or (sockmap and maps is None):
            continue
        key = hook_key(att.kind, att.target, att.attach_type.value)
        if sockmap:
            fd_hooks[key] = str(desired.map(att.target).pin)
        elif att.kind is HookKind.DEVICE:
            device_hooks[key] = (att.device, att.netns)
        elif att.kind is HookKind.TRACE:
            out[key] = _trace_hook(att)
        else:
            fd_hooks[key] = att.target
    for legacy in () if only_sockmaps else record.legacy:
        if legacy.attach_type in (TC_INGRESS, TC_EGRESS):
            device_hooks.setdefault(hook_key(HookKind.DEVICE, legacy.target, legacy.attach_type),
                                    split_device_target(legacy.target))
        else:
            fd_hooks.setdefault(hook_key(HookKind.CGROUP, legacy.target, legacy.attach_type), legacy.target)
    out.update(_fd_hooks(fd_hooks, maps or {}))
    out.update(_device_hooks(device_hooks))
    return out


def _fd_hooks(wanted: dict[HookKey, str], maps: dict) -> dict:
    """BPF_PROG_QUERY on cgroups, sockmaps and network namespaces."""
    from bpfdeploy.kernel import libbpf

    out = {}
    for key, path in wanted.items():
        kind = key[0]
        try:
            if kind == HookKind.SOCKMAP.value:
                if path not in maps:
                    out[key] = LiveHook((), 0, target_exists=False)
                    continue
                fd = libbpf.obj_get(path)
            else:
                flags = os.O_RDONLY | (os.O_DIRECTORY if kind == HookKind.CGROUP.value else 0)
                fd = os.open(path, flags)
        except (OSError, Exception) as exc:  # a missing cgroup/netns is a fact to plan with
            out[key] = LiveHook((), 0, target_exists=False, error=str(exc))
            continue
        try:
            target_id = os.fstat(fd).st_ino if kind != HookKind.SOCKMAP.value else None
            query = libbpf.prog_query(fd, key[2])
            out[key] = LiveHook(query.prog_ids, query.attach_flags, True, target_id)
        except Exception as exc:
            out[key] = LiveHook((), 0, True, None, error=str(exc))
        finally:
            os.close(fd)
    return out


def _device_hooks(wanted: dict[HookKey, tuple[str, str | None]]) -> dict:
    """xdp (bpftool net show), tc filters (tc -j), tcx (BPF_PROG_QUERY), each in the device's netns."""
    out = {}
    if not wanted:
        return out
    import socket  # 1.6 ms: only for a deployment on devices

    from bpfdeploy.kernel import libbpf, netns

    for key, (device, ns) in wanted.items():
        value = key[2]
        if ns and not os.path.exists(ns):
            out[key] = LiveHook((), 0, target_exists=False, error=f"network namespace {ns} does not exist")
            continue
        try:
            with netns.entered(ns):
                ifindex = socket.if_nametoindex(device)
                query = libbpf.prog_query(ifindex, value) if value in (BPF_TCX_INGRESS, BPF_TCX_EGRESS) else None
        except OSError as exc:
            out[key] = LiveHook((), 0, target_exists=False, error=f"device {device}: {exc.strerror or exc}")
            continue
        if query is not None:
            out[key] = LiveHook(query.prog_ids, query.attach_flags, True, ifindex)
        elif value == 37:
            result = runner.run(netns.command(["bpftool", "-j", "net", "show", "dev", device], ns))
            data = _load_json(result.stdout, "net show") if result.returncode == 0 else []
            ids = tuple(x["id"] for block in data for x in block.get("xdp", ()) if x.get("ifindex") == ifindex)
            out[key] = LiveHook(ids, 0, True, ifindex, error="" if result.returncode == 0 else result.error_text())
        else:
            direction = "ingress" if value == TC_INGRESS else "egress"
            filters = runner.run(netns.command(["tc", "-j", "filter", "show", "dev", device, direction], ns))
            qdiscs = runner.run(netns.command(["tc", "-j", "qdisc", "show", "dev", device], ns))
            parsed = parse_tc_filters(filters.stdout) if filters.returncode == 0 else ()
            has_clsact = any(q.get("kind") == "clsact" for q in _load_json(qdiscs.stdout, "tc qdisc show") or ())
            out[key] = LiveHook(tuple(f[2] for f in parsed), 0, True, ifindex, filters=parsed, clsact=has_clsact)
    return out


def parse_tc_filters(text: str) -> tuple[tuple[int, int, int], ...]:
    """(pref, handle, program id) of each bpf filter in `tc -j filter show` output."""
    out = []
    for f in _load_json(text, "tc filter show") or ():
        options = f.get("options") or {}
        if f.get("kind") != "bpf" or "handle" not in options:
            continue
        prog = (options.get("prog") or {}).get("id", 0)
        out.append((int(f.get("pref", 0)), int(str(options["handle"]), 0), int(prog)))
    return tuple(out)


def _trace_hook(att) -> LiveHook:
    """Whether a tracing hook can exist here: tracepoint in tracefs, kprobe PMU, uprobe symbol."""
    short = att.attach_type.short[0]
    if short in ("kprobe", "kretprobe"):
        if not os.path.isdir("/sys/bus/event_source/devices/kprobe"):
            return LiveHook((), 0, False, error="this kernel has no kprobe PMU (CONFIG_KPROBES is off): "
                                                "kprobes cannot be attached here")
        return LiveHook((), 0, True)
    if short == "tracepoint":
        from bpfdeploy.host import read_mounts

        tracefs = read_mounts().tracefs
        if tracefs is not None and not (tracefs / "events" / att.trace_target / "id").exists():
            return LiveHook((), 0, False, error=f"no tracepoint {att.trace_target} in {tracefs}/events")
        return LiveHook((), 0, True)
    if short in ("uprobe", "uretprobe"):
        from bpfdeploy.kernel.elfsym import ElfError, symbol_offset

        if not os.path.isfile(att.binary):
            return LiveHook((), 0, False, error=f"binary {att.binary} does not exist")
        try:
            offset = (symbol_offset(att.binary, att.symbol) if att.symbol else 0) + (att.offset or 0)
            inode = os.stat(att.binary).st_ino
        except (ElfError, OSError, ValueError, IndexError) as exc:
            return LiveHook((), 0, False, error=str(exc))
        # A uprobe sits on an inode at an offset: a rebuilt binary (new inode or moved function) needs a new one.
        return LiveHook((), 0, True, offset, identity=f"@{offset:#x} inode {inode}")
    return LiveHook((), 0, True)


def fingerprint(live: LiveState) -> str:
    """A digest of everything in the live state that a plan depends on (for saved plans).

    Programs and maps elsewhere on the host are left out: they do not change our plan.
    """
    import hashlib

    record = live.record
    parts = [
        str(live.pin_root), live.pin_root_exists, live.pinned, sorted(live.overlapping), live.unsafe,
        sorted((k, v.id, v.map_ids) for k, v in live.programs.items()),
        sorted((k, v.id, v.geometry) for k, v in live.maps.items()),
        sorted((k, v.id, v.prog_id, v.cgroup_id, v.netns_ino) for k, v in live.links.items()),
        sorted((k, v.prog_ids, v.attach_flags, v.target_exists, v.target_id) for k, v in live.hooks.items()),
        sorted((k, v) for k, v in live.map_values.items()),
        sorted(live.existing_cgroups), sorted(live.pin_stats.items()),
        sorted(record.digests.items()) if record else (), sorted(map(repr, record.legacy)) if record else (),
        record.pins if record else (),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()
