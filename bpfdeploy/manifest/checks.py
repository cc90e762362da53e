"""Turn a schema-valid document into a Manifest, collecting every semantic problem.

Checks here need only the manifest and the file system: names, references, paths that
must stay inside the pin root or the cgroup v2 mount, files that must exist. What needs
the built objects (do the named programs exist? does the attach type fit?) is checked in
``bpfdeploy.desired``.
"""

from __future__ import annotations

import difflib
import os
from functools import lru_cache
import re
import stat
from pathlib import Path

from bpfdeploy import hooks
from bpfdeploy.diagnostics import Diagnostic
from bpfdeploy.manifest.load import RawManifest
from bpfdeploy.manifest.model import (
    DEFAULT_PIN_BASE,
    ArtifactPolicy,
    AttachMode,
    AttachmentSpec,
    CgroupTarget,
    EntriesPolicy,
    Manifest,
    MapEntry,
    MapSettings,
    MetricLabel,
    MetricSpec,
    ObjectSpec,
    Order,
    OrderKind,
    PinAccess,
    ProgramSpec,
)

BPFFS = Path("/sys/fs/bpf")
NETNS_DIR = Path("/var/run/netns")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def build_manifest(raw: RawManifest, cgroup_root: Path, files_must_exist: bool = True,
                   objects_must_exist: bool | None = None) -> tuple[Manifest | None, list[Diagnostic]]:
    """The Manifest, or None with the diagnostics that prevent it.

    files_must_exist=False (for destroy) skips the checks that sources, object files, include
    directories and cgroups exist: removing a deployment must not depend on them.
    objects_must_exist (default: files_must_exist) decides the checks of sources, object files
    and include directories alone: a host deploying artifacts needs none of them, and
    ``bpfdeploy build`` on a controller needs them but not the target's cgroups.
    """
    if objects_must_exist is None:
        objects_must_exist = files_must_exist
    data = raw.data
    problems: list[Diagnostic] = []
    _control_characters(raw, data, (), problems)

    base = raw.base
    name = data.get("name") if isinstance(data.get("name"), str) else "unnamed"

    pin_root = _pin_root(raw, data.get("pin_root"), name, problems) if isinstance(data.get("pin_root"), (str, type(None))) \
        else Path("/sys/fs/bpf/bpfdeploy") / name
    objects = tuple(o for o in (_tolerant(_object, raw, ("objects", oname), problems, base, oname, odata, problems, objects_must_exist)
                                for oname, odata in _items(data.get("objects"))) if o is not None)

    pins: dict[str, tuple] = {}
    for obj in objects:
        for prog in obj.programs or ():
            if not isinstance(prog.pin, str):  # malformed: the schema has reported it
                continue
            if prog.pin in pins:
                problems.append(raw.diag(prog.where, f"program pin name {prog.pin!r} is used twice",
                                         f"first used at {_fmt(pins[prog.pin])}; set a different 'pin'"))
            pins.setdefault(prog.pin, prog.where)

    maps = tuple(m for m in (_tolerant(_map_settings, raw, ("maps", mname), problems, mname, mdata, problems) for mname, mdata in _items(data.get("maps")))
                 if m is not None)
    attachments = []
    seen_names: dict[str, tuple] = {}
    attachment_list = data.get("attachments") if isinstance(data.get("attachments"), list) else []
    for i, adata in enumerate(attachment_list):
        att = _tolerant(_attachment, raw, ("attachments", i), problems, i, adata, cgroup_root, problems, files_must_exist)
        if att is None:
            continue
        if att.name in seen_names:
            problems.append(raw.diag(("attachments", i), f"two attachments have the link name {att.name!r}",
                                     f"the other is at {_fmt(seen_names[att.name])}; give one of them a 'name'"))
            continue
        seen_names[att.name] = att.where
        attachments.append(att)
    _check_orders(raw, attachments, problems)

    root_access = _access(raw, ("pin_root_access",), data.get("pin_root_access"), problems)
    policy = _artifact_policy(raw, data.get("artifacts"), base, problems)
    if any(d.severity in ("error", SHADOW) for d in problems):
        return None, problems
    manifest = Manifest(file=raw.path, name=name, pin_root=pin_root, objects=objects, maps=maps,
                        attachments=tuple(attachments), lines=raw.lines, requires=data.get("requires"),
                        pin_root_access=root_access,
                        metrics=tuple(m for m in (_tolerant(_metric, raw, ("metrics", i), problems, i, m, problems) for i, m in
                                                  enumerate(data.get("metrics") if isinstance(data.get("metrics"), list)
                                                            else ())) if m is not None),
                        artifacts=policy)
    _check_metric_names(raw, manifest.metrics, problems)
    return manifest, problems


