"""Thin ctypes bindings to the system libbpf (libbpf.so.1).

This module offers primitives only. Reading functions (open/inspect an object, get info,
query a hook, look up a map value) may be used anywhere; the mutating ones (load, pin,
link, attach, detach, update) are called from ``bpfdeploy.kernel.apply`` alone.

libbpf's own messages are captured (not printed) so that errors can quote them.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

from bpfdeploy.diagnostics import KernelError
from bpfdeploy.model.frozen import frozen

vp, cp, c_int, c_u32, c_u64 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
_PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, cp, vp)


class _OpenOpts(ctypes.Structure):
    # struct bpf_object_open_opts, libbpf 1.1 layout (sz tells newer libbpf versions what we know).
    _fields_ = [
        ("sz", ctypes.c_size_t), ("object_name", cp), ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", cp), ("_attach_prog_fd", c_u32), ("kconfig", cp), ("btf_custom_path", cp),
        ("kernel_log_buf", vp), ("kernel_log_size", ctypes.c_size_t), ("kernel_log_level", c_u32),
    ]


class _LinkUpdateOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", c_u32), ("old_prog_fd", c_u32)]


class _AttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint), ("replace_prog_fd", c_int)]


_SIGNATURES = {
    "bpf_object__open_file": (vp, [cp, vp]),
    "bpf_object__load": (c_int, [vp]),
    "bpf_object__close": (None, [vp]),
    "bpf_object__next_program": (vp, [vp, vp]),
    "bpf_object__next_map": (vp, [vp, vp]),
    "bpf_program__name": (cp, [vp]),
    "bpf_program__section_name": (cp, [vp]),
    "bpf_program__type": (c_int, [vp]),
    "bpf_program__set_type": (c_int, [vp, c_int]),
    "bpf_program__expected_attach_type": (c_int, [vp]),
    "bpf_program__set_expected_attach_type": (c_int, [vp, c_int]),
    "bpf_program__set_autoload": (c_int, [vp, ctypes.c_bool]),
    "bpf_program__fd": (c_int, [vp]),
    "bpf_map__name": (cp, [vp]),
    "bpf_map__type": (c_int, [vp]),
    "bpf_map__key_size": (c_u32, [vp]),
    "bpf_map__value_size": (c_u32, [vp]),
    "bpf_map__max_entries": (c_u32, [vp]),
    "bpf_map__map_flags": (c_u32, [vp]),
    "bpf_map__is_internal": (ctypes.c_bool, [vp]),
    "bpf_map__set_pin_path": (c_int, [vp, cp]),
    "bpf_map__reuse_fd": (c_int, [vp, c_int]),
    "bpf_map__fd": (c_int, [vp]),
    "bpf_obj_get": (c_int, [cp]),
    "bpf_obj_pin": (c_int, [c_int, cp]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, vp, ctypes.POINTER(c_u32)]),
    "bpf_prog_get_fd_by_id": (c_int, [c_u32]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, vp]),
    "bpf_link_update": (c_int, [c_int, c_int, vp]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_prog_attach_opts": (c_int, [c_int, c_int, c_int, vp]),
    "bpf_prog_detach2": (c_int, [c_int, c_int, c_int]),
    "bpf_prog_query": (c_int, [c_int, c_int, c_u32, ctypes.POINTER(c_u32), ctypes.POINTER(c_u32), ctypes.POINTER(c_u32)]),
    "bpf_map_update_elem": (c_int, [c_int, vp, vp, c_u64]),
    "bpf_map_lookup_elem": (c_int, [c_int, vp, vp]),
    "bpf_map_delete_elem": (c_int, [c_int, vp]),
    "bpf_map_get_next_key": (c_int, [c_int, vp, vp]),
    "libbpf_set_print": (vp, [vp]),
    "bpf_object__btf": (vp, [vp]),
    "btf__find_by_name_kind": (ctypes.c_int32, [vp, cp, c_u32]),
    "btf__type_by_id": (vp, [vp, c_u32]),
    "btf__name_by_offset": (cp, [vp, c_u32]),
    "bpf_map__initial_value": (vp, [vp, ctypes.POINTER(ctypes.c_size_t)]),
}


class _Lib:
    """The loaded library with typed functions, and libbpf's captured messages."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise KernelError(f"cannot load libbpf.so.1 ({exc}); install the libbpf1 package") from None
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.messages: list[str] = []
        libc = ctypes.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [cp, ctypes.c_size_t, cp, vp]
        buf = ctypes.create_string_buffer(4096)

        def _print(level: int, fmt: bytes, args: int) -> int:
            if level > 1:  # LIBBPF_DEBUG: about twenty per object load, never kept, so not formatted
                return 0
            # va_list is an array type on x86_64 and aarch64, so it arrives as a pointer.
            vsnprintf(buf, len(buf), fmt, args)
            self.messages.append(buf.value.decode(errors="replace").rstrip())  # LIBBPF_WARN, LIBBPF_INFO
            del self.messages[:-200]
            return 0

        self._print = _PRINT_FN(_print)  # keep a reference: libbpf holds the pointer
        self.lib.libbpf_set_print(ctypes.cast(self._print, vp))

    def take_messages(self) -> list[str]:
        out, self.messages = self.messages, []
        return out


