"""Objects written for other loaders (issue 19, issue 14 "Objects written for other loaders"):
each failure kind is refused with a message naming the object, its source and the map or
program at fault, before any change; and validate re-checks the paths its checks depend on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.kernel.conftest import REPO

OBJECTS = REPO / "tests" / "objects"


def _manifest(sandbox, objects_yaml: str, attachments_yaml: str = "", suffix: str = "fo") -> tuple[Path, Path]:
    name = f"{sandbox.id}-{suffix}"
    root = sandbox.pin_root(name)
    manifest = sandbox.write(f"""
        version: 1
        name: {name}
        pin_root: {root}
        objects:
{objects_yaml}
{attachments_yaml}
    """, filename=f"{suffix}.yaml")
    return manifest, root


def _source(filename: str) -> str:
    return str(OBJECTS / filename)


def _no_traceback(proc) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "internal error" not in proc.stderr


def _digest_named(text: str) -> bool:
    """Does the text name an object by its build digest (a cache file) rather than as the manifest does?"""
    import re

    return re.search(r"\b[0-9a-f]{64}\.o\b", text) is not None


def test_legacy_map_definitions_are_refused_naming_the_object_and_source(sandbox):
    manifest, root = _manifest(sandbox, f"""          tutorial:
            source: {_source('legacy_maps.bpf.c')}""")
    for command in ("validate", "plan"):
        proc = sandbox.cli(command, manifest, check=False)
        assert proc.returncode == 1, proc.stderr
        _no_traceback(proc)
        assert "object 'tutorial' (" in proc.stderr and "legacy_maps.bpf.c" in proc.stderr
        assert 'SEC("maps")' in proc.stderr and "SEC(\".maps\")" in proc.stderr
        assert f"{manifest}:" in proc.stderr  # file and line of the object
        assert not _digest_named(proc.stderr)
    assert not root.exists()


def test_static_entry_function_is_refused_naming_the_program(sandbox):
    manifest, root = _manifest(sandbox, f"""          vendor:
            source: {_source('static_entry.bpf.c')}""")
    out = sandbox.cli_json("validate", manifest, check=False)
    message = out["diagnostics"][0]["message"]
    assert "object 'vendor'" in message and "static_entry.bpf.c" in message
    assert "program 'xdp_static_pass' is a static function" in message
    assert out["diagnostics"][0]["line"] is not None and out["diagnostics"][0]["path"] == "objects.vendor"
    assert not root.exists()


def test_cilium_style_ringbuf_and_perf_array_definitions_are_refused_before_load(sandbox):
    manifest, root = _manifest(sandbox, f"""          cilium:
            source: {_source('cilium_events.bpf.c')}""")
    out = sandbox.cli_json("plan", manifest, check=False)
    messages = [d["message"] for d in out["diagnostics"]]
    assert any("map 'events' is a ringbuf with a key or value type" in m for m in messages), messages
    assert any("map 'perf_events' is a perf event array" in m for m in messages), messages
    assert not any("a_plain_counter" in m for m in messages)  # the good map is not blamed
    assert all("object 'cilium'" in m for m in messages)
    assert not root.exists()


def test_a_failing_program_of_a_multi_program_object_is_blamed_by_name(sandbox):
    manifest, root = _manifest(sandbox, f"""          tutorial:
            source: {_source('three_xdp.bpf.c')}""")
    proc = sandbox.cli("apply", manifest, "--json", check=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["failed_step"] == "create prog/xdp_unchecked_read"  # not the last program of the group
    assert "program 'xdp_unchecked_read' of object 'tutorial' (" in out["error"]
    assert "three_xdp.bpf.c:" in out["error"]  # where, from the BTF line info of the verifier log
    assert "the verifier refused it" in out["error"]
    assert not _digest_named(out["error"])
    assert "invalid access to packet" in out["detail"]
    assert not (root / "progs").exists() or not list((root / "progs").iterdir())  # rolled back


def test_a_map_the_kernel_refuses_is_blamed_by_name_not_the_first_map(sandbox):
    manifest, root = _manifest(sandbox, f"""          sized:
            source: {_source('zero_sized_map.bpf.c')}""")
    proc = sandbox.cli("apply", manifest, "--json", check=False)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    assert out["failed_step"] == "create map/zz_unsized", out
    assert "map 'zz_unsized' of object 'sized' (" in out["error"]
    assert "aa_sized_ok" not in out["error"]
    assert not (root / "maps").exists() or not list((root / "maps").iterdir())


UPROBE_SRC = REPO / "bpf" / "uprobe-demo" / "uprobe_count.bpf.c"


def test_validate_rechecks_a_removed_uprobe_binary_and_cgroup(sandbox):
    binary = sandbox.tmp / "target-copy"
    shutil.copy(REPO / "build" / "uprobe-target", binary)
    cgroup = sandbox.cgroup("val")
    manifest, _root = _manifest(sandbox, f"""          uprobe:
            source: {UPROBE_SRC}
            programs: {{count_call: null}}
          counters:
            source: {REPO / 'bpf' / 'cgroup-counters' / 'counters.bpf.c'}
            programs: {{count_ingress: null}}""", f"""
        attachments:
          - program: count_call
            type: uprobe
            binary: {binary}
            symbol: handle_request
          - program: count_ingress
            type: ingress
            cgroup: {cgroup}""")
    sandbox.cli("validate", manifest)
    sandbox.cli("validate", manifest)  # now from the prepared-manifest cache
    binary.unlink()
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1 and "binary" in proc.stderr and "not found" in proc.stderr, proc.stderr
    shutil.copy(REPO / "build" / "uprobe-target", binary)
    sandbox.cli("validate", manifest)
    cgroup.rmdir()
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1 and f"cgroup {cgroup} does not exist" in proc.stderr, proc.stderr


# ---------------------------------------------------------------- plan --verify


def _bpftool(*args: str):
    import subprocess

    proc = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout or "[]")


def _kernel_objects_settled(names: set[str], expected: dict, seconds: float = 2.0) -> dict:
    """_kernel_objects, read again until it is what is expected or the time is up: the kernel frees
    a map in deferred work after its last reference goes, so a trial load's maps can outlive the
    process that made them by a moment on a busy host."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        got = _kernel_objects(names)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def _kernel_objects(names: set[str]) -> dict:
    """Programs, maps and links of the kernel that concern us: programs and maps with these names, and
    links holding such programs. (Other engineers' tests load and free things meanwhile.)"""
    progs = {p["id"]: p.get("name") for p in _bpftool("prog", "show") if p.get("name") in names}
    maps = {m["id"]: m.get("name") for m in _bpftool("map", "show") if m.get("name") in names}
    links = {link["id"]: link["prog_id"] for link in _bpftool("link", "show") if link.get("prog_id") in progs}
    return {"progs": progs, "maps": maps, "links": links}


