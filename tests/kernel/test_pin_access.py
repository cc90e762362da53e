"""Pins others can read: owner, group and mode set by apply, drift in them planned, and an
unprivileged reader that opens a map pin read-only (BPF_OBJ_GET with BPF_F_RDONLY).

What an unprivileged process can do here (kernel 6.18, kernel.unprivileged_bpf_disabled=2),
measured and checked below: BPF_OBJ_GET with BPF_F_RDONLY on a pin whose mode grants it read
permission, then BPF_MAP_LOOKUP_ELEM and BPF_MAP_GET_NEXT_KEY on that fd. Opening it for
writing is refused by the pin's mode (EACCES), writing through the read-only fd is refused
(EPERM), and without read permission on the pin or search permission on a directory above it
the open fails (EACCES).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from pathlib import Path

from tests.kernel.test_lifecycle import COUNTER_SRC
from tests.kernel.traffic import ECHO

NOBODY = 65534
NOGROUP = 65534
OTHER_GID = 54321  # a group nobody is in (no entry needed)

# Runs as the unprivileged user with the system python (the test's venv lives under /root).
READER = textwrap.dedent("""
    import ctypes, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_GET_NEXT_KEY, BPF_OBJ_GET = 1, 2, 4, 7
    BPF_F_RDONLY = 1 << 3

    class ObjAttr(ctypes.Structure):
        _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]

    class ElemAttr(ctypes.Structure):
        _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                    ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]

    def bpf(cmd, attr):
        rc = libc.syscall(321, cmd, ctypes.byref(attr), ctypes.sizeof(attr))  # __NR_bpf on x86_64
        return rc, ctypes.get_errno()

    path = ctypes.create_string_buffer(sys.argv[1].encode())
    out = {"uid": os.getuid(), "groups": sorted(os.getgroups())}
    fd, err = bpf(BPF_OBJ_GET, ObjAttr(ctypes.addressof(path), 0, 0))
    out["open_rw"] = "ok" if fd >= 0 else os.strerror(err)
    fd, err = bpf(BPF_OBJ_GET, ObjAttr(ctypes.addressof(path), 0, BPF_F_RDONLY))
    out["open_ro"] = "ok" if fd >= 0 else os.strerror(err)
    if fd >= 0:
        values = {}
        key, nxt, value = ctypes.c_uint32(), ctypes.c_uint32(), ctypes.c_uint64()
        rc, err = bpf(BPF_MAP_GET_NEXT_KEY, ElemAttr(fd, 0, 0, ctypes.addressof(nxt), 0))
        while rc == 0:
            key.value = nxt.value
            if bpf(BPF_MAP_LOOKUP_ELEM, ElemAttr(fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))[0] == 0:
                values[key.value] = value.value
            rc, err = bpf(BPF_MAP_GET_NEXT_KEY, ElemAttr(fd, 0, ctypes.addressof(key), ctypes.addressof(nxt), 0))
        out["values"] = values
        key.value, value.value = 0, 12345
        rc, err = bpf(BPF_MAP_UPDATE_ELEM, ElemAttr(fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
        out["update"] = "ok" if rc == 0 else os.strerror(err)
    print(json.dumps(out))
""")


def _read_as(pin: Path, gid: int, groups: list[int]) -> dict:
    proc = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", READER, str(pin)], capture_output=True, text=True,
                          timeout=30, user=NOBODY, group=gid, extra_groups=groups, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _access(path: Path) -> tuple[int, int, str]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, f"{stat.S_IMODE(st.st_mode):04o}"


def _manifest(sandbox, cgroup: Path) -> Path:
    src = sandbox.tmp / "counter.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", "1"))
    root = sandbox.pin_root(f"{sandbox.id}-access")
    return sandbox.write(f"""
        version: 1
        name: {sandbox.id}-access
        pin_root: {root}
        pin_root_access: {{group: {NOGROUP}, mode: "0750"}}
        objects:
          counter:
            source: {src}
            programs:
              count_packets: {{mode: "0640", group: nogroup}}
        maps:
          counts:
            group: nogroup
            mode: "0640"
            entries:
              - {{key: 7, value: 42}}
            entries_policy: seed
        attachments:
          - name: ingress
            program: count_packets
            type: ingress
            cgroup: {cgroup}
    """)


def test_unprivileged_reader_opens_a_map_pin_read_only(sandbox):
    cgroup = sandbox.cgroup("access")
    manifest = _manifest(sandbox, cgroup)
    root = sandbox.pin_roots[-1]
    out = sandbox.cli_json("apply", manifest)
    assert out["applied"], out

    pin = root / "maps" / "counts"
    assert _access(root) == (0, NOGROUP, "0750")
    for sub in ("maps", "progs", "links"):
        assert _access(root / sub) == (0, NOGROUP, "0750"), sub
    assert _access(pin) == (0, NOGROUP, "0640")
    assert _access(root / "progs" / "count_packets") == (0, NOGROUP, "0640")
    assert _access(root / "links" / "ingress")[2] == "0600"  # not asked for: left as pinned

    sandbox.run_in(ECHO.format(n=3), cgroup=cgroup, netns=sandbox.netns())
    reader = _read_as(pin, NOGROUP, [])
    assert reader["open_ro"] == "ok", reader
    assert reader["open_rw"] == "Permission denied", reader  # the mode gives the group no write
    assert reader["update"] == "Operation not permitted", reader  # a read-only fd cannot write
    assert reader["values"]["7"] == 42, reader  # seeded by the manifest
    assert reader["values"]["1"] >= 3, reader  # the program's counter, read by the unprivileged user

    # Not in the group: the pin root (0750) cannot be searched.
    stranger = _read_as(pin, OTHER_GID, [])
    assert stranger["open_ro"] == "Permission denied", stranger
    assert "values" not in stranger

    again = sandbox.cli_json("plan", manifest)
    assert again["changes"] is False, again


def test_drift_in_owner_group_or_mode_is_planned_and_fixed(sandbox):
    cgroup = sandbox.cgroup("drift")
    manifest = _manifest(sandbox, cgroup)
    root = sandbox.pin_roots[-1]
    sandbox.cli("apply", manifest)
    pin = root / "maps" / "counts"
    map_id_before = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)],
                                              capture_output=True, text=True, check=True).stdout)["id"]

    os.chmod(pin, 0o600)  # by hand: the reader loses access
    os.chown(root / "progs" / "count_packets", 0, 0)
    os.chmod(root, 0o700)
    assert _read_as(pin, NOGROUP, [])["open_ro"] == "Permission denied"

    planned = sandbox.cli_json("plan", manifest)
    from tests.reply_schemas import check_reply

    check_reply("plan", planned)
    changes = {a["address"]: a for a in planned["actions"] if a["action"] != "no-op"}
    assert set(changes) == {"access/map/counts", "access/prog/count_packets", "access/pin_root"}, changes
    assert changes["access/map/counts"]["before_text"] == f"owner 0 group {NOGROUP} mode 0600"
    assert changes["access/map/counts"]["after_text"] == "group nogroup mode 0640"
    assert changes["access/map/counts"]["before"] == {"uid": 0, "gid": NOGROUP, "mode": "0600"}
    assert changes["access/map/counts"]["after"] == {"gid": NOGROUP, "mode": "0640"}
    human = sandbox.cli("plan", manifest).stdout
    assert "~ update  access/map/counts" in human

    applied = sandbox.cli_json("apply", manifest)
    assert sorted(applied["done"]) == ["update access/map/counts", "update access/pin_root",
                                       "update access/prog/count_packets"], applied
    assert _access(pin) == (0, NOGROUP, "0640")
    assert _access(root) == (0, NOGROUP, "0750")
    assert _access(root / "progs" / "count_packets") == (0, NOGROUP, "0640")
    # Only the pins' attributes changed: the same map, its entries kept.
    map_id_after = json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)],
                                             capture_output=True, text=True, check=True).stdout)["id"]
    assert map_id_after == map_id_before
    assert _read_as(pin, NOGROUP, [])["values"]["7"] == 42
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_unknown_owner_or_group_and_an_unquoted_mode_are_manifest_errors(sandbox):
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-badaccess
        pin_root: /sys/fs/bpf/bpfdeploy-test/{sandbox.id}-badaccess
        pin_root_access: {{owner: no-such-user-{sandbox.id}}}
        objects:
          counter:
            source: /nonexistent.bpf.c
        maps:
          counts: {{group: no-such-group-{sandbox.id}, mode: 0640}}
    """)
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1
    assert "pin_root_access.owner: no user" in proc.stderr, proc.stderr
    assert "maps.counts.group: no group" in proc.stderr, proc.stderr
    assert "maps.counts.mode" in proc.stderr and "quoted" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