@lru_cache(maxsize=1)
def lib() -> _Lib:
    return _Lib()


def _errno() -> int:
    return ctypes.get_errno()


def _fail(what: str, err: int | None = None, log: str = "") -> KernelError:
    err = _errno() if err is None else err
    messages = lib().take_messages()
    detail = "\n".join(m for m in messages if m)
    text = f"{what}: {os.strerror(err)} (errno {err})" if err else what
    return KernelError(text, errno=err, log="\n".join(x for x in (detail, log) if x))


# ---------------------------------------------------------------- object files


@frozen
class ObjectProgram:
    name: str  # function name
    section: str
    type: int  # enum bpf_prog_type (0 when SEC() is unknown to libbpf)
    expected_attach_type: int


@frozen
class ObjectMap:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    internal: bool  # .rodata/.data/.bss/.kconfig: never pinned or shared


@frozen
class ObjectGlobal:
    """A global variable of the object (from BTF), settable before load."""

    name: str
    section: str  # .rodata, .data or .bss
    offset: int
    size: int


@frozen
class ObjectInfo:
    programs: tuple[ObjectProgram, ...]
    maps: tuple[ObjectMap, ...]
    globals: tuple[ObjectGlobal, ...] = ()


def _iter(next_fn, obj):
    item = next_fn(obj, None)
    while item:
        yield item
        item = next_fn(obj, item)


def _open(path: str, pin_root: str | None = None, log_buf=None) -> int:
    L = lib().lib
    opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts))
    if pin_root:
        opts.pin_root_path = pin_root.encode()
    if log_buf is not None:
        opts.kernel_log_buf = ctypes.cast(log_buf, vp)
        opts.kernel_log_size = len(log_buf)
        opts.kernel_log_level = 0  # libbpf retries a failed load with a log
    lib().take_messages()
    obj = L.bpf_object__open_file(path.encode(), ctypes.byref(opts))
    if not obj:
        raise _fail(f"cannot open BPF object {path}")
    return obj


def inspect_object(path: str) -> ObjectInfo:
    """Programs and maps of an ELF object, without loading anything into the kernel."""
    L = lib().lib
    obj = _open(path)
    try:
        programs = tuple(
            ObjectProgram(L.bpf_program__name(p).decode(), (L.bpf_program__section_name(p) or b"").decode(),
                          L.bpf_program__type(p), L.bpf_program__expected_attach_type(p))
            for p in _iter(L.bpf_object__next_program, obj)
        )
        maps = tuple(
            ObjectMap(L.bpf_map__name(m).decode(), L.bpf_map__type(m), L.bpf_map__key_size(m),
                      L.bpf_map__value_size(m), L.bpf_map__max_entries(m), L.bpf_map__map_flags(m),
                      bool(L.bpf_map__is_internal(m)))
            for m in _iter(L.bpf_object__next_map, obj)
        )
        globals_ = tuple(_globals(obj))
    finally:
        L.bpf_object__close(obj)
    return ObjectInfo(programs, maps, globals_)


