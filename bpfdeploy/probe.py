"""What this host can run: the feature probe, its cache, and the manifest's requirement checks.

The expensive part is ``bpftool feature probe -j`` (about 50 ms and thousands of program
loads in the kernel). It is cached in one JSON file per (boot id, bpftool binary), together
with the versions of the tools, which cost a clang process to read. Everything that can
change while the machine runs (mounts, sysctls, BTF, perf PMUs) is cheap to read and is read
again on every call, so a cached probe never reports a stale mount.

Known limits of bpftool 7.1 that the data says out loud (``Features.unreliable``):

* its helper probe counts a helper as usable whenever the verifier's refusal is not one of
  the messages libbpf 1.1 knows; newer kernels refuse with "program of this type cannot use
  helper" (checked on 6.18 with a raw BPF_PROG_LOAD of an xdp program calling
  bpf_sysctl_get_name), so every program type lists every helper;
* its tracing, lsm and ext probes expect one particular verifier message; any other refusal
  (EPERM from a security policy, for instance) reads as "type unavailable", although tp_btf
  and iter programs of type tracing may load fine;
* it does not know program or map types newer than itself (netfilter, cgrp_storage, arena):
  those are "not probed" (None), never "unavailable".

Nothing here imports rich; ``bpfdeploy.render.probe`` draws the tables.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

from bpfdeploy.diagnostics import Diagnostic, HostError
from bpfdeploy.kernel import runner
from bpfdeploy.model.frozen import field, frozen

PROBE_FORMAT = "bpfdeploy-probe-1"  # the JSON view (Features.to_json)
CACHE_FORMAT = "bpfdeploy-probe-cache-1"  # the cache file
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PMU_DIR = Path("/sys/bus/event_source/devices")
LSM_LIST = Path("/sys/kernel/security/lsm")
# libbpf 1.1 reads tracepoint ids from the first path if it exists, else from the second.
LIBBPF_TRACING_DIRS = ("/sys/kernel/debug/tracing", "/sys/kernel/tracing")
SYSCTLS = {
    "unprivileged_bpf_disabled": "/proc/sys/kernel/unprivileged_bpf_disabled",
    "bpf_jit_enable": "/proc/sys/net/core/bpf_jit_enable",
    "bpf_stats_enabled": "/proc/sys/kernel/bpf_stats_enabled",
}
_CACHE_NAME = re.compile(r"^[0-9a-f-]{36}-[0-9a-f]{8}\.json$")


# -- the data model -------------------------------------------------------------------------

@frozen
class Caveat:
    """A part of the probe result that is known to be wrong or incomplete on this host.

    subject: what it concerns, as a dotted name (``helpers``, ``program_types.tracing``,
    ``config``); reason: why, in a sentence a reader can check.
    """

    subject: str
    reason: str


@frozen
class AttachNote:
    """Something bpftool cannot tell: can programs be attached to this kind of hook here?

    available: True or False only when cheap evidence proves it, None when unknown.
    evidence: what was looked at, so a reader can judge the answer.
    """

    name: str  # kprobe, uprobe, tracepoint, fentry, lsm
    available: bool | None
    evidence: str


@frozen
class ToolVersions:
    """Versions of the tools; read once per probe and cached with it (clang costs ~18 ms)."""

    bpftool: str | None = None  # "7.1.0"
    bpftool_libbpf: str | None = None  # the libbpf bpftool was built with ("1.1")
    libbpf: str | None = None  # the system libbpf.so.1 the loader picks ("1.1.2")
    clang: str | None = None  # "14.0.6"
    iproute2: str | None = None  # from `tc -V` ("6.1.0")

    def to_json(self) -> dict:
        return {"bpftool": self.bpftool, "bpftool_libbpf": self.bpftool_libbpf, "libbpf": self.libbpf,
                "clang": self.clang, "iproute2": self.iproute2}


@frozen
class HostState:
    """Facts that may change while the machine runs; cheap, read on every call, never cached.

    None means "not looked at" (a recorded probe parsed in a unit test), not "absent".
    """

    kernel_release: str = ""
    boot_id: str = ""
    btf: bool | None = None  # /sys/kernel/btf/vmlinux exists
    mounts_read: bool = False  # the three mount fields below are meaningful
    bpffs: tuple[str, ...] = ()
    cgroup2: str | None = None
    tracefs: str | None = None  # the first tracefs mount
    tracefs_mounts: tuple[str, ...] = ()  # every tracefs mount
    libbpf_tracing_dir: str | None = None  # where libbpf will look (LIBBPF_TRACING_DIRS)
    unprivileged_bpf_disabled: int | None = None
    bpf_jit_enable: int | None = None
    bpf_stats_enabled: int | None = None
    pmus: tuple[str, ...] | None = None  # perf event sources (/sys/bus/event_source/devices)
    lsms: tuple[str, ...] | None = None  # active LSMs, when securityfs is mounted


@frozen
class Features:
    """Everything the probe found. Who may rely on what:

    * ``program_type``/``map_type`` give True/False only where bpftool probed the type;
      None means bpftool does not know the type. Check ``caveat('program_types.<t>')``
      before trusting a False.
    * ``helpers`` is bpftool's list as printed; see ``caveat('helpers')``.
    * ``kernel_config`` holds the options bpftool prints (value "y", "m", a number, or None
      for "not set"); ``config_readable`` is False when bpftool could not read the config,
      and then every None means "unknown". ``full_config`` is /proc/config.gz, read only when
      asked and never cached.
    * ``raw`` is bpftool's JSON as printed, for anything not modelled here.
    """

    kernel_release: str
    boot_id: str
    probed_at: str  # when bpftool ran (UTC, ISO 8601); older than now when from_cache
    from_cache: bool
    versions: ToolVersions
    btf: bool | None
    mounts_read: bool
    bpffs: tuple[str, ...]
    cgroup2: str | None
    tracefs: str | None
    unprivileged_bpf_disabled: int | None
    bpf_jit_enable: int | None
    bpf_stats_enabled: int | None
    bpf_syscall: bool | None
    program_types: frozenset[str]  # reported available
    program_types_probed: frozenset[str]  # every type bpftool probed
    map_types: frozenset[str]
    map_types_probed: frozenset[str]
    helpers: tuple[tuple[str, tuple[str, ...]], ...]  # (program type, helpers bpftool lists)
    kernel_config: tuple[tuple[str, str | None], ...]
    config_readable: bool
    misc: tuple[tuple[str, bool], ...]  # have_bounded_loops and friends
    attach_notes: tuple[AttachNote, ...]
    unreliable: tuple[Caveat, ...]
    raw: Mapping = field(repr=False, compare=False)
    full_config: tuple[tuple[str, str], ...] | None = None

    @property
    def kernel_version(self) -> tuple[int, ...] | None:
        return parse_kernel_version(self.kernel_release)

    @property
    def bpffs_mounted(self) -> bool:
        return bool(self.bpffs)

    @property
    def cgroup2_mounted(self) -> bool:
        return self.cgroup2 is not None

    @property
    def tracefs_mounted(self) -> bool:
        return self.tracefs is not None

    def program_type(self, name: str) -> bool | None:
        return name in self.program_types if name in self.program_types_probed else None

    def map_type(self, name: str) -> bool | None:
        return name in self.map_types if name in self.map_types_probed else None

    def helpers_for(self, prog_type: str) -> tuple[str, ...] | None:
        return next((h for t, h in self.helpers if t == prog_type), None)

    def config(self, name: str) -> tuple[bool, str | None]:
        """(known, value) of a kernel option; value None means "not set"."""
        if self.full_config is not None:
            return True, dict(self.full_config).get(name)
        values = dict(self.kernel_config)
        if name in values and self.config_readable:
            return True, values[name]
        return False, None

    def caveat(self, subject: str) -> Caveat | None:
        return next((c for c in self.unreliable if c.subject == subject), None)

    def attach_note(self, name: str) -> AttachNote | None:
        return next((n for n in self.attach_notes if n.name == name), None)

    def all_program_types(self) -> list[str]:
        """Probed types and the types bpfdeploy knows, in kernel enum order."""
        from bpfdeploy.hooks import PROG_TYPES

        return _enum_order(self.program_types_probed, PROG_TYPES)

    def all_map_types(self) -> list[str]:
        from bpfdeploy.hooks import MAP_TYPE_NAMES

        return _enum_order(self.map_types_probed, {n: v for v, n in MAP_TYPE_NAMES.items()})

    def to_json(self, *, raw: bool = False) -> dict:
        out = {
            "format": PROBE_FORMAT,
            "kernel": {"release": self.kernel_release, "version": list(self.kernel_version or ())},
            "boot_id": self.boot_id,
            "probed_at": self.probed_at,
            "from_cache": self.from_cache,
            "versions": self.versions.to_json(),
            "btf": self.btf,
            "mounts": {"read": self.mounts_read, "bpffs": list(self.bpffs), "cgroup2": self.cgroup2,
                       "tracefs": self.tracefs},
            "sysctls": {"unprivileged_bpf_disabled": self.unprivileged_bpf_disabled,
                        "bpf_jit_enable": self.bpf_jit_enable, "bpf_stats_enabled": self.bpf_stats_enabled},
            "bpf_syscall": self.bpf_syscall,
            "program_types": {t: self.program_type(t) for t in self.all_program_types()},
            "map_types": {t: self.map_type(t) for t in self.all_map_types()},
            "helpers": {t: list(h) for t, h in self.helpers},
            "kernel_config": {"readable": self.config_readable, "options": dict(self.kernel_config)},
            "misc": dict(self.misc),
            "attach_notes": [{"name": n.name, "available": n.available, "evidence": n.evidence}
                             for n in self.attach_notes],
            "unreliable": [{"subject": c.subject, "reason": c.reason} for c in self.unreliable],
        }
        if self.full_config is not None:
            out["full_config"] = dict(self.full_config)
        if raw:
            out["raw"] = self.raw
        return out


def features_json(features: Features, *, program_types: bool = False, map_types: bool = False,
                  helpers: str | None = None, config: bool = False) -> dict:
    """The JSON view, cut down to the sections the filter flags ask for (none: everything)."""
    full = features.to_json()
    if not (program_types or map_types or helpers or config):
        return full
    keys = ["format", "kernel", "probed_at", "from_cache"]
    if program_types:
        keys.append("program_types")
    if map_types:
        keys.append("map_types")
    if config:
        keys += ["versions", "btf", "mounts", "sysctls", "bpf_syscall", "kernel_config", "misc", "attach_notes"]
        keys += ["full_config"] if "full_config" in full else []
    out = {k: full[k] for k in keys}
    if helpers:
        out["helpers"] = {helpers: full["helpers"].get(helpers)}
    wanted = {"helpers"} if helpers else set()
    wanted |= {"config"} if config else set()
    out["unreliable"] = [c for c in full["unreliable"]
                         if c["subject"] in wanted
                         or (program_types and c["subject"].startswith("program_types."))]
    return out


def _enum_order(probed: Iterable[str], known: Mapping[str, int]) -> list[str]:
    names = set(probed) | set(known)
    return sorted(names, key=lambda n: (known.get(n, 1 << 20), n))


# -- parsing (pure) -------------------------------------------------------------------------

_PROG = re.compile(r"^have_(.+)_prog_type$")
_MAP = re.compile(r"^have_(.+)_map_type$")
_HELPERS = re.compile(r"^(.+)_available_helpers$")
_MISC = re.compile(r"^have_(.+)$")

# Pairs the kernel has never allowed (the helper is bound to one other program type). If
# bpftool lists one of them, its helper probe is not telling the truth.
IMPOSSIBLE_HELPERS = (
    ("xdp", "bpf_sysctl_get_name"),  # cgroup_sysctl only
    ("socket_filter", "bpf_msg_redirect_map"),  # sk_msg only
    ("sched_cls", "bpf_sock_ops_cb_flags_set"),  # sock_ops only
)
_BTF_TYPES = {"tracing": (5, 5), "ext": (5, 6), "lsm": (5, 7)}  # need BTF; first kernel with the type


def parse_kernel_version(text: str) -> tuple[int, ...] | None:
    """``"6.18.44-fc-v669"`` -> (6, 18, 44); ``"6.6"`` -> (6, 6); None when not a version."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def kernel_at_least(release: str, minimum: str) -> bool | None:
    """Does ``release`` satisfy ``minimum``? None when either is not a version."""
    have, want = parse_kernel_version(release), parse_kernel_version(minimum)
    if have is None or want is None:
        return None
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) >= want + (0,) * (width - len(want))


