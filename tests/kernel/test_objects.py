"""Objects in their other forms: prebuilt ELF files, maps pinned by name, vmlinux.h, changed map definitions."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.test_lifecycle import COUNTER_SRC
from tests.kernel.traffic import ECHO

PIN_BY_NAME_SRC = COUNTER_SRC.replace("__uint(max_entries, 8);", "__uint(max_entries, 8);\n    __uint(pinning, LIBBPF_PIN_BY_NAME);")

VMLINUX_SRC = """
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
} lengths SEC(".maps");

SEC("cgroup_skb/egress")
int sum_lengths(struct __sk_buff *skb)
{
    __u32 key = 0;
    __u64 *v = bpf_map_lookup_elem(&lengths, &key);
    if (v)
        __sync_fetch_and_add(v, skb->len);
    return 1;
}
char LICENSE[] SEC("license") = "GPL";
"""


def _clang(src: Path, out: Path) -> None:
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", str(src), "-o",
                    str(out)], check=True)


def _deployment(sandbox, objects_yaml: str, attach_program: str, attach_type: str = "ingress", maps_yaml: str = ""):
    cgroup = sandbox.cgroups[0] if sandbox.cgroups else sandbox.cgroup("obj")
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-obj")
    if root not in sandbox.pin_roots:
        sandbox.pin_roots.append(root)
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-obj
        pin_root: {root}
        objects:
{objects_yaml}
{maps_yaml}
        attachments:
          - name: hook
            program: {attach_program}
            type: {attach_type}
            cgroup: {cgroup}
    """)
    return manifest, root, cgroup


def test_prebuilt_object_file_is_loaded_and_replaced_when_it_changes(sandbox):
    src, obj = sandbox.tmp / "c.bpf.c", sandbox.tmp / "prebuilt.o"
    src.write_text(COUNTER_SRC.replace("KEY", "0"))
    _clang(src, obj)
    manifest, root, cgroup = _deployment(sandbox, f"""          counter:
            file: {obj}""", "count_packets")
    out = sandbox.cli_json("apply", manifest)
    assert not any(c[0] == "clang" and "-c" in c for c in out["commands"])  # a prebuilt object is not built
    netns = sandbox.netns()
    sandbox.run_in(ECHO.format(n=1), cgroup=cgroup, netns=netns)
    assert map_values(root / "maps/counts")[0] > 0
    assert sandbox.cli_json("plan", manifest)["changes"] is False

    src.write_text(COUNTER_SRC.replace("KEY", "4"))
    _clang(src, obj)
    plan = sandbox.cli_json("plan", manifest)
    assert {a["address"]: a["action"] for a in plan["actions"]}["prog/count_packets"] == "replace"
    sandbox.cli("apply", manifest)
    sandbox.run_in(ECHO.format(n=1), cgroup=cgroup, netns=netns)
    assert map_values(root / "maps/counts")[4] > 0


def test_maps_pinned_by_name_stay_inside_the_pin_root(sandbox):
    src = sandbox.tmp / "byname.bpf.c"
    src.write_text(PIN_BY_NAME_SRC.replace("KEY", "0"))
    manifest, root, _cg = _deployment(sandbox, f"""          counter:
            source: {src}""", "count_packets")
    assert not Path("/sys/fs/bpf/counts").exists()
    sandbox.cli("apply", manifest)
    assert (root / "maps/counts").exists()
    assert not Path("/sys/fs/bpf/counts").exists()  # libbpf's default pin path was never used
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_vmlinux_h_is_generated_and_used(sandbox):
    src = sandbox.tmp / "vm.bpf.c"
    src.write_text(VMLINUX_SRC)
    manifest, root, cgroup = _deployment(sandbox, f"""          lengths:
            source: {src}
            vmlinux_h: true""", "sum_lengths", "egress")
    sandbox.cli("apply", manifest)
    sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=sandbox.netns())
    assert map_values(root / "maps/lengths")[0] > 0


