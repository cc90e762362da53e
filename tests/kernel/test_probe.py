"""The real feature probe on this kernel, and its real cache (root only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bpfdeploy import probe
from bpfdeploy.kernel import runner

PROBE = ("bpftool", "feature", "probe", "-j")


@pytest.fixture
def cache(kernel_ready, tmp_path):
    return tmp_path / "probe-cache"


def test_real_probe_finds_what_the_examples_use(cache):
    before = len(runner.calls)
    f = probe.probe_features(cache)
    assert runner.calls[before:].count(PROBE) == 1 and not f.from_cache
    for t in ("cgroup_skb", "cgroup_sock_addr", "sock_ops", "sk_msg", "sk_skb", "flow_dissector"):
        assert f.program_type(t) is True, t
    for t in ("hash", "array", "sockmap", "sockhash"):
        assert f.map_type(t) is True, t
    assert f.bpf_syscall is True and f.btf is True and f.cgroup2_mounted
    assert f.kernel_release == __import__("os").uname().release
    assert f.versions.bpftool and f.versions.libbpf and f.versions.clang
    # No requirement of the bundled examples' kind is reported missing here.
    assert probe.check_requirements(
        f, program_types={"cgroup_skb", "sock_ops", "sk_msg"}, map_types={"sockhash", "hash"},
        attach_types={"cgroup_inet_ingress", "cgroup_sock_ops", "sk_msg_verdict"},
        requires={"btf": True, "kernel": "5.10"}) == []


def _kernel_refuses_helper_for_xdp(helper_id: int) -> str:
    """Ground truth without bpftool: load `call helper; r0 = 0; exit` as XDP, return the verifier log."""
    import ctypes
    import os
    import platform
    import struct

    if platform.machine() != "x86_64":
        pytest.skip("the raw bpf(2) call below uses x86_64's syscall number")
    libc = ctypes.CDLL(None, use_errno=True)
    insns = b"".join(struct.pack("<BBhi", code, 0, 0, imm) for code, imm in ((0x85, helper_id), (0xB7, 0), (0x95, 0)))
    prog, lic = ctypes.create_string_buffer(insns), ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQ", 6, 3, ctypes.addressof(prog), ctypes.addressof(lic), 1, len(log),
                       ctypes.addressof(log)).ljust(144, b"\0")
    fd = libc.syscall(321, 5, ctypes.create_string_buffer(attr), 144)  # bpf(BPF_PROG_LOAD, ...)
    if fd >= 0:
        os.close(fd)
        return ""
    return log.value.decode(errors="replace")


def test_helpers_caveat_matches_what_the_kernel_says(cache):
    f = probe.probe_features(cache)
    log = _kernel_refuses_helper_for_xdp(101)  # bpf_sysctl_get_name: cgroup_sysctl only
    assert "bpf_sysctl_get_name" in log and ("cannot use helper" in log or "unknown func" in log), log
    listed = "bpf_sysctl_get_name" in (f.helpers_for("xdp") or ())
    # bpftool's list disagrees with the kernel exactly when the data says it is unreliable.
    assert (f.caveat("helpers") is not None) == (listed or len({frozenset(h) for _t, h in f.helpers if h}) == 1)
    if listed:
        assert "bpf_sysctl_get_name for xdp" in f.caveat("helpers").reason


def test_second_call_runs_no_bpftool(cache):
    probe.probe_features(cache)
    before = len(runner.calls)
    f = probe.probe_features(cache)
    assert runner.calls[before:] == [] and f.from_cache


def test_refresh_probes_again(cache):
    probe.probe_features(cache)
    before = len(runner.calls)
    f = probe.probe_features(cache, refresh=True)
    assert runner.calls[before:].count(PROBE) == 1 and not f.from_cache


def test_another_boot_id_probes_again(cache, monkeypatch):
    first = probe.probe_features(cache)
    real = probe.read_host_state

    def other_boot():
        from bpfdeploy.model.frozen import replace

        return replace(real(), boot_id="00000000-0000-4000-8000-000000000000")

    monkeypatch.setattr(probe, "read_host_state", other_boot)
    before = len(runner.calls)
    f = probe.probe_features(cache)
    assert runner.calls[before:].count(PROBE) == 1 and not f.from_cache
    assert f.program_types == first.program_types
    assert [p.name.startswith("00000000-") for p in cache.iterdir()] == [True]  # the old boot's file is gone


def test_cached_probe_in_a_fresh_process_starts_no_process(cache):
    probe.probe_features(cache)
    code = ("import json, sys; from pathlib import Path; from bpfdeploy import probe; "
            "from bpfdeploy.kernel import runner; f = probe.probe_features(Path(sys.argv[1])); "
            "print(json.dumps({'calls': runner.calls, 'cached': f.from_cache}))")
    proc = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == {"calls": [], "cached": True}