def _tree(root: Path) -> dict:
    """Every pin under a pin root, with the id of the object it holds."""
    out = {}
    if not root.exists():
        return out
    ids = {pin: p["id"] for kind in ("prog", "map", "link") for p in _bpftool("-f", kind, "show")
           for pin in p.get("pinned", ())}
    for path in sorted(root.rglob("*")):
        out[str(path)] = ids.get(str(path), "dir" if path.is_dir() else "?")
    return out


def _ours_on_bpffs(names: set[str]) -> list[str]:
    return sorted(p.name for p in Path("/sys/fs/bpf").iterdir() if p.name in names)


def _prog_exists(prog_id: int) -> bool:
    import subprocess

    return subprocess.run(["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True).returncode == 0


def test_plan_verify_gives_each_program_its_verdict_and_changes_nothing(sandbox):
    # This test's own names (the kernel keeps 15 characters), so that nothing another test loads meanwhile counts.
    first, bad, last, seen = (f"{c}{sandbox.id}" for c in "fblm")
    src = sandbox.tmp / "three_xdp.bpf.c"
    src.write_text((OBJECTS / "three_xdp.bpf.c").read_text().replace("xdp_first_pass", first)
                   .replace("xdp_unchecked_read", bad).replace("xdp_last_pass", last).replace("xdp_seen", seen))
    manifest, root = _manifest(sandbox, f"""          tutorial:
            source: {src}""")
    names = {first, bad, last, seen}
    before, bpffs_before = _kernel_objects(names), _ours_on_bpffs(names)
    proc = sandbox.cli("plan", manifest, "--verify", "--json", check=False)
    assert proc.returncode == 1, proc.stderr  # a refusal is a plan error
    out = json.loads(proc.stdout)
    verdicts = {v["function"]: v for v in out["verification"]["programs"]}
    assert [verdicts[f]["accepted"] for f in (first, bad, last)] == [True, False, True]  # the last got its own load
    refused = verdicts[bad]
    assert refused["source_line"].startswith("three_xdp.bpf.c:")
    assert "invalid access to packet" in refused["log_tail"]
    assert "processed" not in refused["log_tail"]
    errors = [d for d in out["diagnostics"] if d["severity"] == "error"]
    assert len(errors) == 1 and f"program '{bad}'" in errors[0]["message"] and errors[0]["line"] is not None
    # The accepted programs really were loaded (they had ids), and are gone again.
    trial_ids = [verdicts[f]["trial_id"] for f in (first, last)]
    assert all(trial_ids) and not any(_prog_exists(i) for i in trial_ids)
    assert _kernel_objects_settled(names, before) == before == {"progs": {}, "maps": {}, "links": {}}
    assert _ours_on_bpffs(names) == bpffs_before  # (a by-name pin would land there)
    assert not root.exists()

    human = sandbox.cli("plan", manifest, "--verify", check=False)
    assert f"accepted prog/{first}" in human.stdout and f"refused  prog/{bad}" in human.stdout
    assert "Verifier: 2 accepted, 1 refused." in human.stdout


def test_plan_verify_on_a_deployed_upgrade_leaves_pins_links_and_map_contents_alone(sandbox):
    src = sandbox.tmp / "counters.bpf.c"
    # Names of this test's own (the bundled example's may be loaded by other tests meanwhile).
    ingress, egress, traffic = f"i{sandbox.id}", f"e{sandbox.id}", f"t{sandbox.id}"
    src.write_text((REPO / "bpf" / "cgroup-counters" / "counters.bpf.c").read_text()
                   .replace("count_ingress", ingress).replace("count_egress", egress).replace("traffic", traffic))
    cgroup = sandbox.cgroup("ver")
    manifest, root = _manifest(sandbox, f"""          counters:
            source: {src}""", f"""
        attachments:
          - program: {ingress}
            type: ingress
            cgroup: {cgroup}
          - program: {egress}
            type: egress
            cgroup: {cgroup}""")
    sandbox.cli("apply", manifest)
    netns = sandbox.netns()
    from tests.kernel.traffic import ECHO

    sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=netns)
    src.write_text(src.read_text().replace("return 1; /* allow: we only count */", "return 1; /* v2 */"))
    names = {ingress, egress, traffic}
    tree, objects = _tree(root), _kernel_objects(names)
    counters = _bpftool("map", "dump", "pinned", str(root / "maps" / traffic))
    out = sandbox.cli_json("plan", manifest, "--verify")
    assert {a["address"]: a["action"] for a in out["actions"]}[f"prog/{ingress}"] == "replace"
    assert out["verification"]["accepted"] is True
    assert {v["function"] for v in out["verification"]["programs"]} == {ingress, egress}
    assert not any(_prog_exists(v["trial_id"]) for v in out["verification"]["programs"])
    assert _tree(root) == tree  # the same pins holding the same programs, maps and links
    assert _kernel_objects_settled(names, objects) == objects
    assert _bpftool("map", "dump", "pinned", str(root / "maps" / traffic)) == counters
    assert counters and any(e["formatted"]["value"]["packets"] for e in counters)  # there was something to keep
    again = sandbox.cli_json("plan", manifest, "--verify")
    assert len(again["verification"]["programs"]) == 2  # plan --verify applied nothing: the upgrade is still due
    sandbox.cli("apply", manifest)
    done = sandbox.cli_json("plan", manifest, "--verify")
    assert done["verification"] == {"accepted": True, "programs": []}  # nothing new or changed: nothing loaded


# ---------------------------------------------------------------- dump


def test_dump_shows_per_cpu_values_decoded_keys_and_globals(sandbox):
    cgroup = sandbox.cgroup("dump")
    manifest, root = _manifest(sandbox, f"""          boot:
            source: {_source('bootstrap_counters.bpf.c')}
            globals: {{count_every: 7}}""", f"""
        attachments:
          - program: count_sources
            type: ingress
            cgroup: {cgroup}
        metrics:
          - name: packets_by_source_total
            help: Packets by source address.
            map: by_source
            labels: [{{name: source, decode: ipv4}}]""")
    sandbox.cli("apply", manifest)
    from tests.kernel.traffic import ECHO

    sandbox.run_in(ECHO.format(n=3), cgroup=cgroup, netns=sandbox.netns())

    def dump(*args):
        reply = sandbox.cli_json("dump", *map(str, args))
        return reply["entries"]

    pcpu = dump(manifest, "pcpu_hits")
    import os

    assert all(len(e["per_cpu"]) == os.cpu_count() for e in pcpu)
    assert all(e["value"] == sum(e["per_cpu"]) for e in pcpu)
    hits = {e["key"]: e["value"] for e in pcpu}[0]
    assert hits > 0
    human = sandbox.cli("dump", manifest, "pcpu_hits").stdout
    assert "per CPU" in human and "sum of CPUs" in human and "null" not in human

    by_source = dump(manifest, "by_source")  # the manifest's metrics label decodes the key
    assert [e["key"] for e in by_source] == ["127.0.0.1"] and by_source[0]["key_raw"] == 0x0100007F
    name = f"{sandbox.id}-fo"
    assert dump(name, "by_source", "--key-decode", "hex")[0]["key"] == "0x100007f"  # by name, decoded as asked

    bss = {e["key"]: e["value"] for e in dump(manifest, ".bss")}
    assert bss == {"packets_seen": hits}  # the same program counts both, once per packet
    data = {e["key"]: e["value"] for e in dump(name, ".data")}
    assert data["bytes_seen_plus_one"] > 1
    assert {e["key"]: e["value"] for e in dump(manifest, "count_sources:.rodata")} == {"count_every": 7}

    proc = sandbox.cli("dump", manifest, "nosuch:.bss", check=False)
    assert proc.returncode == 1 and "has no program 'nosuch'" in proc.stderr
    proc = sandbox.cli("dump", manifest, "pcpu_hits", "--key-decode", "ip4", check=False)
    assert proc.returncode == 1 and "KIND one of" in proc.stderr


# ---------------------------------------------------------------- attachments decide, not SEC()

CALLS = """
import os, signal
for _ in range({n}):
    os.kill(os.getpid(), 0)   # signal 0: a kill() syscall that delivers nothing
    os.getppid()
"""


def test_the_attachment_target_overrides_the_sec_name_and_libraries_go_by_name(sandbox):
    manifest, root = _manifest(sandbox, f"""          loose:
            source: {_source('loose_sections.bpf.c')}""", """
        attachments:
          - program: tracepoint_kill_recorder
            type: tracepoint
            target: syscalls/sys_enter_kill
          - program: uprobe_getppid
            type: uprobe
            binary: libc
            symbol: getppid""")
    plan = sandbox.cli_json("plan", manifest)
    targets = {a["after"]["program"]: a["after"]["target"] for a in plan["actions"] if a["resource"] == "attach"}
    assert targets["tracepoint_kill_recorder"] == "syscalls/sys_enter_kill"
    libc = targets["uprobe_getppid"]
    assert libc.endswith("libc.so.6:getppid+0") and "/lib32/" not in libc  # this machine's ABI, as ld.so picks it
    human = sandbox.cli("plan", manifest).stdout
    assert "-> tracepoint syscalls/sys_enter_kill" in human and "on trace" not in human
    sandbox.cli("apply", manifest)
    sandbox.run_in(CALLS.format(n=25))
    hits = {e["key"]: e["value"] for e in sandbox.cli_json("dump", manifest, "loose_hits")["entries"]}
    assert hits[0] >= 25 and hits[1] >= 25  # system-wide probes: other processes may add to them
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_a_missing_library_or_symbol_is_a_diagnostic_with_its_line(sandbox):
    manifest, root = _manifest(sandbox, f"""          loose:
            source: {_source('loose_sections.bpf.c')}
            programs: {{uprobe_getppid: null}}""", """
        attachments:
          - program: uprobe_getppid
            type: uprobe
            binary: libnosuchlibrary
            symbol: getppid""")
    out = sandbox.cli_json("validate", manifest, check=False)
    d = out["diagnostics"][0]
    assert "library 'libnosuchlibrary' is not in the dynamic linker's cache" in d["message"]
    assert d["path"] == "attachments[0].binary" and d["line"] is not None
    manifest.write_text(manifest.read_text().replace("libnosuchlibrary", "libc").replace("symbol: getppid",
                                                                                         "symbol: no_such_function"))
    out = sandbox.cli_json("plan", manifest, check=False)
    errors = [d for d in out["diagnostics"] if d["severity"] == "error"]
    assert errors and "no_such_function" in errors[0]["message"], out["diagnostics"]
    assert errors[0]["path"].startswith("attachments[0]") and errors[0]["line"] is not None
    assert not root.exists()


def test_sources_with_glibc_headers_build_with_an_empty_stubs_header_on_an_absolute_include_dir(sandbox):
    stubs = sandbox.tmp / "stubs-include"  # absolute, outside the manifest's directory tree
    (stubs / "gnu").mkdir(parents=True)
    (stubs / "gnu" / "stubs-32.h").write_text("")
    src = sandbox.tmp / "glibc_user.bpf.c"
    src.write_text("""
#include <linux/bpf.h>
#include <sys/socket.h>   /* glibc: AF_INET, as real objects include it */
#include <bpf/bpf_helpers.h>
SEC("cgroup/sock_create")
int only_inet(struct bpf_sock *sk) { return sk->family == AF_INET || sk->family == AF_INET6 || 1; }
char _license[] SEC("license") = "GPL";
""")
    manifest, _root = _manifest(sandbox, f"""          glibc:
            source: {src}""")
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1 and "gnu/stubs-32.h" in proc.stderr  # what the reference says happens
    fixed, _root = _manifest(sandbox, f"""          glibc:
            source: {src}
            include_dirs: [{stubs}]""", suffix="fo2")
    sandbox.cli("validate", fixed)


TWO_INGRESS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 2);
} which_ran SEC(".maps");
static __always_inline void bump(__u32 k) { __u64 *v = bpf_map_lookup_elem(&which_ran, &k); if (v) __sync_fetch_and_add(v, 1); }
SEC("cgroup_skb/ingress") int first_counter(struct __sk_buff *skb) { bump(0); return 1; }
SEC("cgroup_skb/ingress") int second_counter(struct __sk_buff *skb) { bump(1); return 1; }
char _license[] SEC("license") = "GPL";
"""


def test_switching_the_program_of_a_named_attachment_is_a_change_not_drift(sandbox):
    src = sandbox.tmp / "two_ingress.bpf.c"
    src.write_text(TWO_INGRESS)
    cgroup = sandbox.cgroup("sw")

    def manifest_for(program: str) -> Path:
        manifest, _root = _manifest(sandbox, f"""          two:
            source: {src}""", f"""
        attachments:
          - name: web-ingress
            program: {program}
            type: ingress
            cgroup: {cgroup}""")
        return manifest

    sandbox.cli("apply", manifest_for("first_counter"))
    manifest = manifest_for("second_counter")
    plan = sandbox.cli_json("plan", manifest)
    action = next(a for a in plan["actions"] if a["address"] == "attach/web-ingress")
    assert action["action"] == "update"
    assert action["reason"] == "the manifest now attaches program 'second_counter' here (instead of 'first_counter')"
    sandbox.cli("apply", manifest)
    from tests.kernel.traffic import ECHO

    sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=sandbox.netns())
    ran = {e["key"]: e["value"] for e in sandbox.cli_json("dump", manifest, "which_ran")["entries"]}
    assert ran[0] == 0 and ran[1] > 0  # the link moved to the second program


def test_plan_verify_refuses_fentry_and_lsm_programs_this_kernel_cannot_load(sandbox):
    manifest, root = _manifest(sandbox, f"""          tools:
            source: {_source('fentry_lsm.bpf.c')}""")
    plain = sandbox.cli_json("plan", manifest, check=False)  # the probe cannot tell (see the reference)
    out = sandbox.cli_json("plan", manifest, "--verify", check=False)
    verdicts = {v["function"]: v for v in out["verification"]["programs"]}
    assert verdicts["tp_unlinkat"]["accepted"] is True
    for function in ("fentry_unlinkat", "lsm_file_open"):
        v = verdicts[function]  # this project's kernel refuses both (KERNEL.md: fentry gives EPERM)
        assert v["accepted"] is False
        assert f"program '{function}' of object 'tools'" in v["message"]
        assert "Operation not permitted" in v["message"] and "fentry/fexit/LSM" in v["message"]
    refused = [f for f, v in verdicts.items() if not v["accepted"]]
    errors = [d for d in out["diagnostics"] if d["severity"] == "error"]
    assert len(errors) == len(refused) + len([d for d in plain["diagnostics"] if d["severity"] == "error"])
    assert not root.exists()
