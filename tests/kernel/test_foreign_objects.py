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
