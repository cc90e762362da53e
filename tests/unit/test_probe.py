"""Feature probe: parsing recorded `bpftool feature probe -j`, requirement checks, the cache.

tests/fixtures/probe/full.json is the real output of `bpftool feature probe -j` (bpftool 7.1,
kernel 6.18.44-fc-v669), recorded as root with

    bpftool feature probe -j > tests/fixtures/probe/full.json

The other files are copies of it with one capability taken away; EDITS below says exactly
which, and a test checks that nothing else differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bpfdeploy import probe
from bpfdeploy.diagnostics import HostError
from bpfdeploy.kernel import runner
from bpfdeploy.probe import HostState, ToolVersions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "probe"
RELEASE = "6.18.44-fc-v669"
BOOT = "5511a474-1bb1-4e8d-86cf-6a89e0d83eeb"
# This machine's facts when full.json was recorded.
HOST = HostState(kernel_release=RELEASE, boot_id=BOOT, btf=True, mounts_read=True, bpffs=("/sys/fs/bpf",),
                 cgroup2="/sys/fs/cgroup/unified", tracefs=None, tracefs_mounts=(),
                 libbpf_tracing_dir="/sys/kernel/tracing", unprivileged_bpf_disabled=2, bpf_jit_enable=1,
                 bpf_stats_enabled=0, pmus=("breakpoint", "msr", "software", "tracepoint", "uprobe"), lsms=None)
EDITS = {  # fixture -> {(section, key): value in the edited copy}
    "no-xdp.json": {("program_types", "have_xdp_prog_type"): False, ("helpers", "xdp_available_helpers"): []},
    "no-sockhash.json": {("map_types", "have_sockhash_map_type"): False},
    "no-btf.json": {("system_config", "CONFIG_DEBUG_INFO_BTF"): None},
}


def raw(name: str = "full.json") -> dict:
    return json.loads((FIXTURES / name).read_text())


def features(name: str = "full.json", host: HostState = HOST, **kw) -> probe.Features:
    return probe.parse_probe((FIXTURES / name).read_text(), host=host, versions=ToolVersions(bpftool="7.1.0"), **kw)


def edited(changes: dict, host: HostState = HOST) -> probe.Features:
    data = raw()
    for (section, key), value in changes.items():
        data[section][key] = value
    return probe.parse_probe(json.dumps(data), host=host, versions=ToolVersions(bpftool="7.1.0"))


def check(f, **kw):
    kw.setdefault("program_types", set())
    kw.setdefault("map_types", set())
    kw.setdefault("attach_types", set())
    kw.setdefault("requires", None)
    return probe.check_requirements(f, **kw)


def errors(diags):
    return [d for d in diags if d.severity == "error"]


# -- the fixtures themselves ------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_every_fixture_parses(path):
    f = probe.parse_probe(path.read_text(), host=HOST)
    assert len(f.program_types_probed) == 31 and len(f.map_types_probed) == 31
    assert f.helpers and f.kernel_config


@pytest.mark.parametrize("name", sorted(EDITS))
def test_edited_fixtures_differ_from_the_recording_only_where_they_say(name):
    full, copy = raw(), raw(name)
    for (section, key), value in EDITS[name].items():
        assert copy[section][key] == value and full[section][key] != value
        copy[section][key] = full[section][key]
    assert copy == full


# -- parsing ------------------------------------------------------------------------------------

def test_recorded_probe_parses_into_features():
    f = features()
    assert f.kernel_release == RELEASE and f.kernel_version == (6, 18, 44)
    for t in ("cgroup_skb", "cgroup_sock_addr", "sock_ops", "sk_msg", "sk_skb", "xdp", "sched_cls", "flow_dissector"):
        assert f.program_type(t) is True, t
    assert f.program_type("lirc_mode2") is False
    assert f.program_type("netfilter") is None  # bpftool 7.1 does not know it: not probed, not "missing"
    assert f.map_type("sockhash") is True and f.map_type("sockmap") is True
    assert f.map_type("arena") is None and f.map_type("cgrp_storage") is None
    assert f.bpf_syscall is True and f.config_readable
    assert f.config("CONFIG_CGROUP_BPF") == (True, "y")
    assert f.config("CONFIG_KPROBE_EVENTS") == (True, None)
    assert f.config("CONFIG_KPROBES") == (False, None)  # not among bpftool's options
    assert dict(f.misc)["bounded_loops"] is True
    assert len(f.helpers_for("xdp")) == 206 and f.helpers_for("lirc_mode2") == ()
    assert f.helpers_for("nonsense") is None


def test_the_bogus_helpers_section_is_flagged_with_its_evidence():
    caveat = features().caveat("helpers")
    assert caveat is not None
    assert "same 206" in caveat.reason and "bpf_sysctl_get_name for xdp" in caveat.reason


def test_helper_lists_that_differ_per_type_are_not_flagged():
    data = raw()
    for key, names in data["helpers"].items():
        if names:
            keep = key.startswith("cgroup_sysctl")
            data["helpers"][key] = [n for n in names if keep or not n.startswith("bpf_sysctl")]
    data["helpers"]["socket_filter_available_helpers"].remove("bpf_msg_redirect_map")
    data["helpers"]["sched_cls_available_helpers"].remove("bpf_sock_ops_cb_flags_set")
    f = probe.parse_probe(json.dumps(data), host=HOST)
    assert f.caveat("helpers") is None


def test_one_impossible_helper_is_enough_to_flag_the_section():
    data = raw()
    for key in data["helpers"]:
        data["helpers"][key] = ["bpf_map_lookup_elem", key]  # all lists differ
    data["helpers"]["xdp_available_helpers"].append("bpf_sysctl_get_name")
    caveat = probe.parse_probe(json.dumps(data), host=HOST).caveat("helpers")
    assert caveat is not None and "same" not in caveat.reason and "bpf_sysctl_get_name for xdp" in caveat.reason


def test_btf_type_probes_are_flagged_only_when_they_can_be_wrong():
    f = features()
    assert {c.subject for c in f.unreliable} == {"helpers", "program_types.tracing", "program_types.ext",
                                                 "program_types.lsm"}
    # Without BTF the kernel really cannot load these types: no caveat.
    assert features("no-btf.json", host=HostState(kernel_release=RELEASE)).caveat("program_types.tracing") is None
    # A probe that says yes is not doubted.
    assert edited({("program_types", "have_tracing_prog_type"): True}).caveat("program_types.tracing") is None


def test_btf_comes_from_the_host_and_from_the_config_for_a_bare_recording():
    assert features().btf is True
    assert features("no-btf.json", host=HostState()).btf is False
    assert features("full.json", host=HostState()).btf is True
    assert features("no-btf.json", host=HOST).btf is True  # the host's /sys/kernel/btf/vmlinux wins


def test_attach_notes_say_what_bpftool_cannot():
    f = features()
    kprobe = f.attach_note("kprobe")
    assert kprobe.available is False and "CONFIG_KPROBE_EVENTS is not set" in kprobe.evidence
    assert f.attach_note("uprobe").available is True
    assert f.attach_note("tracepoint").available is False  # tracefs not mounted
    assert f.attach_note("fentry").available is None
    assert f.attach_note("lsm").available is None
    with_pmu = features(host=HostState(kernel_release=RELEASE, pmus=("kprobe", "tracepoint"), mounts_read=True,
                                       tracefs="/sys/kernel/tracing", tracefs_mounts=("/sys/kernel/tracing",),
                                       libbpf_tracing_dir="/sys/kernel/tracing", lsms=("lockdown", "capability")))
    assert with_pmu.attach_note("kprobe").available is True
    assert with_pmu.attach_note("tracepoint").available is True
    assert with_pmu.attach_note("lsm").available is False  # bpf not among the active LSMs


def test_tracepoint_attach_needs_tracefs_where_libbpf_looks():
    def note(**kw):
        host = HostState(kernel_release=RELEASE, mounts_read=True, **kw)
        return features(host=host).attach_note("tracepoint")

    assert note(libbpf_tracing_dir="/sys/kernel/tracing", tracefs_mounts=("/sys/kernel/tracing",)).available is True
    elsewhere = note(libbpf_tracing_dir="/sys/kernel/tracing", tracefs_mounts=("/mnt/trace",))
    assert elsewhere.available is False and "/mnt/trace" in elsewhere.evidence
    assert note(libbpf_tracing_dir="/sys/kernel/debug/tracing").available is None  # debugfs automount: unchecked


def test_unreadable_config_makes_every_option_unknown():
    data = raw()
    for key in data["system_config"]:
        if key.startswith("CONFIG_"):
            data["system_config"][key] = None
    f = probe.parse_probe(json.dumps(data), host=HOST)
    assert not f.config_readable and f.caveat("config") is not None
    assert f.config("CONFIG_CGROUP_BPF") == (False, None)
    diags = check(f, requires={"config": ["CONFIG_CGROUP_BPF"]})
    assert [d.severity for d in diags] == ["warning"]


def test_bpftool_error_is_a_host_error():
    with pytest.raises(HostError, match="missing CAP_SYS_ADMIN"):
        probe.parse_probe('{"error":"missing CAP_SYS_ADMIN, CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"}')


def test_json_view_keeps_unknown_apart_from_missing():
    j = features().to_json()
    assert j["format"] == probe.PROBE_FORMAT
    assert j["program_types"]["xdp"] is True and j["program_types"]["lirc_mode2"] is False
    assert j["program_types"]["netfilter"] is None and j["map_types"]["arena"] is None
    assert "helpers" in {c["subject"] for c in j["unreliable"]}
    json.dumps(j)  # serialisable
    only = probe.features_json(features(), helpers="xdp")
    assert set(only["helpers"]) == {"xdp"} and [c["subject"] for c in only["unreliable"]] == ["helpers"]
    assert "program_types" not in only


# -- kernel versions -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, version", [
    ("6.18.44-fc-v669", (6, 18, 44)), ("6.6", (6, 6)), ("5.15.0-91-generic", (5, 15, 0)), ("6.1-rc3", (6, 1)),
    ("4.19.0", (4, 19, 0)), ("six", None), ("", None), ("6", None),
])
def test_parse_kernel_version(text, version):
    assert probe.parse_kernel_version(text) == version


@pytest.mark.parametrize("minimum, ok", [
    ("6.6", True), ("6.18", True), ("6.18.44", True), ("6.18.45", False), ("6.19", False), ("6.9", True),
    ("6.10", True), ("7.0", False), ("5.4.0", True), ("bogus", None),
])
def test_kernel_at_least(minimum, ok):
    assert probe.kernel_at_least(RELEASE, minimum) is ok


def test_kernel_comparison_is_numeric_not_textual():
    assert probe.kernel_at_least("6.9.0", "6.10") is False
    assert probe.kernel_at_least("6.10.2", "6.9") is True
    assert probe.kernel_at_least("6.18-rc1", "6.18.0") is True  # missing parts count as 0


# -- requirement checks --------------------------------------------------------------------------

def test_everything_this_machine_has_passes():
    f = features()
    diags = check(f, program_types={"cgroup_skb", "sock_ops", "sk_msg", "xdp"}, map_types={"hash", "sockhash"},
                  attach_types={"cgroup_inet_ingress", "sk_msg_verdict", "flow_dissector", "stream_parser"},
                  requires={"program_types": ["sk_skb"], "map_types": ["array"], "attach_types": ["connect4"],
                            "kernel": "6.6", "btf": True, "config": ["CONFIG_CGROUP_BPF", "BPF_STREAM_PARSER"]})
    assert diags == []


def test_missing_program_type_implied():
    diags = check(features("no-xdp.json"), program_types={"xdp", "cgroup_skb"})
    assert len(diags) == 1
    d = diags[0]
    assert d.severity == "error" and d.path == ""
    assert d.message == ("program type xdp is needed (by the manifest) but bpftool feature probe reports it "
                         f"unavailable on kernel {RELEASE}")


def test_missing_program_type_declared_and_implied_is_one_diagnostic():
    diags = check(features("no-xdp.json"), program_types={"xdp"}, requires={"program_types": ["xdp"]}, file="m.yaml")
    assert len(diags) == 1
    assert diags[0].path == "requires.program_types" and diags[0].file == "m.yaml"
    assert "by the manifest" in diags[0].message and "declared in requires.program_types" in diags[0].message


def test_missing_map_type():
    f = features("no-sockhash.json")
    assert check(features(), map_types={"sockhash"}) == []
    diags = check(f, map_types={"sockhash"}, requires={"map_types": ["sockhash", "hash"]})
    assert len(diags) == 1 and diags[0].path == "requires.map_types"
    assert diags[0].message.startswith("map type sockhash is needed (by the manifest; declared in requires.map_types)")


def test_sockmap_attach_needs_some_sockmap_type_but_reports_the_target_map_once():
    f = features("no-sockhash.json")
    # The manifest's own sockhash is what is missing: one diagnostic, about the map type.
    diags = check(f, map_types={"sockhash"}, attach_types={"sk_msg_verdict"})
    assert [d.message.split(" is needed")[0] for d in diags] == ["map type sockhash"]
    # An attach type declared alone only needs one of them, and sockmap is there.
    assert check(f, requires={"attach_types": ["sk_msg_verdict"]}) == []
    neither = edited({("map_types", "have_sockhash_map_type"): False, ("map_types", "have_sockmap_map_type"): False})
    diags = check(neither, requires={"attach_types": ["msg_verdict"]})
    assert len(diags) == 1 and "sockmap or sockhash" in diags[0].message
    assert diags[0].path == "requires.attach_types"
    # With both gone, a manifest using a sockhash still hears about its sockhash once, not twice.
    diags = check(neither, map_types={"sockhash"}, attach_types={"sk_msg_verdict"})
    assert [d.message.split(" is needed")[0] for d in diags] == ["map type sockhash"]


def test_attach_type_needs_its_program_type():
    diags = check(features("no-xdp.json"), requires={"attach_types": ["cgroup_inet_ingress"]})
    assert diags == []
    f = edited({("program_types", "have_sk_skb_prog_type"): False})
    diags = check(f, attach_types={"sk_skb_stream_verdict"})
    assert len(diags) == 1
    assert diags[0].message.startswith("program type sk_skb is needed (by attach type sk_skb_stream_verdict)")
    assert diags[0].path == ""


def test_stream_parser_needs_config_bpf_stream_parser():
    f = edited({("system_config", "CONFIG_BPF_STREAM_PARSER"): None})
    diags = check(f, attach_types={"sk_skb_stream_parser"})
    assert len(diags) == 1 and "CONFIG_BPF_STREAM_PARSER" in diags[0].message and "not set" in diags[0].message
    assert check(f, attach_types={"sk_skb_stream_verdict"}) == []  # only the parser needs it


def test_cgroup_attach_needs_cgroup2_and_cgroup_bpf():
    no_mount = HostState(kernel_release=RELEASE, mounts_read=True, bpffs=("/sys/fs/bpf",), cgroup2=None)
    diags = check(features(host=no_mount), attach_types={"cgroup_inet_egress"})
    assert len(diags) == 1 and "cgroup v2 mount" in diags[0].message and diags[0].severity == "error"
    # Mounts not looked at: say so, do not claim either way.
    diags = check(features(host=HostState(kernel_release=RELEASE)), attach_types={"cgroup_inet_egress"})
    assert [d.severity for d in diags] == ["warning"]
    f = edited({("system_config", "CONFIG_CGROUP_BPF"): None})
    diags = check(f, attach_types={"cgroup_inet_egress", "cgroup_sock_ops"})
    assert len(diags) == 1 and "CONFIG_CGROUP_BPF" in diags[0].message  # one capability, one diagnostic


def _needs_hook(name):
    from bpfdeploy import hooks

    return pytest.mark.skipif(hooks.attach_type(name) is None, reason=f"hooks.py has no {name} attach type")


@_needs_hook("kprobe")
def test_kprobe_attach_is_impossible_without_the_kprobe_pmu():
    diags = check(features(), attach_types={"kprobe"})
    assert [d.severity for d in diags] == ["error"]
    assert "kprobe attachments are needed (by attach type kprobe) but are impossible" in diags[0].message
    assert "no kprobe PMU" in diags[0].message
    with_pmu = HostState(**{**{f: getattr(HOST, f) for f in HOST.__slots__}, "pmus": ("kprobe", "uprobe")})
    assert check(features(host=with_pmu), attach_types={"kprobe", "kretprobe"}) == []
    assert check(features(), attach_types={"uprobe", "uretprobe"}) == []


@_needs_hook("tracepoint")
def test_tracepoint_attach_without_tracefs_is_a_warning():
    diags = check(features(), attach_types={"tracepoint"})
    assert [d.severity for d in diags] == ["warning"] and "mount -t tracefs" in diags[0].message
    mounted = HostState(**{**{f: getattr(HOST, f) for f in HOST.__slots__},
                           "tracefs": "/sys/kernel/tracing", "tracefs_mounts": ("/sys/kernel/tracing",)})
    assert check(features(host=mounted), attach_types={"tracepoint"}) == []


@_needs_hook("tc_ingress")
def test_tc_filters_need_cls_bpf_clsact_and_the_tc_command():
    with_tc = probe.parse_probe((FIXTURES / "full.json").read_text(), host=HOST,
                                versions=ToolVersions(bpftool="7.1.0", iproute2="6.1.0"))
    assert check(with_tc, program_types={"sched_cls"}, attach_types={"tc_ingress", "tc_egress"}) == []
    diags = check(features(), attach_types={"tc_ingress"})  # no tc found
    assert [d.message.split(" is needed")[0] for d in diags] == ["the tc command (iproute2)"]
    no_cls = edited({("system_config", "CONFIG_NET_CLS_BPF"): None})
    assert any("CONFIG_NET_CLS_BPF" in d.message for d in errors(check(no_cls, attach_types={"tc_ingress"})))


@_needs_hook("tc_ingress")
def test_attach_types_open_to_several_program_types_need_only_one():
    # raw_tracepoint takes raw_tracepoint or raw_tracepoint_writable programs.
    neither = edited({("program_types", "have_raw_tracepoint_prog_type"): False,
                      ("program_types", "have_raw_tracepoint_writable_prog_type"): False})
    messages = [d.message for d in errors(check(neither, requires={"attach_types": ["raw_tracepoint"]}))]
    assert any(m.startswith("program type raw_tracepoint or raw_tracepoint_writable is needed") for m in messages)
    only_writable = edited({("program_types", "have_raw_tracepoint_prog_type"): False})
    assert not any("raw_tracepoint or raw_tracepoint_writable" in d.message
                   for d in check(only_writable, requires={"attach_types": ["raw_tracepoint"]}))
    # The manifest's own program is reported once, by its type.
    diags = check(neither, program_types={"raw_tracepoint"}, attach_types={"raw_tracepoint"})
    assert [d.message.split(" is needed")[0] for d in errors(diags)][:1] == ["program type raw_tracepoint"]
    assert not any("raw_tracepoint or raw_tracepoint_writable" in d.message for d in diags)


@_needs_hook("tcx_ingress")
def test_tcx_on_an_older_kernel_is_a_warning():
    assert check(features(), attach_types={"tcx_ingress"}) == []
    old = HostState(**{**{f: getattr(HOST, f) for f in HOST.__slots__}, "kernel_release": "6.1.0-18-amd64"})
    diags = check(features(host=old), attach_types={"tcx_ingress"})
    assert [d.severity for d in diags] == ["warning"] and "6.6" in diags[0].message


@_needs_hook("tp_btf")
def test_btf_tracing_hooks_need_btf():
    bare = HostState(kernel_release=RELEASE, mounts_read=True)
    diags = check(features("no-btf.json", host=bare), attach_types={"tp_btf"}, requires={"btf": True})
    btf = [d for d in diags if "BTF is needed" in d.message]
    assert len(btf) == 1 and btf[0].path == "requires.btf" and "by attach type tp_btf" in btf[0].message


def test_unknown_declared_names_are_errors():
    diags = check(features(), requires={"program_types": ["xdpp"], "map_types": ["hashh"], "attach_types": ["nope"]})
    assert len(errors(diags)) == 3
    assert {d.path for d in diags} == {"requires.program_types", "requires.map_types", "requires.attach_types"}


def test_types_bpftool_does_not_probe_are_warnings_not_errors():
    diags = check(features(), program_types={"netfilter"}, map_types={"arena"})
    assert [d.severity for d in diags] == ["warning", "warning"]
    assert "bpftool 7.1.0 does not probe it" in diags[0].message


def test_unreliable_program_type_is_a_warning_with_the_reason():
    diags = check(features(), program_types={"tracing"})
    assert len(diags) == 1 and diags[0].severity == "warning"
    assert "unreliable" in diags[0].message and "tp_btf" in diags[0].hint
    # Without the caveat (no BTF) the same answer is an error.
    diags = check(features("no-btf.json", host=HostState(kernel_release=RELEASE)), program_types={"tracing"})
    assert [d.severity for d in diags] == ["error"]


def test_requires_kernel():
    f = features()
    assert check(f, requires={"kernel": "6.6"}) == []
    diags = check(f, requires={"kernel": "6.19"})
    assert len(diags) == 1 and diags[0].path == "requires.kernel"
    assert diags[0].message == ("kernel 6.19 or newer is needed (declared in requires.kernel) but this host runs "
                                f"{RELEASE}")
    diags = check(f, requires={"kernel": 6.1})  # YAML `kernel: 6.10` arrives as the float 6.1
    assert len(errors(diags)) == 1 and "quoted" in diags[0].message
    assert len(errors(check(f, requires={"kernel": "latest"}))) == 1


def test_requires_btf():
    assert check(features(), requires={"btf": True}) == []
    bare = HostState(kernel_release=RELEASE)
    diags = check(features("no-btf.json", host=bare), requires={"btf": True})
    assert len(diags) == 1 and diags[0].path == "requires.btf" and "/sys/kernel/btf/vmlinux" in diags[0].message
    assert check(features("no-btf.json", host=bare), requires={"btf": False}) == []


def test_requires_config():
    f = features()
    diags = check(f, requires={"config": ["CONFIG_NET_ACT_BPF", "CONFIG_KPROBES", "NET_CLS_BPF"]})
    by_option = {d.message.split()[2]: d for d in diags}
    assert set(by_option) == {"CONFIG_NET_ACT_BPF", "CONFIG_KPROBES"}
    assert by_option["CONFIG_NET_ACT_BPF"].severity == "error"
    assert by_option["CONFIG_KPROBES"].severity == "warning"  # bpftool does not print it: cannot tell
    full = features(full_config={"CONFIG_NET_CLS_BPF": "y", "CONFIG_CGROUP_BPF": "y"})
    diags = check(full, requires={"config": ["CONFIG_KPROBES", "CONFIG_NET_CLS_BPF"]})
    assert [(d.severity, "not set" in d.message) for d in diags] == [("error", True)]


def test_implied_requirements_from_a_desired_state():
    from bpfdeploy import hooks

    desired = SimpleNamespace(
        programs=[SimpleNamespace(prog_type="sock_ops"), SimpleNamespace(prog_type="sk_msg")],
        maps=[SimpleNamespace(geometry=SimpleNamespace(type=18)), SimpleNamespace(geometry=SimpleNamespace(type=1))],
        attachments=[SimpleNamespace(attach_type=hooks.attach_type("sock_ops")),
                     SimpleNamespace(attach_type=hooks.attach_type("msg_verdict"))])
    assert probe.implied_requirements(desired) == ({"sock_ops", "sk_msg"}, {"sockhash", "hash"},
                                                   {"cgroup_sock_ops", "sk_msg_verdict"})


# -- the cache, with a fake runner ---------------------------------------------------------------

class FakeRunner:
    """Answers the probe's commands from recordings; fails on any command it does not expect."""

    def __init__(self, probe_json: str):
        self.answers = {
            ("bpftool", "feature", "probe", "-j"): probe_json,
            ("bpftool", "version", "-j"): '{"version":"7.1.0","libbpf_version":"1.1"}',
            ("clang", "--version"): "Debian clang version 14.0.6\nTarget: x86_64-pc-linux-gnu\n",
            ("tc", "-V"): "tc utility, iproute2-6.1.0, libbpf 1.1.2\n",
        }
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv, *, input=None, timeout=120):
        argv = tuple(argv)
        self.calls.append(argv)
        if argv not in self.answers:
            raise AssertionError(f"unexpected command {argv}")
        out = self.answers[argv]
        rc = 255 if out.startswith('{"error"') else 0
        return runner.Result(argv, rc, out, "")

    def probes(self) -> int:
        return self.calls.count(("bpftool", "feature", "probe", "-j"))


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake runner, fake tool binaries (their stat is the cache key) and controllable host facts."""
    fake = FakeRunner((FIXTURES / "full.json").read_text())
    monkeypatch.setattr(runner, "run", fake.run)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bpftool", "clang", "tc"):
        (bindir / tool).write_text(f"#!/bin/sh\n# fake {tool}\n")
    monkeypatch.setattr(probe.runner, "which", lambda name: str(bindir / name) if (bindir / name).exists() else None)
    monkeypatch.setattr(probe, "_system_libbpf", lambda: ("1.1.2", None))
    fake.host = HOST
    monkeypatch.setattr(probe, "read_host_state", lambda: fake.host)
    fake.bindir = bindir
    return fake


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "probe-cache"


def test_second_call_runs_no_bpftool(fake, tmp_path):
    cache = tmp_path / "probe-cache"
    first = probe.probe_features(cache)
    assert fake.probes() == 1 and not first.from_cache
    assert sorted(fake.calls) == sorted(fake.answers)  # and nothing else
    assert first.versions == ToolVersions("7.1.0", "1.1", "1.1.2", "14.0.6", "6.1.0")
    fake.calls.clear()
    second = probe.probe_features(cache)
    assert fake.calls == []  # no process at all
    assert second.from_cache
    assert second.program_types == first.program_types and second.versions == first.versions
    assert second.probed_at == first.probed_at
    assert second.to_json()["helpers"] == first.to_json()["helpers"]


def test_cache_file_is_named_by_boot_and_bpftool_and_written_atomically(fake, tmp_path):
    cache = tmp_path / "c"
    probe.probe_features(cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].startswith(BOOT + "-") and files[0].endswith(".json")
    record = json.loads((cache / files[0]).read_text())
    assert record["format"] == probe.CACHE_FORMAT and record["boot_id"] == BOOT
    assert record["raw"] == raw() and record["versions"]["bpftool"] == "7.1.0"


def test_refresh_probes_again(fake, cache):
    probe.probe_features(cache)
    again = probe.probe_features(cache, refresh=True)
    assert fake.probes() == 2 and not again.from_cache
    probe.probe_features(cache)
    assert fake.probes() == 2


def test_a_new_boot_probes_again_and_drops_the_old_boots_file(fake, cache):
    probe.probe_features(cache)
    (cache / "unrelated.json").write_text("{}")  # not ours by name: left alone
    fake.host = HostState(**{**{f: getattr(HOST, f) for f in HOST.__slots__},
                             "boot_id": "0b7a8d1e-0000-4000-8000-000000000001"})
    f = probe.probe_features(cache)
    assert fake.probes() == 2 and not f.from_cache and f.boot_id.startswith("0b7a8d1e")
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and "unrelated.json" in names
    assert not any(n.startswith(BOOT) for n in names)


def test_a_different_bpftool_binary_probes_again(fake, cache):
    probe.probe_features(cache)
    (fake.bindir / "bpftool").write_text("#!/bin/sh\n# upgraded bpftool, another size\n")
    probe.probe_features(cache)
    assert fake.probes() == 2


def test_an_upgraded_clang_probes_again(fake, cache):
    probe.probe_features(cache)
    st = (fake.bindir / "clang").stat()
    os.utime(fake.bindir / "clang", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    probe.probe_features(cache)
    assert fake.probes() == 2


def test_a_corrupt_cache_file_is_replaced(fake, cache):
    probe.probe_features(cache)
    (path,) = cache.iterdir()
    path.write_text('{"format": "bpfdeploy-probe-cache-1", "raw": ')
    f = probe.probe_features(cache)
    assert fake.probes() == 2 and not f.from_cache
    assert json.loads(path.read_text())["boot_id"] == BOOT


def test_cached_probe_reads_mounts_and_sysctls_afresh(fake, cache):
    assert probe.probe_features(cache).tracefs is None
    fake.host = HostState(**{**{f: getattr(HOST, f) for f in HOST.__slots__},
                             "tracefs": "/sys/kernel/tracing", "tracefs_mounts": ("/sys/kernel/tracing",),
                             "bpf_stats_enabled": 1})
    f = probe.probe_features(cache)
    assert f.from_cache and f.tracefs == "/sys/kernel/tracing" and f.bpf_stats_enabled == 1
    assert f.attach_note("tracepoint").available is True


def test_cache_directory_defaults(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "build-cache"))
    monkeypatch.delenv("BPFDEPLOY_PROBE_CACHE", raising=False)
    assert probe.default_cache_dir() == tmp_path / "build-cache" / "probe"
    probe.probe_features()
    assert len(list((tmp_path / "build-cache" / "probe").iterdir())) == 1
    monkeypatch.setenv("BPFDEPLOY_PROBE_CACHE", str(tmp_path / "elsewhere"))
    probe.probe_features()
    assert fake.probes() == 2 and len(list((tmp_path / "elsewhere").iterdir())) == 1


def test_unwritable_cache_still_probes(fake, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    f = probe.probe_features(blocker / "probe")
    assert f.program_type("xdp") is True and fake.probes() == 1


def test_failed_probe_raises_and_caches_nothing(fake, tmp_path):
    fake.answers[("bpftool", "feature", "probe", "-j")] = '{"error":"missing CAP_SYS_ADMIN, CAP_BPF"}'
    with pytest.raises(HostError, match="missing CAP_SYS_ADMIN"):
        probe.probe_features(tmp_path / "c")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_missing_bpftool_is_a_host_error(fake, cache):
    (fake.bindir / "bpftool").unlink()
    with pytest.raises(HostError, match="bpftool is not installed"):
        probe.probe_features(cache)
    assert fake.calls == []


def test_full_config_is_read_only_when_asked(fake, cache, monkeypatch):
    reads = []
    monkeypatch.setattr(probe, "read_kernel_config", lambda release=None: reads.append(release) or {"CONFIG_X": "y"})
    assert probe.probe_features(cache).full_config is None and reads == []
    f = probe.probe_features(cache, full_config=True)
    assert reads == [RELEASE] and f.config("CONFIG_X") == (True, "y") and f.config("CONFIG_Y") == (True, None)


# -- rendering --------------------------------------------------------------------------------

def _render(fn, *args, **kw) -> str:
    from rich.console import Console

    console = Console(record=True, width=160, color_system=None, force_terminal=False)
    fn(*args, console=console, **kw)
    return console.export_text()


def test_human_view_marks_and_groups():
    from bpfdeploy.render import probe as render

    text = _render(render.render_features, features())
    for heading in ("System configuration", "Program types", "Map types", "Kernel configuration", "Attaching"):
        assert heading in text
    for group in ("tracing", "networking: XDP", "networking: tc", "networking: socket", "cgroup", "others"):
        assert group in text
    row = next(line for line in text.splitlines() if " lirc_mode2 " in line)
    assert "no" in row
    row = next(line for line in text.splitlines() if " netfilter " in line)
    assert "not probed" in row
    assert "unreliable: helpers" in text and "unreliable: program_types.tracing" in text


def test_helpers_view_leads_with_the_warning():
    from bpfdeploy.render import probe as render

    text = _render(render.render_features, features(), helpers="xdp")
    assert text.index("not reliable") < text.index("bpf_map_lookup_elem")
    assert "Program types" not in text


def test_filters_show_only_their_part():
    from bpfdeploy.render import probe as render

    text = _render(render.render_features, features(), map_types=True)
    assert "Map types" in text and "Program types" not in text and "System configuration" not in text
    text = _render(render.render_features, features(), config=True)
    assert "System configuration" in text and "Kernel configuration" in text and "Map types" not in text


def test_check_view():
    from bpfdeploy.render import probe as render

    f = features("no-xdp.json")
    text = _render(render.render_check, check(f, program_types={"xdp"}), file="m.yaml", features=f)
    assert "program type xdp is needed" in text and "does not fit" in text and "1 missing" in text
    text = _render(render.render_check, [], file="m.yaml", features=f)
    assert "fits" in text and "does not fit" not in text
