"""Anchor C, the floor: one Python process that does what the naive script does, through
libbpf (ctypes), with no planning, no live read and no checks.

    python anchor_c.py deploy|upgrade|teardown SPEC.tsv

SPEC.tsv (written by run.py), tab-separated:
    root    <pin root>    <cgroup parent>    <map pin>
    prog    <object .o>   <program name>     <program pin>    <cgroup>    [<old program pin> for upgrade]

deploy:   mkdir the cgroups; load each object (the first pins the shared map, the others reuse
          it), pin the program, attach it to its cgroup (legacy attach, BPF_F_ALLOW_MULTI,
          like `bpftool cgroup attach ... multi`).
upgrade:  load each new object reusing the pinned map, pin it, attach it, detach the old
          program, unpin the old one.
teardown: detach every program, remove the pins, remove the cgroups.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import libbpf_min as b  # noqa: E402

lib = b.lib


def read_spec(path):
    root, progs = None, []
    with open(path) as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if f[0] == "root":
                root = f[1:]
            elif f[0] == "prog":
                progs.append(f[1:])
    return root, progs


def load(obj_path, prog_name, map_name, map_fd):
    obj = lib.bpf_object__open_file(obj_path.encode(), None)
    if not obj:
        raise b.fail(f"open {obj_path}")
    m = lib.bpf_object__find_map_by_name(obj, map_name)
    if map_fd >= 0 and lib.bpf_map__reuse_fd(m, map_fd):
        raise b.fail("reuse map")
    if lib.bpf_object__load(obj):
        raise b.fail(f"load {obj_path}")
    prog = lib.bpf_object__find_program_by_name(obj, prog_name.encode())
    if not prog:
        raise b.fail(f"no program {prog_name}")
    return obj, m, prog


def deploy(root, progs):
    pin_root, cg_parent, map_pin = root
    map_name = os.path.basename(map_pin).encode()
    for d in {os.path.dirname(map_pin)} | {os.path.dirname(p[2]) for p in progs}:
        os.makedirs(d, exist_ok=True)
    os.makedirs(cg_parent, exist_ok=True)
    map_fd = -1
    for obj_path, prog_name, prog_pin, cgroup, *_ in progs:
        os.mkdir(cgroup)
        obj, m, prog = load(obj_path, prog_name, map_name, map_fd)
        if map_fd < 0:
            if lib.bpf_map__pin(m, map_pin.encode()):
                raise b.fail("pin map")
            map_fd = os.dup(lib.bpf_map__fd(m))
        if lib.bpf_program__pin(prog, prog_pin.encode()):
            raise b.fail(f"pin {prog_pin}")
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        if lib.bpf_prog_attach(lib.bpf_program__fd(prog), cg, b.BPF_CGROUP_INET_INGRESS, b.BPF_F_ALLOW_MULTI):
            raise b.fail(f"attach {cgroup}")
        os.close(cg)
        lib.bpf_object__close(obj)


def upgrade(root, progs):
    _pin_root, _cg_parent, map_pin = root
    map_name = os.path.basename(map_pin).encode()
    map_fd = b.obj_get(map_pin)
    for obj_path, prog_name, prog_pin, cgroup, old_pin in progs:
        obj, _m, prog = load(obj_path, prog_name, map_name, map_fd)
        if lib.bpf_program__pin(prog, prog_pin.encode()):
            raise b.fail(f"pin {prog_pin}")
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        if lib.bpf_prog_attach(lib.bpf_program__fd(prog), cg, b.BPF_CGROUP_INET_INGRESS, b.BPF_F_ALLOW_MULTI):
            raise b.fail(f"attach {cgroup}")
        old = b.obj_get(old_pin)
        if lib.bpf_prog_detach2(old, cg, b.BPF_CGROUP_INET_INGRESS):
            raise b.fail(f"detach {old_pin}")
        os.close(old)
        os.close(cg)
        os.unlink(old_pin)
        lib.bpf_object__close(obj)


def teardown(root, progs):
    pin_root, cg_parent, _map_pin = root
    for _obj, _name, prog_pin, cgroup, *_ in progs:
        fd = b.obj_get(prog_pin)
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        if lib.bpf_prog_detach2(fd, cg, b.BPF_CGROUP_INET_INGRESS):
            raise b.fail(f"detach {prog_pin}")
        os.close(cg)
        os.close(fd)
    for dirpath, dirs, files in os.walk(pin_root, topdown=False):
        for f in files:
            os.unlink(os.path.join(dirpath, f))
        os.rmdir(dirpath)
    for _obj, _name, _pin, cgroup, *_ in progs:
        os.rmdir(cgroup)
    os.rmdir(cg_parent)


if __name__ == "__main__":
    mode, spec = sys.argv[1], sys.argv[2]
    root, progs = read_spec(spec)
    {"deploy": deploy, "upgrade": upgrade, "teardown": teardown}[mode](root, progs)
