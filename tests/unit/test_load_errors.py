"""Load and open failures are blamed on the item libbpf names (recorded libbpf messages)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bpfdeploy.diagnostics import KernelError
from bpfdeploy.kernel.libbpf import ObjectMap
from bpfdeploy.load_errors import (FailureKind, bad_map_definitions, explain, load_failure_message, name_in_log,
                                   open_failure_message, source_line, verifier_tail)

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "libbpf"


def _log(name: str) -> str:
    return (LOGS / name).read_text()


@pytest.mark.parametrize("log, kind, item_kind, item", [
    ("legacy_maps.log", FailureKind.LEGACY_MAPS, "", ""),
    ("static_entry.log", FailureKind.STATIC_PROGRAM, "program", "xdp_static_pass"),
    ("cilium_ringbuf.log", FailureKind.MAP_CREATE, "map", "events"),
    ("zero_sized_map.log", FailureKind.MAP_CREATE, "map", "zz_unsized"),
    ("verifier_reject.log", FailureKind.PROGRAM_LOAD, "program", "xdp_unchecked_read"),
    ("fentry_eperm.log", FailureKind.PROGRAM_LOAD, "program", "on_unlink"),
])
def test_each_recorded_failure_names_its_culprit(log, kind, item_kind, item):
    failure = explain(_log(log))
    assert (failure.kind, failure.item_kind, failure.item) == (kind, item_kind, item)


def test_unknown_messages_blame_nothing():
    assert explain("libbpf: something new\n").kind is FailureKind.OTHER
    assert explain("").item == ""


def test_the_verifier_source_line_is_the_last_one_before_the_error():
    assert source_line(_log("verifier_reject.log")) == "three_xdp.bpf.c:29"
    assert source_line("0: (b7) r0 = 0\ninvalid insn\n") == ""  # no BTF line info


def test_verifier_tail_drops_the_statistics_line():
    tail = verifier_tail(_log("verifier_reject.log"), lines=3)
    assert tail.splitlines()[-1].strip() == "R1 offset is outside of the packet"
    assert "processed" not in tail


def test_load_message_names_program_object_source_and_line():
    exc = KernelError("loading x.o failed", 13, _log("verifier_reject.log"))
    failure, message = load_failure_message("tutorial", "bpf/three_xdp.bpf.c", exc)
    assert failure.item == "xdp_unchecked_read"
    assert message.startswith("program 'xdp_unchecked_read' of object 'tutorial' (bpf/three_xdp.bpf.c) "
                              "failed to load at three_xdp.bpf.c:29: the verifier refused it")


def test_map_message_names_the_map():
    _f, message = load_failure_message("sized", "z.bpf.c", KernelError("x", 22, _log("zero_sized_map.log")))
    assert message == "map 'zz_unsized' of object 'sized' (z.bpf.c) could not be created: Invalid argument (errno 22)"


def test_open_message_for_legacy_maps_and_static_programs():
    message, hint = open_failure_message("leg", "legacy_maps.bpf.c", KernelError("x", 95, _log("legacy_maps.log")))
    assert message.startswith("object 'leg' (legacy_maps.bpf.c) cannot be opened: its maps are declared the legacy way")
    assert hint.startswith("libbpf said: elf: legacy map definitions")
    message, _hint = open_failure_message("v", "s.bpf.c", KernelError("x", 95, _log("static_entry.log")))
    assert "program 'xdp_static_pass' is a static function" in message


def test_cache_file_names_in_libbpf_messages_become_the_source():
    digest = "/var/cache/bpfdeploy/objects/" + "a" * 64 + ".o"
    log = f"libbpf: failed to load object '{digest}'"
    assert name_in_log(log, digest, "bpf/x.bpf.c") == "libbpf: failed to load object 'bpf/x.bpf.c'"


def _map(name, type_, key, value, internal=False):
    return ObjectMap(name, type_, key, value, 1, 0, internal)


def test_ringbuf_and_perf_array_definitions_the_kernel_refuses():
    maps = [_map("events", 27, 0, 16), _map("rb_ok", 27, 0, 0), _map("perf", 4, 4, 16), _map("perf_ok", 4, 4, 4),
            _map("perf_unsized", 4, 0, 0), _map("plain", 2, 4, 8), _map(".bss", 2, 4, 16, internal=True)]
    bad = dict(bad_map_definitions(maps))
    assert set(bad) == {"events", "perf"}
    assert "ringbuf with a key or value type" in bad["events"]
    assert "4-byte keys and values" in bad["perf"]