def parse_probe(json_text: str | Mapping, *, host: HostState | None = None, versions: ToolVersions | None = None,
                probed_at: str = "", from_cache: bool = False,
                full_config: Mapping[str, str] | None = None) -> Features:
    """Turn ``bpftool feature probe -j`` output (text or parsed) and host facts into Features."""
    raw = json.loads(json_text) if isinstance(json_text, str) else json_text
    if not isinstance(raw, Mapping) or "error" in raw:
        message = raw.get("error") if isinstance(raw, Mapping) else "not a JSON object"
        raise HostError(f"bpftool feature probe failed: {message}")
    host = host or HostState()
    versions = versions or ToolVersions()

    def section(name: str) -> Mapping:
        value = raw.get(name)
        return value if isinstance(value, Mapping) else {}

    prog_probed, prog_ok = _have(section("program_types"), _PROG)
    map_probed, map_ok = _have(section("map_types"), _MAP)
    helpers = []
    for key, names in section("helpers").items():
        m = _HELPERS.match(key)
        if m and isinstance(names, list):
            helpers.append((m.group(1), tuple(str(n) for n in names)))
    system = section("system_config")
    kernel_config = tuple((k, None if v is None else str(v)) for k, v in system.items() if k.startswith("CONFIG_"))
    # bpftool prints every option as null when it cannot read the kernel config.
    config_readable = any(v is not None for _k, v in kernel_config)
    misc = tuple((m.group(1), bool(v)) for k, v in section("misc").items() if (m := _MISC.match(k)))
    syscall = section("syscall_config").get("have_bpf_syscall")
    btf = host.btf
    if btf is None and config_readable:  # a recording without host facts: the config tells
        btf = dict(kernel_config).get("CONFIG_DEBUG_INFO_BTF") in ("y", "m")

    features = Features(
        kernel_release=host.kernel_release, boot_id=host.boot_id, probed_at=probed_at, from_cache=from_cache,
        versions=versions, btf=btf, mounts_read=host.mounts_read, bpffs=host.bpffs, cgroup2=host.cgroup2,
        tracefs=host.tracefs, unprivileged_bpf_disabled=host.unprivileged_bpf_disabled,
        bpf_jit_enable=host.bpf_jit_enable, bpf_stats_enabled=host.bpf_stats_enabled,
        bpf_syscall=None if syscall is None else bool(syscall),
        program_types=prog_ok, program_types_probed=prog_probed, map_types=map_ok, map_types_probed=map_probed,
        helpers=tuple(helpers), kernel_config=kernel_config, config_readable=config_readable, misc=misc,
        attach_notes=(), unreliable=(), raw=raw,
        full_config=None if full_config is None else tuple(sorted(full_config.items())),
    )
    return _with_judgement(features, host)