_GLOBAL_SECTIONS = (".rodata", ".data", ".bss")
BTF_KIND_DATASEC = 15


def _globals(obj) -> list[ObjectGlobal]:
    """Variables of the .rodata/.data/.bss sections, with their offsets (BTF DATASEC records)."""
    L = lib().lib
    btf = L.bpf_object__btf(obj)
    out: list[ObjectGlobal] = []
    if not btf:
        return out
    for section in _GLOBAL_SECTIONS:
        sec_id = L.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if sec_id <= 0:
            continue
        header = ctypes.cast(L.btf__type_by_id(btf, sec_id), ctypes.POINTER(c_u32 * 3)).contents
        vlen = header[1] & 0xFFFF
        infos = ctypes.cast(L.btf__type_by_id(btf, sec_id) + 12, ctypes.POINTER(c_u32 * (3 * vlen))).contents
        for i in range(vlen):
            type_id, offset, size = infos[3 * i], infos[3 * i + 1], infos[3 * i + 2]
            var = ctypes.cast(L.btf__type_by_id(btf, type_id), ctypes.POINTER(c_u32 * 3)).contents
            name = (L.btf__name_by_offset(btf, var[0]) or b"").decode()
            if name:
                out.append(ObjectGlobal(name, section, offset, size))
    return out


def _set_globals(obj, values: dict[str, bytes]) -> None:
    """Write global variables' initial values before load (as a libbpf skeleton does)."""
    L = lib().lib
    where = {g.name: g for g in _globals(obj)}
    for name, value in values.items():
        g = where.get(name)
        if g is None:
            raise KernelError(f"the object has no global variable {name!r}")
        for m in _iter(L.bpf_object__next_map, obj):
            if L.bpf_map__is_internal(m) and L.bpf_map__name(m).decode().endswith(g.section):
                size = ctypes.c_size_t(0)
                data = L.bpf_map__initial_value(m, ctypes.byref(size))
                if not data or g.offset + len(value) > size.value:
                    raise KernelError(f"cannot set global variable {name!r}")
                ctypes.memmove(data + g.offset, value, len(value))
                break
        else:
            raise KernelError(f"no {g.section} map for global variable {name!r}")


@frozen
class LoadedObject:
    """An object loaded into the kernel: fds of its loaded programs. Close it after pinning."""

    handle: int
    program_fds: dict  # function name -> fd
    map_fds: dict  # map name in the object -> fd

    def close(self) -> None:
        lib().lib.bpf_object__close(self.handle)


class _LoadFailed(KernelError):
    """bpf_object__load itself failed (the verifier, a map, the kernel): worth a retry with a log."""


_log_buffer = None  # one 4 MiB verifier log buffer, made only when a load fails


def load_object(path: str, pin_root: str, programs: dict[str, tuple[int | None, int | None]],
                reuse_maps: dict[str, int], global_values: dict[str, bytes] | None = None) -> LoadedObject:
    """Load the named programs of an object (others are not loaded).

    programs: function name -> (program type, expected attach type) to force; None keeps what SEC() says.
    reuse_maps: map name in the object -> fd of an existing (pinned) map to use instead of a new one.
    Raises KernelError with the verifier log's tail on failure. The first attempt asks for no log
    (a log buffer per object cost 4 MiB and a copy each); a failed load is repeated once with one.
    """
    global _log_buffer
    try:
        return _load_once(path, pin_root, programs, reuse_maps, None, global_values)
    except _LoadFailed:
        if _log_buffer is None:
            _log_buffer = ctypes.create_string_buffer(4 << 20)
        ctypes.memset(_log_buffer, 0, 1)
        return _load_once(path, pin_root, programs, reuse_maps, _log_buffer, global_values)