def _artifact_policy(raw: RawManifest, data, base: Path, problems: list) -> ArtifactPolicy | None:
    """The artifacts section (the schema has checked its shape; a malformed one is left to it)."""
    if not isinstance(data, dict):
        return None
    signers = data.get("allowed_signers")
    path = None
    if isinstance(signers, str) and signers:
        path = _safe_path(raw, ("artifacts", "allowed_signers"), signers, base, problems)
    return ArtifactPolicy(require_signature=data.get("require_signature") is True, allowed_signers=path)


# Families every deployment's exporter makes itself (bpfdeploy/metrics.py): a manifest may not reuse them.
BUILTIN_METRICS = ("bpfdeploy_program_run_count", "bpfdeploy_program_run_time_seconds", "bpfdeploy_build_info",
                   "bpfdeploy_scrape_error", "bpfdeploy_deployment_programs_expected",
                   "bpfdeploy_deployment_programs_loaded", "bpfdeploy_deployment_attachments_expected",
                   "bpfdeploy_deployment_attachments_in_sync", "bpfdeploy_deployment_drifted",
                   "bpfdeploy_deployment_healthy")


def _exposed_names(spec: MetricSpec) -> set[str]:
    """The names a metric takes in the exposition: a counter's family drops _total, and its samples
    are <family>_total and <family>_created."""
    if spec.type == "counter":
        family = spec.name.removesuffix("_total")
        return {family, family + "_total", family + "_created"}
    return {spec.name}


def _check_metric_names(raw: RawManifest, metrics: tuple, problems: list) -> None:
    """One family per name, and labels that do not shadow the ones the exporter adds."""
    taken: dict[str, tuple] = {}
    for name in BUILTIN_METRICS:
        for exposed in _exposed_names(MetricSpec(name, "", "counter" if name.endswith(("_count", "_seconds")) else
                                                 "gauge", "", None, (), ())):
            taken[exposed] = ()
    for spec in metrics:
        if not isinstance(spec.name, str):  # malformed: the schema has reported it
            continue
        names = _exposed_names(spec)
        clash = sorted(n for n in names if n in taken)
        if clash:
            other = taken[clash[0]]
            problems.append(raw.diag(spec.where + ("name",), f"metric name {spec.name!r} clashes with "
                                     + (f"the metric at {_fmt(other)}" if other else f"bpfdeploy's own {clash[0]!r}")
                                     + f" (both would be exposed as {clash[0]!r})",
                                     "give every metric a name of its own (a counter's _total suffix is dropped "
                                     "from its family name, so x and x_total are one name)"))
            continue
        for n in names:
            taken[n] = spec.where
        seen_labels: set[str] = set()
        for j, label in enumerate(spec.labels):
            if not isinstance(label.name, str):  # malformed: the schema has reported it
                continue
            if label.name == "deployment":
                problems.append(raw.diag(spec.where + ("labels", j, "name"), f"metric {spec.name!r}: the label name "
                                         "'deployment' is the one the exporter adds to every sample",
                                         "choose another label name"))
            elif label.name in seen_labels:
                problems.append(raw.diag(spec.where + ("labels", j, "name"), f"metric {spec.name!r}: the label "
                                         f"{label.name!r} is given twice", "give each label a name of its own"))
            seen_labels.add(label.name)