def _have(section: Mapping, pattern: re.Pattern) -> tuple[frozenset[str], frozenset[str]]:
    probed, ok = set(), set()
    for key, value in section.items():
        m = pattern.match(key)
        if m:
            probed.add(m.group(1))
            if value is True:
                ok.add(m.group(1))
    return frozenset(probed), frozenset(ok)


def _tracepoint_note(host: HostState) -> AttachNote:
    where = host.libbpf_tracing_dir
    if not host.mounts_read or where is None:
        return AttachNote("tracepoint", None, "mounts not read")
    if where in host.tracefs_mounts:
        return AttachNote("tracepoint", True, f"tracefs is mounted at {where}, where libbpf reads tracepoint ids")
    if where == LIBBPF_TRACING_DIRS[0]:
        return AttachNote("tracepoint", None, f"libbpf reads tracepoint ids from {where} (debugfs), which mounts "
                                              "tracefs on first access; not checked")
    elsewhere = f"; tracefs is mounted only at {', '.join(host.tracefs_mounts)}" if host.tracefs_mounts else ""
    return AttachNote("tracepoint", False, f"tracefs is not mounted at {where}, where libbpf reads tracepoint ids "
                                           f"(mount -t tracefs nodev {where}){elsewhere}")


def _with_judgement(f: Features, host: HostState) -> Features:
    """Add what bpftool cannot say: caveats on its own results, and attach notes."""
    from bpfdeploy.model.frozen import replace

    caveats = [c for c in (_helpers_caveat(f),) if c]
    version = f.kernel_version
    for t, first in _BTF_TYPES.items():
        if f.program_type(t) is False and f.btf and (version is None or version >= first):
            caveats.append(Caveat(
                f"program_types.{t}",
                f"bpftool reports {t} unavailable, but its probe expects one particular verifier message and reads "
                "any other refusal (such as EPERM from a security policy) as 'missing'; this kernel has BTF"
                + (f" and is at least {first[0]}.{first[1]}, which introduced the type" if version else "")
                + (". tp_btf and iter programs (type tracing) may still load; fentry/fexit may not"
                   if t == "tracing" else "")))
    if not f.config_readable and f.kernel_config:
        caveats.append(Caveat("config", "bpftool could not read the kernel config (/boot/config-<release> or "
                                        "/proc/config.gz): every option reads as unknown"))
    return replace(f, unreliable=tuple(caveats), attach_notes=_attach_notes(f, host))