def _load_once(path: str, pin_root: str, programs: dict, reuse_maps: dict, log_buf,
               global_values: dict[str, bytes] | None) -> LoadedObject:
    L = lib().lib
    obj = _open(path, pin_root=pin_root, log_buf=log_buf)
    try:
        if global_values:
            _set_globals(obj, global_values)
        found = set()
        for p in _iter(L.bpf_object__next_program, obj):
            name = L.bpf_program__name(p).decode()
            if name in programs:
                found.add(name)
                prog_type, expected = programs[name]
                if prog_type is not None and L.bpf_program__set_type(p, prog_type):
                    raise _fail(f"cannot set the type of program {name}")
                if expected is not None and L.bpf_program__set_expected_attach_type(p, expected):
                    raise _fail(f"cannot set the expected attach type of program {name}")
            else:
                L.bpf_program__set_autoload(p, False)
        missing = set(programs) - found
        if missing:
            raise KernelError(f"{path} has no program named {', '.join(sorted(missing))}")
        for m in _iter(L.bpf_object__next_map, obj):
            name = L.bpf_map__name(m).decode()
            # Never let libbpf pin by itself (LIBBPF_PIN_BY_NAME would pin outside our layout).
            L.bpf_map__set_pin_path(m, None)
            if name in reuse_maps and L.bpf_map__reuse_fd(m, reuse_maps[name]):
                raise _fail(f"cannot reuse the pinned map for {name}")
        if L.bpf_object__load(obj):
            err = _errno()
            failure = _fail(f"loading {os.path.basename(path)} failed", err,
                            _log_tail(log_buf.value) if log_buf is not None else "")
            if log_buf is None:
                raise _LoadFailed(str(failure), failure.errno, failure.log)
            raise failure
        prog_fds = {L.bpf_program__name(p).decode(): L.bpf_program__fd(p)
                    for p in _iter(L.bpf_object__next_program, obj) if L.bpf_program__name(p).decode() in programs}
        map_fds = {L.bpf_map__name(m).decode(): L.bpf_map__fd(m) for m in _iter(L.bpf_object__next_map, obj)}
    except BaseException:
        L.bpf_object__close(obj)
        raise
    return LoadedObject(obj, prog_fds, map_fds)


def _log_tail(log: bytes, lines: int = 20) -> str:
    text = log.decode(errors="replace").strip()
    if not text:
        return ""
    tail = text.splitlines()[-lines:]
    return "verifier log (last lines):\n" + "\n".join("  " + line for line in tail)


# ---------------------------------------------------------------- pins and info


def obj_get(path: str) -> int:
    fd = lib().lib.bpf_obj_get(path.encode())
    if fd < 0:
        raise _fail(f"cannot open pin {path}")
    return fd


def obj_pin(fd: int, path: str) -> None:
    if lib().lib.bpf_obj_pin(fd, path.encode()):
        raise _fail(f"cannot pin at {path}")


class _ProgInfo(ctypes.Structure):
    _fields_ = [("type", c_u32), ("id", c_u32)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", c_u32), ("id", c_u32), ("key_size", c_u32), ("value_size", c_u32),
                ("max_entries", c_u32), ("map_flags", c_u32)]


class _LinkInfo(ctypes.Structure):
    # type, id, prog_id, then the per-type union (8-aligned); we read its first 16 bytes.
    _fields_ = [("type", c_u32), ("id", c_u32), ("prog_id", c_u32), ("_pad", c_u32),
                ("u0", c_u32), ("u1", c_u32), ("u2", c_u32), ("u3", c_u32)]


def _info(fd: int, struct):
    info = struct()
    size = c_u32(ctypes.sizeof(info))
    if lib().lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)):
        raise _fail("cannot read object info")
    return info


def prog_id(fd: int) -> int:
    return _info(fd, _ProgInfo).id


def map_info(fd: int) -> _MapInfo:
    return _info(fd, _MapInfo)


def link_info(fd: int) -> _LinkInfo:
    return _info(fd, _LinkInfo)


