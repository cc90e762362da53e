"""Why an object cannot be opened or loaded here, said about the item that is at fault.

Objects written for other loaders fail in a few known ways. Some show in the ELF before
anything reaches the kernel (map definitions the kernel will refuse); the rest show in
libbpf's own messages when it opens or loads the object. libbpf names the culprit there
(``map 'events': failed to create``, ``prog 'drop': failed to load``), so a failure is
blamed on that map or program, not on whichever item of the object happened to be first,
and the object is named as the manifest names it (not by its build digest in the cache).

Pure functions only: unit-testable on recorded libbpf messages.
"""

from __future__ import annotations

import enum
import re

from bpfdeploy.model.frozen import frozen

# Map types (enum bpf_map_type) whose definitions the kernel checks for fixed sizes.
PERF_EVENT_ARRAY, RINGBUF = 4, 27


class FailureKind(enum.Enum):
    LEGACY_MAPS = "legacy_maps"  # SEC("maps") with struct bpf_map_def: libbpf >= 1.0 refuses it at open
    STATIC_PROGRAM = "static_program"  # a static entry function: libbpf 1.1 refuses it at open
    MAP_DEFINITION = "map_definition"  # a map the kernel will not create (checked in the ELF, before load)
    MAP_CREATE = "map_create"  # the kernel refused to create a map at load
    PROGRAM_LOAD = "program_load"  # the verifier (or the kernel) refused a program
    OTHER = "other"


@frozen
class LoadFailure:
    """One failure, with the item libbpf blamed (kind "map" or "program"; both empty if none)."""

    kind: FailureKind
    item_kind: str  # "map", "program" or ""
    item: str  # the map's or function's name in the object
    reason: str  # a sentence for the reader: what is wrong and what to do
    source_line: str = ""  # "file.c:12" from the verifier log's BTF line info, when it has one


_PROG = re.compile(r"prog '([^']+)': (?:BPF program load failed|failed to load)")
_MAP = re.compile(r"map '([^']+)': failed to create")
_MAP_XATTR = re.compile(r"Error in bpf_create_map_xattr\(([^)]+)\)")
_STATIC = re.compile(r"program '([^']+)' is static and not supported")
_LEGACY = "legacy map definitions in 'maps' section"
_SOURCE_LINE = re.compile(r"@ ([^\s@]+:\d+)\s*$")


def explain(log: str) -> LoadFailure:
    """The failure libbpf's messages (and the verifier log after them) describe."""
    if _LEGACY in log:
        return LoadFailure(FailureKind.LEGACY_MAPS, "", "",
                           "its maps are declared the legacy way (struct bpf_map_def in SEC(\"maps\")), which libbpf "
                           "1.0 and later refuse; rebuild it with BTF-defined maps in SEC(\".maps\")")
    m = _STATIC.search(log)
    if m:
        return LoadFailure(FailureKind.STATIC_PROGRAM, "program", m.group(1),
                           f"program '{m.group(1)}' is a static function, and libbpf 1.1 loads only global functions "
                           "as programs; remove 'static' from its definition and rebuild")
    m = _MAP.search(log) or _MAP_XATTR.search(log)
    if m:
        return LoadFailure(FailureKind.MAP_CREATE, "map", m.group(1),
                           f"the kernel refused to create map '{m.group(1)}'")
    m = _PROG.search(log)
    if m:
        return LoadFailure(FailureKind.PROGRAM_LOAD, "program", m.group(1),
                           f"the kernel refused program '{m.group(1)}'", source_line=source_line(log))
    return LoadFailure(FailureKind.OTHER, "", "", "")


def source_line(log: str) -> str:
    """The last source position the verifier printed (BTF line info: '; code @ file.c:12'), or ''."""
    found = ""
    for line in log.splitlines():
        m = _SOURCE_LINE.search(line.strip())
        if m and line.strip().startswith(";"):
            found = m.group(1)
    return found