def _helpers_caveat(f: Features) -> Caveat | None:
    listed = {t: frozenset(h) for t, h in f.helpers if h}
    reasons = []
    if len(listed) >= 2 and len(set(listed.values())) == 1:
        count = len(next(iter(listed.values())))
        reasons.append(f"all {len(listed)} program types that list helpers list the same {count}")
    impossible = [f"{h} for {t}" for t, h in IMPOSSIBLE_HELPERS if h in listed.get(t, ())]
    if impossible:
        reasons.append("it lists helpers the kernel never allows there (" + ", ".join(impossible) + ")")
    if not reasons:
        return None
    return Caveat("helpers", "bpftool's helper lists are not the kernel's: " + "; ".join(reasons) + ". Its probe "
                  "(libbpf 1.1's) counts a helper as usable unless the verifier says 'invalid func' or 'unknown "
                  "func'; newer kernels refuse with 'program of this type cannot use helper', which it does not "
                  "recognise (newer libbpf releases do)")


def _attach_notes(f: Features, host: HostState) -> tuple[AttachNote, ...]:
    notes = []
    for kind, option in (("kprobe", "CONFIG_KPROBE_EVENTS"), ("uprobe", "CONFIG_UPROBE_EVENTS")):
        known, value = f.config(option)
        if host.pmus is not None and kind in host.pmus:
            notes.append(AttachNote(kind, True, f"{kind} PMU present in {PMU_DIR}"))
        elif host.pmus is not None:
            # The kernel registers this PMU exactly when the option is set, and libbpf's
            # fallback (tracefs {kind}_events) needs the same option.
            extra = f"; {option} is not set" if known and value is None else ""
            notes.append(AttachNote(kind, False, f"no {kind} PMU in {PMU_DIR} (present only with {option}){extra}"))
        elif known:
            notes.append(AttachNote(kind, value in ("y", "m"), f"{option} is {value or 'not set'}"))
        else:
            notes.append(AttachNote(kind, None, f"{PMU_DIR} not read and {option} unknown"))
    notes.append(_tracepoint_note(host))
    if f.btf is False:
        notes.append(AttachNote("fentry", False, "no kernel BTF: fentry/fexit need /sys/kernel/btf/vmlinux"))
    elif f.program_type("tracing"):
        notes.append(AttachNote("fentry", None, "bpftool's tracing probe passed (the kernel got as far as the BTF "
                                                "target); attaching is not probed"))
    else:
        notes.append(AttachNote("fentry", None, "not probed: bpftool's tracing probe failed, and its failure does not "
                                                "distinguish a missing type from a refused fentry load"))
    known, value = f.config("CONFIG_BPF_LSM")
    if known and value is None:
        notes.append(AttachNote("lsm", False, "CONFIG_BPF_LSM is not set"))
    elif host.lsms is not None and "bpf" not in host.lsms:
        notes.append(AttachNote("lsm", False, f"bpf is not among the active LSMs ({','.join(host.lsms)})"))
    elif host.lsms is not None:
        notes.append(AttachNote("lsm", None, "bpf is an active LSM; whether lsm programs may load is not probed"))
    else:
        notes.append(AttachNote("lsm", None, f"active LSMs unknown ({LSM_LIST} is not readable; "
                                             "securityfs unmounted?)"))
    return tuple(notes)