def prog_fd_by_id(prog_id_: int) -> int:
    fd = lib().lib.bpf_prog_get_fd_by_id(prog_id_)
    if fd < 0:
        raise _fail(f"program id {prog_id_} is gone")
    return fd


# ---------------------------------------------------------------- hooks


@frozen
class HookQuery:
    attach_flags: int  # BPF_F_ALLOW_OVERRIDE=1, BPF_F_ALLOW_MULTI=2 (0: none or nothing attached)
    prog_ids: tuple[int, ...]


def prog_query(target_fd: int, attach_type: int) -> HookQuery:
    """Programs attached at a hook (cgroup, sockmap or netns), links included."""
    L = lib().lib
    cap = 64
    while True:
        ids = (c_u32 * cap)()
        cnt, flags = c_u32(cap), c_u32(0)
        rc = L.bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(cnt))
        if rc == 0:
            return HookQuery(flags.value, tuple(ids[: cnt.value]))
        if _errno() == 28 and cap < 65536:  # ENOSPC: more programs than room
            cap *= 8
            continue
        raise _fail(f"cannot query hook (attach type {attach_type})")


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    fd = lib().lib.bpf_link_create(prog_fd, target_fd, attach_type, None)
    if fd < 0:
        raise _fail("cannot create link")
    return fd


def link_update(link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
    opts = _LinkUpdateOpts(sz=ctypes.sizeof(_LinkUpdateOpts))
    if old_prog_fd is not None:
        opts.flags, opts.old_prog_fd = 4, old_prog_fd  # BPF_F_REPLACE: fail if someone swapped it meanwhile
    if lib().lib.bpf_link_update(link_fd, new_prog_fd, ctypes.byref(opts)):
        raise _fail("cannot update link")


from bpfdeploy.hooks import BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, BPF_F_REPLACE  # noqa: E402,F401


def link_detach(link_fd: int) -> None:
    """Detach a link now (it stays as a defunct object until its last reference goes)."""
    if lib().lib.bpf_link_detach(link_fd):
        raise _fail("cannot detach link")


def prog_attach(prog_fd: int, target_fd: int, attach_type: int, flags: int, replace_fd: int | None = None) -> None:
    opts = _AttachOpts(sz=ctypes.sizeof(_AttachOpts), flags=flags)
    if replace_fd is not None:
        opts.flags |= BPF_F_REPLACE
        opts.replace_prog_fd = replace_fd
    if lib().lib.bpf_prog_attach_opts(prog_fd, target_fd, attach_type, ctypes.byref(opts)):
        raise _fail("cannot attach program")


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    if lib().lib.bpf_prog_detach2(prog_fd, target_fd, attach_type):
        raise _fail("cannot detach program")


# ---------------------------------------------------------------- map values


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    value = ctypes.create_string_buffer(value_size)
    if lib().lib.bpf_map_lookup_elem(fd, key, value):
        if _errno() == 2:  # ENOENT
            return None
        raise _fail("cannot read map entry")
    return value.raw


def map_update(fd: int, key: bytes, value: bytes) -> None:
    if lib().lib.bpf_map_update_elem(fd, key, value, 0):
        raise _fail("cannot write map entry")


def map_count(fd: int) -> int:
    """Number of keys in a map (an array always has max_entries)."""
    info = map_info(fd)
    if info.type in (2, 6):  # array, percpu_array
        return info.max_entries
    key, next_key = ctypes.create_string_buffer(info.key_size), ctypes.create_string_buffer(info.key_size)
    count, current = 0, None
    while lib().lib.bpf_map_get_next_key(fd, current, next_key) == 0:
        count += 1
        ctypes.memmove(key, next_key, info.key_size)
        current = key
    return count


def map_delete(fd: int, key: bytes) -> None:
    if lib().lib.bpf_map_delete_elem(fd, key) and _errno() != 2:
        raise _fail("cannot delete map entry")


# ---------------------------------------------------------------- device and tracing links


class _LinkCreateOpts(ctypes.Structure):
    # struct bpf_link_create_opts of libbpf 1.1: sz, flags, iter_info, iter_info_len, target_btf_id, union (32 B).
    _fields_ = [("sz", ctypes.c_size_t), ("flags", c_u32), ("iter_info", vp), ("iter_info_len", c_u32),
                ("target_btf_id", c_u32), ("_union", ctypes.c_uint64 * 4)]


XDP_FLAGS = {"generic": 1 << 1, "driver": 1 << 2, "offload": 1 << 3}  # XDP_FLAGS_SKB_MODE, DRV_MODE, HW_MODE


def link_create_flags(prog_fd: int, target: int, attach_type: int, flags: int) -> int:
    """bpf_link_create with flags (an XDP mode); target is an fd or an ifindex."""
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=flags)
    fd = lib().lib.bpf_link_create(prog_fd, target, attach_type, ctypes.byref(opts))
    if fd < 0:
        raise _fail("cannot create link")
    return fd