def test_incompatible_map_change_is_refused_unless_recreate_is_asked(sandbox):
    src = sandbox.tmp / "c.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", "0"))
    objects = f"""          counter:
            source: {src}"""
    manifest, root, cgroup = _deployment(sandbox, objects, "count_packets")
    sandbox.cli("apply", manifest)
    subprocess.run(["bpftool", "map", "update", "pinned", str(root / "maps/counts"), "key", "7", "0", "0", "0",
                    "value", "42", "0", "0", "0", "0", "0", "0", "0"], check=True)
    ids = prog_ids_under(root)

    src.write_text(COUNTER_SRC.replace("KEY", "0").replace("max_entries, 8", "max_entries, 16"))
    proc = sandbox.cli("plan", manifest, check=False)
    assert proc.returncode == 1
    text = proc.stdout + proc.stderr
    assert "cannot be reused" in text and "max_entries 8" in text and "max_entries 16" in text
    assert sandbox.cli("apply", manifest, check=False).returncode == 1
    assert prog_ids_under(root) == ids and map_values(root / "maps/counts")[7] == 42

    manifest, root, cgroup = _deployment(sandbox, objects, "count_packets", maps_yaml="""        maps:
          counts:
            on_incompatible_change: recreate""")
    plan = sandbox.cli_json("plan", manifest)
    kinds = {a["address"]: a["action"] for a in plan["actions"]}
    assert kinds["map/counts"] == "replace" and kinds["prog/count_packets"] == "replace"
    sandbox.cli("apply", manifest)
    values = map_values(root / "maps/counts")
    assert len(values) == 16 and values[7] == 0  # a new, empty map
    sandbox.run_in(ECHO.format(n=1), cgroup=cgroup, netns=sandbox.netns())
    assert map_values(root / "maps/counts")[0] > 0  # the new program uses the new map
    assert sandbox.cli_json("plan", manifest)["changes"] is False


GLOBALS_SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
const volatile __u32 blocked_port = 0;  /* set by the loader, as real-world tools do */
const volatile char label[8] = "none";
SEC("cgroup/connect4")
int gate(struct bpf_sock_addr *ctx)
{
    return ctx->user_port == bpf_htons((__u16)blocked_port) ? 0 : 1;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_globals_are_set_before_load_and_a_change_replaces_the_program(sandbox):
    import json as _json

    from tests.kernel.traffic import CONNECT

    src = sandbox.tmp / "gate.bpf.c"
    src.write_text(GLOBALS_SRC)

    def deploy(port: int, extra: str = ""):
        return _deployment(sandbox, f"""          gate:
            source: {src}
            globals:
              blocked_port: {port}
              label: web{extra}""", "gate", "connect4")
    manifest, root, cgroup = deploy(4444)
    sandbox.cli("apply", manifest)
    netns = sandbox.netns()
    got = _json.loads(sandbox.run_in(CONNECT.format(listen=[4444, 5555], ports=[4444, 5555]), cgroup=cgroup,
                                     netns=netns).stdout)
    assert got["4444"] == ["EPERM", 0] and got["5555"] == ["connected", 5555]
    assert sandbox.cli_json("plan", manifest)["changes"] is False

    deploy(5555)
    plan = {a["address"]: a["action"] for a in sandbox.cli_json("plan", manifest)["actions"]}
    assert plan["prog/gate"] == "replace"
    sandbox.cli("apply", manifest)
    got = _json.loads(sandbox.run_in(CONNECT.format(listen=[4444, 5555], ports=[4444, 5555]), cgroup=cgroup,
                                     netns=netns).stdout)
    assert got["4444"] == ["connected", 4444] and got["5555"] == ["EPERM", 0]

    deploy(5555, extra="\n              blocked_prot: 1")
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1 and "no global variable 'blocked_prot'" in proc.stderr
    assert "did you mean 'blocked_port'" in proc.stderr