# -- reading the host -----------------------------------------------------------------------

def _read_text(path: str | Path) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    try:
        return int(text.split()[0]) if text else None
    except ValueError:
        return None


def read_host_state() -> HostState:
    """The cheap, changeable facts (about 0.2 ms): no process is started."""
    from bpfdeploy.host import read_mounts

    mounts_text = _read_text("/proc/self/mounts")
    mounts = read_mounts(mounts_text) if mounts_text is not None else None
    try:
        pmus = tuple(sorted(os.listdir(PMU_DIR)))
    except OSError:
        pmus = None
    lsm_text = _read_text(LSM_LIST)
    return HostState(
        kernel_release=os.uname().release,
        boot_id=(_read_text(BOOT_ID) or "").strip(),
        btf=VMLINUX_BTF.exists(),
        mounts_read=mounts is not None,
        bpffs=tuple(str(p) for p in mounts.bpffs) if mounts else (),
        cgroup2=str(mounts.cgroup2) if mounts and mounts.cgroup2 else None,
        tracefs=str(mounts.tracefs) if mounts and mounts.tracefs else None,
        tracefs_mounts=tuple(fields[1] for line in (mounts_text or "").splitlines()
                             if len(fields := line.split()) >= 3 and fields[2] == "tracefs"),
        libbpf_tracing_dir=next((d for d in LIBBPF_TRACING_DIRS if os.path.exists(d)), LIBBPF_TRACING_DIRS[1]),
        unprivileged_bpf_disabled=_read_int(SYSCTLS["unprivileged_bpf_disabled"]),
        bpf_jit_enable=_read_int(SYSCTLS["bpf_jit_enable"]),
        bpf_stats_enabled=_read_int(SYSCTLS["bpf_stats_enabled"]),
        pmus=pmus,
        lsms=tuple(s for s in lsm_text.strip().split(",") if s) if lsm_text is not None else None,
    )


def read_kernel_config(release: str | None = None) -> dict[str, str] | None:
    """The whole kernel config, where bpftool looks for it; None when neither file is readable."""
    release = release or os.uname().release
    text = _read_text(f"/boot/config-{release}")
    if text is None:
        try:
            import gzip

            with gzip.open("/proc/config.gz", "rt") as fh:
                text = fh.read()
        except OSError:
            return None
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            out[name] = value.strip('"')
    return out


def _identity(path: str | None) -> str | None:
    """Which file a tool is, without running it: real path, size, mtime."""
    if not path:
        return None
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _tool_identities(libbpf_soname: str | None) -> dict[str, str | None]:
    """What must be unchanged for the cached versions to stay true (a few stat calls)."""
    return {"clang": _identity(runner.which("clang")), "tc": _identity(runner.which("tc")),
            "libbpf": _identity(libbpf_soname)}


def _system_libbpf() -> tuple[str | None, str | None]:
    """(version, path of libbpf.so.1 as the loader found it), through ctypes (~11 ms)."""
    try:
        import ctypes

        lib = ctypes.CDLL("libbpf.so.1")
        major, minor = int(lib.libbpf_major_version()), int(lib.libbpf_minor_version())
    except (OSError, AttributeError):
        return None, None
    version = f"{major}.{minor}"
    soname = None
    for line in (_read_text("/proc/self/maps") or "").splitlines():
        path = line.split(None, 5)[-1] if line.count(" ") >= 5 else ""
        if "/libbpf.so" in path:
            soname = str(Path(path).with_name("libbpf.so.1"))
            # the file name carries the patch level: libbpf.so.1.1.2
            m = re.search(r"libbpf\.so\.(\d+\.\d+\.\d+)$", Path(path).name)
            if m and m.group(1).startswith(version + "."):
                version = m.group(1)
            break
    return version, soname