def verifier_tail(log: str, lines: int = 12) -> str:
    """The useful end of a verifier log: its last lines, without the statistics line."""
    body = [line for line in log.splitlines() if line.strip()]
    body = [line for line in body if not line.strip().startswith(("processed ", "verification time"))]
    return "\n".join(body[-lines:])


def bad_map_definitions(maps) -> list[tuple[str, str]]:
    """(map name, reason) for each map of an object (libbpf ObjectMap) the kernel will not create.

    cilium/ebpf-style objects give a ringbuf or a perf event array a value type (the struct the
    program sends); cilium/ebpf ignores it, libbpf passes it on and the kernel refuses (EINVAL).
    """
    out = []
    for m in maps:
        if m.internal:
            continue
        if m.type == RINGBUF and (m.key_size or m.value_size):
            out.append((m.name, f"map '{m.name}' is a ringbuf with a key or value type (key {m.key_size}B, value "
                                f"{m.value_size}B); the kernel creates ringbufs only without them (EINVAL). Remove "
                                "__type(key, ...)/__type(value, ...) from its definition (cilium/ebpf ignores them, "
                                "libbpf does not)"))
        elif m.type == PERF_EVENT_ARRAY and (m.key_size not in (0, 4) or m.value_size not in (0, 4)):
            out.append((m.name, f"map '{m.name}' is a perf event array with key {m.key_size}B and value "
                                f"{m.value_size}B; the kernel needs 4-byte keys and values (CPU index and perf fd), "
                                "so it refuses this one (EINVAL). Declare __type(key, __u32) and __type(value, __u32), "
                                "or leave both out"))
    return out


def _errno_text(exc) -> str:
    import os

    err = getattr(exc, "errno", 0)
    return f"{os.strerror(err)} (errno {err})" if err else ""


def open_failure_message(obj_name: str, origin: str, exc, object_path: str = "") -> tuple[str, str]:
    """(message, hint) for an object libbpf could not open, naming it as the manifest does."""
    log = name_in_log(getattr(exc, "log", "") or "", object_path, origin)
    failure = explain(log)
    if failure.kind is not FailureKind.OTHER:
        return f"object {obj_name!r} ({origin}) cannot be opened: {failure.reason}", _libbpf_lines(log)
    detail = _errno_text(exc) or getattr(exc, "message", str(exc))
    return f"object {obj_name!r} ({origin}) cannot be opened by libbpf: {detail}", _libbpf_lines(log)


def _libbpf_lines(log: str, lines: int = 4) -> str:
    said = [line.strip().removeprefix("libbpf:").strip() for line in log.splitlines()
            if line.strip().startswith("libbpf:")]
    return ("libbpf said: " + " / ".join(said[-lines:])) if said else ""


def load_failure_message(obj_name: str, origin: str, exc) -> tuple[LoadFailure, str]:
    """The failure and a one-line message for a load that failed (apply or a trial load)."""
    log = getattr(exc, "log", "") or ""
    failure = explain(log)
    err = _errno_text(exc)
    where = f"object {obj_name!r} ({origin})" if origin else f"object {obj_name!r}"
    if failure.kind is FailureKind.PROGRAM_LOAD:
        refused = "the verifier refused it" if "verifier log" in log else "the kernel refused it"
        at = f" at {failure.source_line}" if failure.source_line else ""
        return failure, f"program {failure.item!r} of {where} failed to load{at}: {refused}" + (f" ({err})" if err else "")
    if failure.kind is FailureKind.MAP_CREATE:
        return failure, f"map {failure.item!r} of {where} could not be created" + (f": {err}" if err else "")
    if failure.kind is not FailureKind.OTHER:
        return failure, f"{where}: {failure.reason}"
    return failure, f"loading {where} failed: {err or getattr(exc, 'message', exc)}"


def name_in_log(log: str, object_path: str, origin: str) -> str:
    """libbpf's messages with the build cache's file name replaced by the object's source."""
    if not origin or not object_path:
        return log
    import os

    return log.replace(object_path, origin).replace(os.path.basename(object_path), origin)