BPF_F_BEFORE, BPF_F_AFTER, BPF_F_LINK = 1 << 3, 1 << 4, 1 << 13  # mprog placement (uapi bpf.h)


def link_create_ordered(prog_fd: int, target: int, attach_type: int, flags: int, relative_fd: int = 0) -> int:
    """BPF_LINK_CREATE placed in the hook's chain (tcx, cgroup): flags BPF_F_BEFORE/BPF_F_AFTER, with
    BPF_F_LINK and relative_fd the link to stand next to, or no relative (the front or the back).

    libbpf 1.1's bpf_link_create_opts has no tcx/cgroup fields, so the attr is built here:
    prog_fd, target_fd/ifindex, attach_type, flags, then the union's relative_fd and
    expected_revision (0: any) at offsets 16 and 24.
    """
    import struct

    attr = ctypes.create_string_buffer(struct.pack("=IIIIIIQ", prog_fd, target, attach_type, flags, relative_fd,
                                                   0, 0).ljust(64, b"\0"))
    fd = _sys_bpf(28, attr)  # BPF_LINK_CREATE
    if fd < 0:
        raise _fail("cannot create link at its place in the chain")
    return fd


def _sys_bpf(cmd: int, attr) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc.syscall(ctypes.c_long(321), ctypes.c_int(cmd), attr, ctypes.c_uint(ctypes.sizeof(attr)))


def raw_tracepoint_open(name: str | None, prog_fd: int) -> int:
    """A raw_tp link (name None: the BTF tracepoint the program was loaded for)."""
    fn = lib().lib.bpf_raw_tracepoint_open
    fn.restype, fn.argtypes = c_int, [cp, c_int]
    fd = fn(name.encode() if name else None, prog_fd)
    if fd < 0:
        raise _fail(f"cannot attach to raw tracepoint {name or '(from BTF)'}")
    return fd


class _PerfEventAttr(ctypes.Structure):
    # struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes): what tracepoints and uprobes need.
    _fields_ = [("type", c_u32), ("size", c_u32), ("config", c_u64), ("sample_period", c_u64),
                ("sample_type", c_u64), ("read_format", c_u64), ("flags", c_u64), ("wakeup_events", c_u32),
                ("bp_type", c_u32), ("config1", c_u64), ("config2", c_u64), ("_rest", ctypes.c_uint8 * 40)]


_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "arm64": 241}


def perf_event_open(pmu_type: int, config: int, config1: int = 0, config2: int = 0, pid: int = -1) -> int:
    import platform

    attr = _PerfEventAttr(type=pmu_type, size=112, config=config, config1=config1, config2=config2)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    nr = _PERF_EVENT_OPEN.get(platform.machine(), 298)
    cpu = 0 if pid == -1 else -1
    fd = libc.syscall(ctypes.c_long(nr), ctypes.byref(attr), c_int(pid), c_int(cpu), c_int(-1),
                      ctypes.c_ulong(8))  # PERF_FLAG_FD_CLOEXEC
    if fd < 0:
        err = ctypes.get_errno()
        raise KernelError(f"perf_event_open failed: {os.strerror(err)} (errno {err})", errno=err)
    return fd