def _metric(raw: RawManifest, i: int, data: dict, problems: list) -> MetricSpec:
    where = ("metrics", i)
    labels = []
    for j, label in enumerate(data.get("labels") or ()):
        decode = label.get("decode", "enum" if "enum" in label else "integer")
        if decode == "enum" and not label.get("enum"):
            problems.append(raw.diag(where + ("labels", j), "decode: enum needs an 'enum' table of number: name"))
        labels.append(MetricLabel(label["name"], label.get("field"), decode,
                                  tuple((str(k), str(v)) for k, v in (label.get("enum") or {}).items())))
    return MetricSpec(name=data["name"], help=data.get("help", f"from map {data['map']}"),
                      type=data.get("type", "counter"), map=data["map"], value_field=data.get("value"),
                      labels=tuple(labels), where=where)


FREE_TEXT = frozenset({"description", "help"})  # the only strings that may hold newlines and tabs
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def _control_characters(raw: RawManifest, value, where: tuple, problems: list) -> None:
    """Every name (mapping key) and string of the document, free text aside, without control characters.

    A newline or NUL in a pin root, a path or a name would reach bpffs, the kernel or tc: the
    checks below skip such a value (it is reported here, once).
    """
    from bpfdeploy.manifest.load import control_character_message

    if isinstance(value, dict):
        for key, item in value.items():
            if _has_control(key):
                problems.append(raw.diag(where, control_character_message(key)))
            if key not in FREE_TEXT:
                _control_characters(raw, item, where + (key,), problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _control_characters(raw, item, where + (i,), problems)
    elif isinstance(value, str) and _has_control(value):
        problems.append(raw.diag(where, control_character_message(value)))


def _safe_path(raw: RawManifest, where: tuple, text: str, base: Path, problems: list) -> Path | None:
    """text as an absolute path, or None with a diagnostic when no file system call can take it."""
    if _has_control(text):
        return None  # reported by _control_characters
    try:
        return (base / text).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        problems.append(raw.diag(where, f"path {text[:80]!r} cannot be used: {getattr(exc, 'strerror', None) or exc}"))
        return None


def _is(check, path: Path) -> bool:
    """path.is_file()/is_dir()/exists() that says False instead of raising (a name too long, EACCES)."""
    try:
        return check(path)
    except (OSError, ValueError):
        return False


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _file_kind(path: Path) -> tuple[str, int]:
    """(what the path is, its size): 'missing', 'a regular file', 'directory', 'a FIFO (named pipe)', ...

    stat follows symlinks (a source may be a symlink to one); it never raises.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing", 0
    except (OSError, ValueError) as exc:
        return f"unreadable ({getattr(exc, 'strerror', None) or exc})", 0
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
    return kind, st.st_size


def _input_file(raw: RawManifest, where: tuple, what: str, path: Path, problems: list) -> None:
    """A source or object file: there, a regular file, and within the input size limit."""
    from bpfdeploy.limits import max_input_bytes, too_big

    kind, size = _file_kind(path)
    hint = f"looked for {path} (paths are relative to the manifest's directory)"
    if kind == "missing":
        problems.append(raw.diag(where, f"{what} not found", hint))
    elif kind != "a regular file":
        problems.append(raw.diag(where, f"{what} is {kind}, not a regular file", hint))
    elif size > max_input_bytes():
        problems.append(raw.diag(where, too_big(what, size, max_input_bytes()),
                                 "BPF sources and objects are rarely over a few MB; nothing was read"))


@lru_cache(maxsize=8)
def _real(path: Path) -> Path:
    return path.resolve()


def _items(value) -> list:
    return list(value.items()) if isinstance(value, dict) else []


def _tolerant(check, raw: RawManifest, where: tuple, problems: list, *args):
    """Run one item's checks; an item the schema already found malformed is skipped, not crashed on.

    If it fails in a way the schema did not foresee, that is an error at the item itself, so a
    manifest never loads with an item silently missing.
    """
    try:
        return check(raw, *args)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, StopIteration, OSError) as exc:
        problems.append(raw.diag(where, f"this item cannot be used: {exc}", severity=SHADOW))
        return None


SHADOW = "shadow"  # an error that stands only if the schema found nothing at or below its path


def _fmt(path: tuple) -> str:
    from bpfdeploy.manifest.paths import format_path

    return format_path(path)


def _pin_root(raw: RawManifest, value: str | None, name: str, problems: list) -> Path:
    if value is None:
        return Path(DEFAULT_PIN_BASE) / name
    root = Path(os.path.normpath(value))
    if _has_control(value):
        return root  # reported by _control_characters; no file system call may see it
    # Once a path is known to be bad, nothing more is asked about it: bpffs answers EPERM to any
    # lookup of a name with a dot, and the pin root is refused anyway.
    if ".." in Path(value).parts or "." in value:
        problems.append(raw.diag(("pin_root",), f"pin_root {value!r} may not contain '.' or '..'",
                                 "bpffs refuses names with a dot, and the pin root must stay inside /sys/fs/bpf"))
        return root
    if root == BPFFS or BPFFS not in root.parents:
        problems.append(raw.diag(("pin_root",), f"pin_root {value!r} must be a directory below /sys/fs/bpf",
                                 f"for example {DEFAULT_PIN_BASE}/{name}"))
        return root
    for part in [*reversed(root.parents), root]:
        if _is(Path.is_symlink, part):
            problems.append(raw.diag(("pin_root",), f"pin_root {value!r} goes through the symlink {part}",
                                     "a pin root must be a real directory inside /sys/fs/bpf"))
            break
    return root


def _object(raw: RawManifest, base: Path, name: str, data: dict, problems: list, must_exist: bool = True) -> ObjectSpec:
    where = ("objects", name)
    source = file = None
    if "source" in data:
        source = _safe_path(raw, where + ("source",), data["source"], base, problems)
        if source is None:
            return None
        if must_exist:
            _input_file(raw, where + ("source",), f"source file {data['source']!r}", source, problems)
    else:
        file = _safe_path(raw, where + ("file",), data["file"], base, problems)
        if file is None:
            return None
        if must_exist:
            _input_file(raw, where + ("file",), f"object file {data['file']!r}", file, problems)
    include_dirs = []
    for i, inc in enumerate(data.get("include_dirs") or ()):
        path = _safe_path(raw, where + ("include_dirs", i), inc, base, problems)
        if path is None:
            continue
        kind = _file_kind(path)[0] if must_exist else "a directory"
        if kind != "a directory":
            problems.append(raw.diag(where + ("include_dirs", i), f"include directory {inc!r} "
                                     + ("not found" if kind == "missing" else f"is {kind}, not a directory"),
                                     f"looked for {path}"))
        include_dirs.append(path)
    if file is not None:
        for key in ("cflags", "include_dirs", "defines", "vmlinux_h"):
            if key in data:
                problems.append(raw.diag(where + (key,), f"{key!r} applies only to an object built from 'source'",
                                         "a prebuilt 'file' is loaded as it is", severity="warning"))
    defines = tuple((k, None if v is None else _define_text(v)) for k, v in (data.get("defines") or {}).items())
    programs = None
    if data.get("programs"):
        programs = tuple(
            ProgramSpec(object=name, function=fn, pin=(pdata or {}).get("pin", fn),
                        type_override=(pdata or {}).get("type"), where=where + ("programs", fn),
                        access=_access(raw, where + ("programs", fn), pdata, problems))
            for fn, pdata in data["programs"].items()
        )
        for prog in programs:
            if "pin" not in ((data["programs"][prog.function]) or {}) and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}", prog.function):
                problems.append(raw.diag(prog.where, f"function name {prog.function!r} cannot be a pin name",
                                         "set 'pin' to a name of letters, digits, '_' and '-'"))
    renames = tuple((k, v) for k, v in (data.get("maps") or {}).items())
    return ObjectSpec(name=name, source=source, file=file, cflags=tuple(data.get("cflags") or ()),
                      include_dirs=tuple(include_dirs), defines=defines, vmlinux_h=bool(data.get("vmlinux_h")),
                      programs=programs, map_renames=renames, where=where,
                      globals=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in (data.get("globals") or {}).items()))


ACCESS_KEYS = ("owner", "group", "mode")


def _access(raw: RawManifest, where: tuple, data, problems: list) -> PinAccess | None:
    """owner/group/mode of a pin or the pin root; names are resolved here (an unknown one is an error)."""
    if not isinstance(data, dict) or not any(k in data for k in ACCESS_KEYS):
        return None
    import grp
    import pwd

    uid = gid = mode = None
    owner_name = group_name = ""
    owner, group = data.get("owner"), data.get("group")
    if owner is not None:
        try:
            entry = pwd.getpwuid(owner) if isinstance(owner, int) else pwd.getpwnam(str(owner))
            uid, owner_name = entry.pw_uid, entry.pw_name
        except (KeyError, OverflowError):
            if isinstance(owner, int):  # a numeric id needs no entry in /etc/passwd
                uid, owner_name = owner, str(owner)
            else:
                problems.append(raw.diag(where + ("owner",), f"no user {owner!r} on this host",
                                         "give an existing user name or a numeric uid"))
    if group is not None:
        try:
            entry = grp.getgrgid(group) if isinstance(group, int) else grp.getgrnam(str(group))
            gid, group_name = entry.gr_gid, entry.gr_name
        except (KeyError, OverflowError):
            if isinstance(group, int):
                gid, group_name = group, str(group)
            else:
                problems.append(raw.diag(where + ("group",), f"no group {group!r} on this host",
                                         "give an existing group name or a numeric gid"))
    if "mode" in data:
        text = data["mode"]
        if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3,4}", text):
            problems.append(raw.diag(where + ("mode",), f"mode {text!r} is not an octal permission string",
                                     "write it quoted, for example mode: \"0640\" (YAML reads an unquoted 0640 "
                                     "as the number 416)", severity=SHADOW))
        else:
            mode = int(text, 8)
    return PinAccess(uid, gid, mode, owner_name, group_name)


def _define_text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _map_settings(raw: RawManifest, name: str, data: dict, problems: list) -> MapSettings:
    where = ("maps", name)
    entries = tuple(
        MapEntry(key=_bytes_spec(e["key"]), value=_bytes_spec(e["value"]), where=where + ("entries", i))
        for i, e in enumerate(data.get("entries") or ())
    )
    return MapSettings(name=name, entries=entries,
                       entries_policy=EntriesPolicy(data.get("entries_policy", "enforce")),
                       recreate_if_incompatible=data.get("on_incompatible_change") == "recreate", where=where,
                       access=_access(raw, where, data, problems))


def _bytes_spec(value):
    return tuple(value) if isinstance(value, list) else value


def _attachment(raw: RawManifest, i: int, data: dict, cgroup_root: Path, problems: list,
                must_exist: bool = True) -> AttachmentSpec | None:
    where = ("attachments", i)
    at = hooks.attach_type(data["type"])
    if at is None:
        guess = difflib.get_close_matches(data["type"], hooks.attach_type_names(), n=1)
        problems.append(raw.diag(where + ("type",), f"unknown attach type {data['type']!r}",
                                 f"did you mean {guess[0]!r}?" if guess else
                                 "expected a cgroup type (ingress, sock_ops, connect4, ...), a sockmap verdict "
                                 "(msg_verdict, stream_verdict, stream_parser, skb_verdict), flow_dissector, "
                                 "a device hook (xdp, tc_ingress, tcx_ingress, ...) or a tracing hook "
                                 "(tracepoint, raw_tracepoint, tp_btf, uprobe, uretprobe, iter)"))
        if "cgroup" in data:  # still check the target, so every problem shows at once
            spec = data["cgroup"]
            path_text, create = (spec, False) if isinstance(spec, str) else (spec["path"], bool(spec.get("create")))
            _cgroup(raw, where + ("cgroup",), path_text, create, cgroup_root, problems, must_exist)
        return None
    fields = _TARGET_FIELDS
    needed = _needed_fields(at)
    for key in fields:
        if key in data and key not in needed[0] | needed[1]:
            problems.append(raw.diag(where + (key,), f"{key!r} does not apply to attach type {at.short[0]!r}",
                                     _target_hint(at)))
    missing = [k for k in sorted(needed[0]) if k not in data]
    if at.short[0] in ("uprobe", "uretprobe") and "symbol" not in data and "offset" not in data:
        missing.append("symbol or offset")
    for key in missing:
        problems.append(raw.diag(where, f"attach type {at.short[0]!r} needs '{key}'", _target_hint(at)))
    if missing or any(k in data and k not in needed[0] | needed[1] for k in fields):
        return None
    mode = AttachMode(data.get("mode", "link"))
    if mode.legacy and at.kind is not hooks.HookKind.CGROUP:
        problems.append(raw.diag(where + ("mode",), f"mode {mode.value!r} is only for cgroup hooks",
                                 "other attachments are pinned links (or tc filters for tc_ingress/tc_egress)"))
    cgroup = netns = binary = None
    target = ""
    if "netns" in data:
        text = data["netns"]
        netns = Path(text) if text.startswith("/") else NETNS_DIR / text
        if not text.startswith("/") and "/" in text:
            problems.append(raw.diag(where + ("netns",), f"netns {text!r} is neither a name nor an absolute path"))
        target = netns.name if netns.parent == NETNS_DIR else "netns"
    if at.kind is hooks.HookKind.CGROUP:
        spec = data["cgroup"]
        path_text, create = (spec, False) if isinstance(spec, str) else (spec["path"], bool(spec.get("create")))
        cgroup = _cgroup(raw, where + ("cgroup",), path_text, create, cgroup_root, problems, must_exist)
        if cgroup is None:
            return None
        target = str(cgroup.path.relative_to(cgroup_root)) if cgroup and cgroup.path != cgroup_root else "root"
    elif at.kind is hooks.HookKind.SOCKMAP:
        target = data["map"]
    elif at.kind is hooks.HookKind.DEVICE:
        target = f"{target}-{data['device']}" if target else data["device"]
    elif at.kind is hooks.HookKind.TRACE:
        if "binary" in data:
            is_library, binary = _library(raw, where + ("binary",), data["binary"], problems, must_exist)
            if not is_library:
                binary = _safe_path(raw, where + ("binary",), data["binary"], raw.base, problems)
            if binary is None:
                return None
            kind = _file_kind(binary)[0] if must_exist else "a regular file"
            if kind != "a regular file":
                problems.append(raw.diag(where + ("binary",), f"binary {data['binary']!r} "
                                         + ("not found" if kind == "missing" else f"is {kind}, not a regular file"),
                                         f"looked for {binary}"))
            target = f"{binary.name}-{data.get('symbol', '')}{'+' + str(data['offset']) if 'offset' in data else ''}"
        else:
            target = data.get("target", "")
            if at.short[0] == "tracepoint" and target.count("/") != 1:
                problems.append(raw.diag(where + ("target",), f"tracepoint {target!r} is not 'category/name'",
                                         "for example syscalls/sys_enter_execve"))
    name = data.get("name") if isinstance(data.get("name"), str) else \
        _UNSAFE.sub("_", "-".join(str(x) for x in (data["program"], at.short[0], target) if x))[:128]
    return AttachmentSpec(name=name, program=data["program"], attach_type=at, cgroup=cgroup,
                          map=data.get("map"), netns=netns, mode=mode, where=where, device=data.get("device"),
                          xdp_mode=data.get("xdp_mode"), priority=data.get("priority", 1), handle=data.get("handle", 1),
                          trace_target=data.get("target"), binary=binary, symbol=data.get("symbol"),
                          offset=data.get("offset"), pid=data.get("pid"),
                          optional=bool(data.get("optional", False)),
                          order=_order(raw, where, data, at, mode, problems))


def _library(raw, where, text, problems: list, must_exist: bool) -> tuple[bool, Path | None]:
    """A uprobe binary given as a library name (libc, libssl.so.3), resolved as ld.so would: (True, its
    path, or None with a diagnostic). (False, None) for a path; a file of that name beside the manifest
    is a path."""
    from bpfdeploy.libraries import looks_like_library_name, resolve_library

    if not isinstance(text, str) or not looks_like_library_name(text) \
            or _is(Path.exists, raw.base / text):
        return False, None
    found = resolve_library(text)
    if found is None:
        if not must_exist:  # destroy: the name is enough
            return True, Path(text)
        problems.append(raw.diag(where, f"library {text!r} is not in the dynamic linker's cache (ldconfig -p)",
                                 "give the library's path, or a name ldconfig -p lists (for example libc.so.6)"))
        return True, None
    return True, found.resolve()


_TARGET_FIELDS = ("cgroup", "map", "netns", "device", "xdp_mode", "priority", "handle", "target", "binary", "symbol",
                  "offset", "pid")


def _order(raw: RawManifest, where: tuple, data: dict, at, mode: AttachMode, problems: list) -> Order | None:
    """`order:` first | last | {before: NAME} | {after: NAME}, where the kernel can order the hook."""
    if "order" not in data:
        return None
    value = data["order"]
    if isinstance(value, str):
        order = Order(OrderKind(value))
    else:
        (key, anchor), = value.items()
        order = Order(OrderKind(key), anchor)
    why = ""
    if at.name == "xdp":
        why = ("the kernel cannot order XDP programs: a device runs one XDP program (several need a dispatcher "
               "program such as libxdp's, which bpfdeploy does not load)")
    elif at.tc_filter:
        why = "tc filters run in the order of their priority: set 'priority' instead"
    elif at.kind is hooks.HookKind.CGROUP and mode is not AttachMode.LINK:
        why = f"order is for cgroup links (mode: link); a legacy {mode.value} attach cannot be placed"
    elif at.kind not in (hooks.HookKind.CGROUP,) and at.name not in ("tcx_ingress", "tcx_egress"):
        why = f"a {at.short[0]} hook has no chain the kernel orders"
    if why:
        problems.append(raw.diag(where + ("order",), f"order cannot be kept on attach type {at.short[0]!r}: {why}",
                                 "order applies to cgroup links and tcx_ingress/tcx_egress"))
        return None
    return order


def _check_orders(raw: RawManifest, attachments: list, problems: list) -> None:
    """Anchors name another attachment on the same hook; one first and one last per hook; no cycles."""
    def hook(a):
        return (a.attach_type.value, str(a.cgroup.path) if a.cgroup else None, a.device, str(a.netns))
    by_name = {a.name: a for a in attachments}
    seen: dict[tuple, dict[str, str]] = {}
    for a in attachments:
        if a.order is None:
            continue
        where = a.where + ("order",)
        if a.order.anchor is not None:
            other = by_name.get(a.order.anchor)
            if other is None or other is a or hook(other) != hook(a):
                names = sorted(x.name for x in attachments if x is not a and hook(x) == hook(a))
                problems.append(raw.diag(where, f"order {a.order.describe()}: no other attachment named "
                                         f"{a.order.anchor!r} on the same hook",
                                         f"attachments on this hook: {', '.join(names)}" if names else
                                         "name an attachment of this manifest on the same hook"))
                continue
        if a.order.kind in (OrderKind.FIRST, OrderKind.LAST):
            taken = seen.setdefault(hook(a), {})
            if a.order.kind.value in taken:
                problems.append(raw.diag(where, f"two attachments want to be {a.order.kind.value} on this hook: "
                                         f"{taken[a.order.kind.value]!r} and {a.name!r}"))
            taken[a.order.kind.value] = a.name
    for a in attachments:  # a chain of before/after that comes back to itself cannot be built
        seen_names, cur = {a.name}, a
        while cur.order is not None and cur.order.anchor in by_name and cur.order.anchor != cur.name:
            cur = by_name[cur.order.anchor]
            if cur.name == a.name:
                problems.append(raw.diag(a.where + ("order",), f"order of {a.name!r} is circular: "
                                         "it comes back to itself through its anchors"))
                break
            if cur.name in seen_names:
                break  # a loop further on: reported at its own members
            seen_names.add(cur.name)


def _needed_fields(at) -> tuple[set[str], set[str]]:
    """(required, optional) target fields of an attach type."""
    kind, short = at.kind, at.short[0]
    if kind is hooks.HookKind.CGROUP:
        return {"cgroup"}, set()
    if kind is hooks.HookKind.SOCKMAP:
        return {"map"}, set()
    if kind is hooks.HookKind.NETNS:
        return {"netns"}, set()
    if kind is hooks.HookKind.DEVICE:
        extra = {"xdp_mode"} if short == "xdp" else {"priority", "handle"} if at.tc_filter else set()
        return {"device"}, {"netns"} | extra
    if short in ("uprobe", "uretprobe"):
        return {"binary"}, {"symbol", "offset", "pid"}
    if short in ("tracepoint", "raw_tracepoint", "kprobe", "kretprobe"):
        return {"target"}, set()
    return set(), set()  # tp_btf, iter: the program's SEC() names the hook


def _target_hint(at) -> str:
    required, optional = _needed_fields(at)
    if at.short[0] in ("uprobe", "uretprobe"):
        required = required | {"symbol or offset"}
    parts = []
    if required:
        parts.append("needs " + ", ".join(sorted(required)))
    if optional:
        parts.append("may have " + ", ".join(sorted(optional)))
    return f"{at.short[0]} " + ("; ".join(parts) if parts else "takes no target fields (its SEC() names the hook)")


def _cgroup(raw, where, text: str, create: bool, root: Path, problems: list, must_exist: bool = True
            ) -> CgroupTarget | None:
    if ".." in Path(text).parts:
        problems.append(raw.diag(where, f"cgroup path {text!r} may not contain '..'"))
        return None
    if _has_control(text):
        return None  # reported by _control_characters
    path = Path(os.path.normpath(text)) if text.startswith("/") else Path(os.path.normpath(root / text))
    if path != root and root not in path.parents:
        problems.append(raw.diag(where, f"cgroup path {text!r} is outside the cgroup v2 mount {root}",
                                 "give a path relative to the cgroup v2 mount, or an absolute path inside it"))
        return None
    if _is(Path.exists, path):
        real = path.resolve()
        if real != root and _real(root) not in real.parents:
            problems.append(raw.diag(where, f"cgroup path {text!r} leads outside the cgroup v2 mount (symlink)"))
    elif not create and must_exist:
        problems.append(raw.diag(where, f"cgroup {path} does not exist",
                                 "create it first, or write cgroup: {path: ..., create: true}"))
    return CgroupTarget(path, create)