def _first_match(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _read_versions() -> tuple[ToolVersions, str | None]:
    """Versions of bpftool, libbpf, clang and iproute2, and the libbpf path for the cache key."""
    bpftool = runner.run(["bpftool", "version", "-j"])
    try:
        info = json.loads(bpftool.stdout) if bpftool.returncode == 0 else {}
    except ValueError:
        info = {}
    clang = tc = None
    if runner.which("clang"):
        result = runner.run(["clang", "--version"])
        clang = _first_match(r"clang version (\S+)", result.stdout) if result.returncode == 0 else None
    if runner.which("tc"):
        result = runner.run(["tc", "-V"])
        tc = _first_match(r"iproute2-(?:ss)?([\w.]+)", result.stdout) if result.returncode == 0 else None
    libbpf, soname = _system_libbpf()
    return ToolVersions(bpftool=info.get("version"), bpftool_libbpf=info.get("libbpf_version"), libbpf=libbpf,
                        clang=clang, iproute2=tc), soname


def tool_versions() -> ToolVersions:
    """The tools' versions, read now (bpfdeploy --version)."""
    return _read_versions()[0]


# -- the cache ------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    env = os.environ.get("BPFDEPLOY_PROBE_CACHE")
    if env:
        return Path(env)
    from bpfdeploy.caches import cache_dir

    return cache_dir() / "probe"


def cache_path(directory: Path, boot_id: str, bpftool_identity: str) -> Path:
    # The file itself records the full identity and is checked on read: a clash only re-probes.
    key = f"{zlib.crc32(bpftool_identity.encode()):08x}"
    return directory / f"{boot_id}-{key}.json"


def probe_features(cache_dir: Path | None = None, refresh: bool = False, *, full_config: bool = False) -> Features:
    """Probe this host, or reuse this boot's probe for the same bpftool binary.

    A cached probe runs no process at all: the cache key is the boot id and the bpftool
    binary's identity (path, size, mtime), both read without running anything. The versions
    of clang, tc and libbpf are stored with the probe and trusted while those files are
    unchanged. ``full_config`` also reads the whole kernel config (never cached).
    Raises HostError when bpftool is missing or the probe fails (not root, for example).
    """
    host = read_host_state()
    bpftool = runner.which("bpftool")
    if bpftool is None:
        raise HostError("bpftool is not installed: it is needed to probe kernel features")
    ident = _identity(bpftool) or bpftool
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Without a boot id there is nothing to key the cache on: probe every time.
    path = cache_path(directory, host.boot_id, ident) if host.boot_id else None
    record = None
    if path is not None and not refresh:
        record = _load_cached(path, host.boot_id, ident)
    from_cache = record is not None
    if record is None:
        record = _probe(host.boot_id, ident)
        if path is not None:
            _store(path, record)
    config = read_kernel_config(host.kernel_release) if full_config else None
    return parse_probe(record["raw"], host=host, versions=ToolVersions(**record["versions"]),
                       probed_at=record["probed_at"], from_cache=from_cache, full_config=config)


def _probe(boot_id: str, bpftool_identity: str) -> dict:
    import threading

    got: dict = {}

    def versions() -> None:  # clang --version alone takes ~18 ms: overlap it with the probe
        got["versions"], got["libbpf_soname"] = _read_versions()

    worker = threading.Thread(target=versions)
    worker.start()
    try:
        result = runner.run(["bpftool", "feature", "probe", "-j"])
    finally:
        worker.join()
    try:
        raw = json.loads(result.stdout)
    except ValueError:
        raw = None
    if result.returncode != 0 or not isinstance(raw, dict) or "error" in raw:
        raise HostError(f"bpftool feature probe failed: {result.error_text() or f'exit {result.returncode}'}")
    return {
        "format": CACHE_FORMAT,
        "boot_id": boot_id,
        "bpftool": bpftool_identity,
        "tools": _tool_identities(got["libbpf_soname"]),
        "libbpf_soname": got["libbpf_soname"],
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": got["versions"].to_json(),
        "raw": raw,
    }


def _load_cached(path: Path, boot_id: str, bpftool_identity: str) -> dict | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        return None
    if record.get("boot_id") != boot_id or record.get("bpftool") != bpftool_identity:
        return None
    if not isinstance(record.get("raw"), dict) or not isinstance(record.get("versions"), dict):
        return None
    # An upgraded clang, tc or libbpf makes the stored versions wrong: probe again.
    if record.get("tools") != _tool_identities(record.get("libbpf_soname")):
        return None
    return record


def _store(path: Path, record: dict) -> None:
    """Write atomically (temp file + rename), and drop the files of earlier boots."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh, separators=(",", ":"))
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        for other in path.parent.iterdir():
            if _CACHE_NAME.match(other.name) and not other.name.startswith(record["boot_id"] + "-"):
                other.unlink(missing_ok=True)
    except OSError:
        pass  # the cache only saves time; an unwritable directory must not fail the probe


# -- requirement checks (pure) --------------------------------------------------------------

def implied_requirements(desired) -> tuple[set[str], set[str], set[str]]:
    """(program types, map types, attach types) a resolved DesiredState uses, by bpftool name."""
    from bpfdeploy.hooks import MAP_TYPE_NAMES

    programs = {p.prog_type for p in desired.programs}
    maps = {MAP_TYPE_NAMES.get(m.geometry.type, str(m.geometry.type)) for m in desired.maps}
    attaches = {a.attach_type.name for a in desired.attachments}
    return programs, maps, attaches


class _Needs:
    """Capabilities to check, each with every reason it is needed; one diagnostic each."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (kind, name) -> [(why, path)]

    def add(self, kind: str, name: str, why: str, path: str) -> None:
        reasons = self.items.setdefault((kind, name), [])
        if (why, path) not in reasons:
            reasons.append((why, path))

    def of(self, kind: str) -> list[tuple[str, str, str]]:
        """[(name, why, path)] for one kind, sorted by name; the path is the first declared one."""
        out = []
        for (k, name), reasons in sorted(self.items.items()):
            if k == kind:
                path = next((p for _why, p in reasons if p), "")
                out.append((name, "; ".join(why for why, _p in reasons), path))
        return out


def _attach_needs(at, hooks) -> list[tuple[str, str]]:
    """What must be present on the host for one attach type, as (kind, name) needs.

    Only what the probe (or a cheap look at the host) can show is claimed here.
    """
    out: list[tuple[str, str]] = []
    if len(at.program_types) == 1:
        out.append(("program_type", at.program_types[0]))
    elif at.program_types:
        out.append(("program_type_any", "|".join(at.program_types)))
    if at.kind is hooks.HookKind.CGROUP:
        out += [("mount", "cgroup2"), ("config", "CONFIG_CGROUP_BPF")]
    if at.kind is hooks.HookKind.SOCKMAP:
        out.append(("sockmap", "sockmap or sockhash"))
    name = at.name
    if name == "sk_skb_stream_parser":
        out.append(("config", "CONFIG_BPF_STREAM_PARSER"))
    if name in ("tc_ingress", "tc_egress"):  # a cls_bpf filter on a clsact qdisc, made with tc
        out += [("config", "CONFIG_NET_CLS_BPF"), ("config", "CONFIG_NET_SCH_INGRESS"), ("tool", "tc")]
    if name in ("tcx_ingress", "tcx_egress"):
        out.append(("kernel_min", "tcx links@6.6"))
    if name in ("kprobe", "kretprobe"):
        out.append(("attach", "kprobe"))
    if name in ("uprobe", "uretprobe"):
        out.append(("attach", "uprobe"))
    if name == "tracepoint":
        out.append(("attach", "tracepoint"))
    if name in ("tp_btf", "iter"):
        out.append(("btf", "btf"))
    return out


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


def check_requirements(features: Features, *, program_types: Collection[str] = (), map_types: Collection[str] = (),
                       attach_types: Collection[str] = (), requires: Mapping | None = None,
                       file: str = "") -> list[Diagnostic]:
    """One diagnostic per capability the manifest needs and the host lacks.

    ``program_types``, ``map_types``, ``attach_types``: what the manifest uses (implied;
    diagnostics get an empty path). ``requires``: the manifest's ``requires`` section
    (declared; path ``requires.<key>``). Errors mean "cannot run here"; warnings mean
    "cannot tell" (the probe does not cover it, or its answer is known to be unreliable)
    and must not block.
    """
    from bpfdeploy import hooks

    requires = requires or {}
    needs = _Needs()
    diags: list[Diagnostic] = []
    release = features.kernel_release or "(unknown release)"
    tool = f"bpftool {features.versions.bpftool}" if features.versions.bpftool else "bpftool"

    def diag(message: str, path: str, hint: str = "", severity: str = "error") -> None:
        diags.append(Diagnostic(message, file, path, None, hint, severity))

    # kernel version and BTF: declared only.
    if "kernel" in requires and requires["kernel"] is not None:
        minimum = requires["kernel"]
        if not isinstance(minimum, str):
            diag(f"requires.kernel must be a quoted version string, not the number {minimum!r}", "requires.kernel",
                 'write kernel: "6.10" (YAML reads 6.10 as the number 6.1)')
        elif parse_kernel_version(minimum) is None:
            diag(f"requires.kernel {minimum!r} is not a kernel version", "requires.kernel", 'for example "6.6"')
        else:
            ok = kernel_at_least(features.kernel_release, minimum)
            if ok is False:
                diag(f"kernel {minimum} or newer is needed (declared in requires.kernel) but this host runs "
                     f"{release}", "requires.kernel")
            elif ok is None:
                diag(f"kernel {minimum} or newer is needed (declared in requires.kernel) but the host's kernel "
                     f"release {release} is not a version", "requires.kernel", severity="warning")
    if requires.get("btf") is True:
        needs.add("btf", "btf", "declared in requires.btf", "requires.btf")

    for name in program_types:
        needs.add("program_type", name, "by the manifest", "")
    for name in _as_list(requires.get("program_types")):
        needs.add("program_type", name, "declared in requires.program_types", "requires.program_types")
    for name in map_types:
        needs.add("map_type", name, "by the manifest", "")
    for name in _as_list(requires.get("map_types")):
        needs.add("map_type", name, "declared in requires.map_types", "requires.map_types")
    for name in _as_list(requires.get("config")):
        option = name if name.startswith("CONFIG_") else f"CONFIG_{name}"
        needs.add("config", option, "declared in requires.config", "requires.config")

    attach = [(n, False) for n in attach_types] + [(n, True) for n in _as_list(requires.get("attach_types"))]
    for name, declared in attach:
        at = hooks.attach_type(name)
        path = "requires.attach_types" if declared else ""
        if at is None:
            diag(f"attach type {name!r} is not one bpfdeploy knows", path,
                 "one of: " + ", ".join(t.name for t in hooks.ATTACH_TYPES), "error" if declared else "warning")
            continue
        why = f"by attach type {at.name}" + (" (declared in requires.attach_types)" if declared else "")
        for kind, need in _attach_needs(at, hooks):
            needs.add(kind, need, why, path)

    for name, why, path in needs.of("btf"):
        if features.btf is False:
            diag(f"kernel BTF is needed ({why}) but {VMLINUX_BTF} is missing on kernel {release}", path,
                 "a kernel built with CONFIG_DEBUG_INFO_BTF=y provides it")
        elif features.btf is None:
            diag(f"kernel BTF is needed ({why}) but whether this host has it was not checked", path,
                 severity="warning")
    wanted_programs = {name for name, _why, _path in needs.of("program_type")}
    for name, why, path in needs.of("program_type"):
        have = features.program_type(name)
        if name not in hooks.PROG_TYPES and have is None:
            diag(f"{name!r} is not a BPF program type ({why})", path,
                 "one of: " + ", ".join(features.all_program_types()))
        elif have is False:
            caveat = features.caveat(f"program_types.{name}")
            text = (f"program type {name} is needed ({why}) but bpftool feature probe reports it unavailable "
                    f"on kernel {release}")
            if caveat:
                diag(text + "; that result is known to be unreliable, so the load will decide", path,
                     caveat.reason, "warning")
            else:
                diag(text, path)
        elif have is None:
            diag(f"program type {name} is needed ({why}) but {tool} does not probe it, so whether kernel "
                 f"{release} has it is unknown", path, severity="warning")
    wanted_maps = set()
    for name, why, path in needs.of("map_type"):
        wanted_maps.add(name)
        have = features.map_type(name)
        if name not in hooks.MAP_TYPE_NAMES.values() and have is None:
            diag(f"{name!r} is not a BPF map type ({why})", path, "one of: " + ", ".join(features.all_map_types()))
        elif have is False:
            diag(f"map type {name} is needed ({why}) but bpftool feature probe reports it unavailable on kernel "
                 f"{release}", path)
        elif have is None:
            diag(f"map type {name} is needed ({why}) but {tool} does not probe it, so whether kernel {release} "
                 f"has it is unknown", path, severity="warning")
    for names, why, path in needs.of("program_type_any"):
        choices = names.split("|")
        if wanted_programs & set(choices):
            continue  # the manifest's own program is checked by its type
        if all(features.program_type(c) is False for c in choices):
            diag(f"program type {' or '.join(choices)} is needed ({why}) but bpftool feature probe reports none of "
                 f"them available on kernel {release}", path)
    for _name, why, path in needs.of("sockmap"):
        if wanted_maps & hooks.SOCKMAP_TYPES:
            continue  # the map the attachment targets is checked by its own type
        if features.map_type("sockmap") is False and features.map_type("sockhash") is False:
            diag(f"a sockmap or sockhash is needed ({why}) but bpftool feature probe reports neither available "
                 f"on kernel {release}", path)
    for _name, why, path in needs.of("mount"):
        if not features.mounts_read:
            diag(f"a cgroup v2 mount is needed ({why}) but the mounts were not read", path, severity="warning")
        elif not features.cgroup2_mounted:
            diag(f"a cgroup v2 mount is needed ({why}) but none is mounted on this host (/proc/self/mounts)", path,
                 "mount -t cgroup2 none /sys/fs/cgroup/unified (or wherever the host keeps it)")
    for name, why, path in needs.of("attach"):
        note = features.attach_note(name)
        if note is None or note.available is None:
            diag(f"{name} attachments are needed ({why}) but whether this host allows them is unknown"
                 + (f": {note.evidence}" if note else ""), path, severity="warning")
        elif note.available is False:
            # tracefs can still be mounted before the attach; a missing PMU cannot be fixed.
            fixable = name == "tracepoint"
            diag(f"{name} attachments are needed ({why}) but "
                 + ("cannot be made yet" if fixable else "are impossible") + f" on kernel {release}: {note.evidence}",
                 path, severity="warning" if fixable else "error")
    for name, why, path in needs.of("tool"):
        if name == "tc" and not features.versions.iproute2:
            diag(f"the tc command (iproute2) is needed ({why}) but it was not found on this host", path,
                 "install iproute2")
    for name, why, path in needs.of("kernel_min"):
        feature, minimum = name.split("@")
        if kernel_at_least(features.kernel_release, minimum) is False:
            diag(f"{feature} are needed ({why}); they arrived in Linux {minimum} and this host runs {release}, so "
                 "they are probably missing (distribution kernels sometimes carry them earlier)", path,
                 severity="warning")
    for option, why, path in needs.of("config"):
        known, value = features.config(option)
        if not known:
            diag(f"kernel option {option} is needed ({why}) but it cannot be checked: "
                 + ("the kernel config is not readable" if not features.config_readable
                    else "bpftool does not report it and the full kernel config was not read"), path,
                 "probe with the full kernel config (/proc/config.gz) to check it", "warning")
        elif value not in ("y", "m"):
            diag(f"kernel option {option} is needed ({why}) but "
                 + (f"kernel {release} has {option}={value}" if value is not None
                    else f"it is not set in the config of kernel {release}"), path)
    return diags
