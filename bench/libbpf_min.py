"""The few libbpf calls the benchmark needs, through ctypes (no bpfdeploy import).

Used by anchor C (``anchor_c.py``, the "one process, no planning" floor) and by the driver
(``run.py``) to write and check map values and to clean up legacy cgroup attachments.
Kept deliberately small: importing it costs ctypes plus one dlopen (about 2 ms).
"""

from __future__ import annotations

import ctypes
import os

BPF_CGROUP_INET_INGRESS = 0
BPF_F_ALLOW_MULTI = 2

_vp, _cp, _int, _u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
_P = ctypes.POINTER

_SIGNATURES = {
    "bpf_object__open_file": (_vp, [_cp, _vp]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__find_map_by_name": (_vp, [_vp, _cp]),
    "bpf_object__find_program_by_name": (_vp, [_vp, _cp]),
    "bpf_map__reuse_fd": (_int, [_vp, _int]),
    "bpf_map__pin": (_int, [_vp, _cp]),
    "bpf_map__fd": (_int, [_vp]),
    "bpf_program__fd": (_int, [_vp]),
    "bpf_program__pin": (_int, [_vp, _cp]),
    "bpf_obj_get": (_int, [_cp]),
    "bpf_prog_attach": (_int, [_int, _int, _int, ctypes.c_uint]),
    "bpf_prog_detach2": (_int, [_int, _int, _int]),
    "bpf_prog_query": (_int, [_int, _int, _u32, _P(_u32), _P(_u32), _P(_u32)]),
    "bpf_prog_get_fd_by_id": (_int, [_u32]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
}

lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
for _name, (_res, _args) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype, _fn.argtypes = _res, _args


class BpfError(OSError):
    pass


def fail(what: str) -> BpfError:
    e = ctypes.get_errno()
    return BpfError(e, f"{what}: {os.strerror(e)}")


def obj_get(path: str) -> int:
    fd = lib.bpf_obj_get(path.encode())
    if fd < 0:
        raise fail(f"bpf_obj_get {path}")
    return fd


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    ids = (_u32 * 64)()
    cnt, flags = _u32(64), _u32(0)
    if lib.bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(flags), ids, ctypes.byref(cnt)):
        raise fail("bpf_prog_query")
    return list(ids[: cnt.value])


def detach_all(cgroup: str, attach_type: int = BPF_CGROUP_INET_INGRESS) -> int:
    """Detach every legacy (non-link) program from one hook of a cgroup; how many went."""
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    done = 0
    try:
        for prog_id in prog_query(cg, attach_type):
            fd = lib.bpf_prog_get_fd_by_id(prog_id)
            if fd < 0:
                continue
            try:
                if lib.bpf_prog_detach2(fd, cg, attach_type) == 0:
                    done += 1
            finally:
                os.close(fd)
    finally:
        os.close(cg)
    return done


def map_write_u64(map_pin: str, values: dict[int, int]) -> None:
    fd = obj_get(map_pin)
    try:
        key, value = _u32(), ctypes.c_uint64()
        for k, v in values.items():
            key.value, value.value = k, v
            if lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), 0):
                raise fail(f"map update {map_pin}[{k}]")
    finally:
        os.close(fd)


def map_read_u64(map_pin: str, keys) -> dict[int, int]:
    fd = obj_get(map_pin)
    out = {}
    try:
        key, value = _u32(), ctypes.c_uint64()
        for k in keys:
            key.value = k
            if lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)):
                raise fail(f"map lookup {map_pin}[{k}]")
            out[k] = value.value
    finally:
        os.close(fd)
    return out
