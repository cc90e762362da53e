"""The desired state: the manifest joined with what its built objects contain.

This is where object-level problems are found (a named program that is not in the object,
a map that two objects define differently, an attach type that does not fit the program)
and where every pin path of the deployment is decided:

    <pin_root>/maps/<map>      deployment maps (shared by name between objects)
    <pin_root>/progs/<pin>     programs
    <pin_root>/links/<name>    attachments held by bpf_links

Which build produced each live program is kept in the deployment record (record.py).
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path

from bpfdeploy import hooks
from bpfdeploy.model.built import BuiltObject, ObjectOrigin
from bpfdeploy.diagnostics import Diagnostic
from bpfdeploy.hooks import HookKind
from bpfdeploy.load_errors import bad_map_definitions
from bpfdeploy.manifest.paths import format_path
from bpfdeploy.manifest.model import EntriesPolicy, Manifest
# The desired types live in the model; re-exported here for the modules that build them.
from bpfdeploy.model.desired import (  # noqa: F401
    ENTRY_MAP_TYPES,
    DesiredAttachment,
    DesiredMap,
    DesiredProgram,
    DesiredState,
    MapGeometry,
)


def obj_origin(manifest: Manifest, obj) -> str:
    """An object's source or file, relative to the manifest's directory when it is below it."""
    path = Path(obj.source or obj.file)
    try:
        return str(path.relative_to(Path(manifest.file).resolve().parent))
    except ValueError:
        return str(path)


def resolve(manifest: Manifest, built: dict[str, BuiltObject], infos: dict,
            map_fields: dict | None = None) -> tuple[DesiredState | None, list[Diagnostic]]:
    """Join the manifest with its objects; every problem is collected.

    ``infos``: object name -> what the object holds; ``map_fields``: object name -> the BTF fields
    of its maps (for the metrics), both read beforehand by bpfdeploy/object_info.py: this
    function opens no object, runs no command and writes nothing."""
    problems: list[Diagnostic] = []
    file = str(manifest.file)

    def diag(where: tuple, message: str, hint: str = "") -> None:
        problems.append(Diagnostic(message, file, format_path(where), manifest.line_of(where), hint))

    root = manifest.pin_root
    programs: list[DesiredProgram] = []
    map_defs: dict[str, tuple[MapGeometry, str]] = {}  # deployment map -> (geometry, defining object)
    map_users: dict[str, list[str]] = {}

    for obj in manifest.objects:
        info = infos[obj.name]
        by_name = {p.name: p for p in info.programs}
        public_maps = {m.name: m for m in info.maps if not m.internal}
        for inner, _outer in obj.map_renames:
            if inner not in public_maps:
                diag(obj.where + ("maps", inner), f"object {obj.name!r} has no map named {inner!r}",
                     _choices(inner, public_maps))
        bindings = tuple((m, obj.deployment_map_name(m)) for m in sorted(public_maps))
        for map_name, reason in bad_map_definitions(info.maps):  # libbpf creates every map: refuse before load
            diag(obj.where, f"object {obj.name!r} ({obj_origin(manifest, obj)}) cannot load: {reason}")
        for inner, outer in bindings:
            m = public_maps[inner]
            geometry = MapGeometry(m.type, m.key_size, m.value_size, m.max_entries, m.flags)
            if outer in map_defs and not map_defs[outer][0].compatible_with(geometry):
                other_geometry, other = map_defs[outer]
                diag(obj.where, f"map {outer!r} is defined differently by objects {other!r} and {obj.name!r}",
                     f"{other}: {other_geometry.describe()}; {obj.name}: {geometry.describe()}")
            map_defs.setdefault(outer, (geometry, obj.name))
        specs = obj.programs
        if specs is None:
            from bpfdeploy.manifest.model import ProgramSpec

            specs = tuple(ProgramSpec(obj.name, p.name, p.name, None, obj.where) for p in info.programs)
            if not specs:
                diag(obj.where, f"object {obj.name!r} contains no BPF program")
        built_obj = built[obj.name]
        sizes = {g.name: g.size for g in getattr(info, "globals", ())}
        global_values = []
        for gname, value in obj.globals:
            where = obj.where + ("globals", gname)
            if gname not in sizes:
                diag(where, f"object {obj.name!r} has no global variable {gname!r}", _choices(gname, sizes))
                continue
            data = _encode_global(value, sizes[gname], where, diag)
            if data is not None:
                global_values.append((gname, data))
        global_values = tuple(global_values)
        globals_digest = "".join(f"{k}={v.hex()};" for k, v in global_values)
        for spec in specs:
            found = by_name.get(spec.function)
            if found is None:
                diag(spec.where, f"object {obj.name!r} has no program {spec.function!r}", _choices(spec.function, by_name))
                continue
            type_value = hooks.PROG_TYPES[spec.type_override] if spec.type_override else found.type
            if type_value == 0:
                diag(spec.where, f"libbpf does not know the program type of SEC({found.section!r})",
                     "set 'type' for this program (for example sched_cls or xdp)")
                continue
            prog_type = hooks.PROG_TYPE_NAMES.get(type_value, str(type_value))
            expected = None
            if spec.type_override:
                wanted = {a.attach_type.value for a in manifest.attachments
                          if a.program == spec.pin and a.attach_type.needs_expected}
                if len(wanted) > 1:
                    diag(spec.where, f"program {spec.pin!r} is attached to several hooks that each need the program "
                         "to be loaded for that hook", "load it once per hook: list it under another pin as well")
                    continue
                if wanted and found.expected_attach_type not in wanted:
                    expected = wanted.pop()
            digest = hashlib.sha256("\0".join([built_obj.digest, spec.function, prog_type, str(expected),
                                               globals_digest]).encode()).hexdigest()
            programs.append(DesiredProgram(
                pin_name=spec.pin, pin=root / "progs" / spec.pin, object=obj.name, function=spec.function,
                prog_type=prog_type, type_override=hooks.PROG_TYPES[spec.type_override] if spec.type_override else None,
                expected_attach_type=expected, digest=digest, object_path=built_obj.path, maps=bindings,
                globals=global_values, access=spec.access, origin=obj_origin(manifest, obj),
                from_artifacts=built_obj.origin is ObjectOrigin.ARTIFACTS))
            for _inner, outer in bindings:
                map_users.setdefault(outer, []).append(spec.pin)
    seen_pins: set[str] = set()
    for prog in programs:
        if prog.pin_name in seen_pins:
            diag(("objects", prog.object), f"two programs would be pinned as {prog.pin_name!r}",
                 "list the object's programs and give one a different 'pin'")
        seen_pins.add(prog.pin_name)
    # Pins of programs that failed above too, so attachments to them are not reported twice.
    known_pins = seen_pins | {spec.pin for o in manifest.objects for spec in (o.programs or ())}

    maps: list[DesiredMap] = []
    for settings in manifest.maps:
        if settings.name not in map_defs:
            diag(settings.where, f"no object defines a map {settings.name!r}", _choices(settings.name, map_defs))
    for name, (geometry, _obj) in sorted(map_defs.items()):
        settings = manifest.map_settings(name)
        entries: list[tuple[bytes, bytes]] = []
        if settings is not None and settings.entries:
            if geometry.type not in ENTRY_MAP_TYPES:
                diag(settings.where + ("entries",),
                     f"entries cannot be written to a {hooks.MAP_TYPE_NAMES.get(geometry.type, geometry.type)} map",
                     "entries are for hash, array, lru_hash and lpm_trie maps")
            else:
                for entry in settings.entries:
                    key = _encode(entry.key, geometry.key_size, entry.where + ("key",), diag)
                    value = _encode(entry.value, geometry.value_size, entry.where + ("value",), diag)
                    if key is not None and value is not None:
                        entries.append((key, value))
        maps.append(DesiredMap(
            name=name, pin=root / "maps" / name, geometry=geometry, entries=tuple(entries),
            entries_policy=settings.entries_policy if settings else EntriesPolicy.ENFORCE,
            recreate_if_incompatible=bool(settings and settings.recreate_if_incompatible),
            users=tuple(map_users.get(name, ())), access=settings.access if settings else None))

    for metric in manifest.metrics:
        if metric.map not in map_defs:
            diag(metric.where + ("map",), f"metric {metric.name!r} reads map {metric.map!r}, which no object defines",
                 _choices(metric.map, map_defs))
    _check_metric_fields(manifest, map_fields or {}, map_defs, diag)
    by_pin = {p.pin_name: p for p in programs}
    attachments: list[DesiredAttachment] = []
    for att in manifest.attachments:
        prog = by_pin.get(att.program)
        if prog is None:
            if att.program not in known_pins:
                diag(att.where + ("program",), f"no program is pinned as {att.program!r}", _choices(att.program, by_pin))
            continue
        at = att.attach_type
        if prog.prog_type not in at.program_types:
            diag(att.where + ("type",), f"attach type {at.short[0]!r} does not fit program {att.program!r} "
                 f"of type {prog.prog_type}", f"{at.short[0]} takes {' or '.join(at.program_types)} programs")
            continue
        if at.needs_expected:
            info = infos[prog.object]
            found = next(p for p in info.programs if p.name == prog.function)
            if at.value not in (found.expected_attach_type, prog.expected_attach_type):
                expected = hooks.BY_VALUE.get(found.expected_attach_type)
                diag(att.where + ("type",), f"program {att.program!r} was built for "
                     f"{expected.short[0] if expected else found.expected_attach_type}, not {at.short[0]}",
                     f"its section is SEC({found.section!r}); the kernel refuses the mismatch")
                continue
        if att.cgroup is not None:
            target, create = str(att.cgroup.path), att.cgroup.create
        elif att.map is not None:
            target, create = att.map, False
            desired_map = map_defs.get(att.map)
            if desired_map is None:
                diag(att.where + ("map",), f"no object defines a map {att.map!r}", _choices(att.map, map_defs))
                continue
            kind = hooks.MAP_TYPE_NAMES.get(desired_map[0].type, "")
            if kind not in hooks.SOCKMAP_TYPES:
                diag(att.where + ("map",), f"map {att.map!r} is a {kind}, not a sockmap or sockhash")
                continue
        elif att.device is not None:
            target, create = att.device + (f"@{att.netns}" if att.netns else ""), False
        elif at.kind is HookKind.TRACE:
            create = False
            if att.binary is not None:
                target = f"{att.binary}:{att.symbol or ''}+{att.offset or 0}" + (f" pid {att.pid}" if att.pid else "")
            elif att.trace_target:
                target = att.trace_target
            else:  # tp_btf, iter: the section names the hook
                found = next(p for p in infos[prog.object].programs if p.name == prog.function)
                target = found.section
        else:
            target, create = str(att.netns), False
        attachments.append(DesiredAttachment(
            name=att.name, pin=root / "links" / att.name, program=att.program, attach_type=at, target=target,
            mode=att.mode, create_cgroup=create, where=att.where, device=att.device,
            netns=str(att.netns) if att.netns and att.device else None, xdp_mode=att.xdp_mode,
            priority=att.priority, handle=att.handle, trace_target=att.trace_target,
            binary=str(att.binary) if att.binary else None, symbol=att.symbol, offset=att.offset, pid=att.pid,
            optional=att.optional, order=att.order))
    if problems:
        return None, problems
    return DesiredState(manifest.name, root, tuple(maps), tuple(programs), tuple(attachments),
                        manifest.pin_root_access), problems


def _check_metric_fields(manifest: Manifest, fields_of: dict, map_defs: dict, diag) -> None:
    """A metric's value field and label fields must exist in the map's BTF (when the BTF says).

    ``fields_of``: object name -> {object map name: MapFields}; an object missing from it is not checked."""
    wanted = [m for m in manifest.metrics if m.map in map_defs]
    for metric in wanted:
        obj_name = map_defs[metric.map][1]
        obj = next(o for o in manifest.objects if o.name == obj_name)
        if obj_name not in fields_of:
            continue
        inner = next((i for i in fields_of[obj_name] if obj.deployment_map_name(i) == metric.map), None)
        fields = fields_of[obj_name].get(inner) if inner else None
        if fields is None:
            continue
        value = fields.value
        if value is not None and metric.value_field is not None and metric.value_field not in value:
            diag(metric.where + ("value",), f"metric {metric.name!r}: the value of map {metric.map!r} has no field "
                 f"{metric.value_field!r}", ("its fields: " + ", ".join(sorted(value))) if value else
                 "its value is a plain number: leave 'value' out")
        elif value and metric.value_field is None:
            diag(metric.where, f"metric {metric.name!r}: the value of map {metric.map!r} is a struct; name the field "
                 "to read with 'value'", "its fields: " + ", ".join(sorted(value)))
        for j, label in enumerate(metric.labels):
            if fields.key is not None and label.field is not None and label.field not in fields.key:
                diag(metric.where + ("labels", j, "field"), f"metric {metric.name!r}: the key of map {metric.map!r} "
                     f"has no field {label.field!r}", ("its fields: " + ", ".join(sorted(fields.key))) if fields.key
                     else "its key is a plain number: leave 'field' out")


def _choices(name: str, options) -> str:
    options = sorted(options)
    if not options:
        return ""
    guess = difflib.get_close_matches(name, options, n=1)
    if guess:
        return f"did you mean {guess[0]!r}?"
    return f"available: {', '.join(options[:12])}"


def _encode_global(value, size: int, where: tuple, diag) -> bytes | None:
    """A global's value: like a map entry, plus booleans and plain strings for char arrays."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and not (value.startswith("0x") and len(value) % 2 == 0
                                       and all(c in "0123456789abcdefABCDEF" for c in value[2:])):
        data = value.encode()
        if len(data) >= size:
            diag(where, f"the string is {len(data)} bytes; the variable holds {size} (with its NUL)")
            return None
        return data.ljust(size, b"\0")
    return _encode(value, size, where, diag)


def _encode(value, size: int, where: tuple, diag) -> bytes | None:
    if isinstance(value, bool):
        diag(where, "expected an integer, a hex string or a list of bytes, found a boolean")
        return None
    if isinstance(value, int):
        try:
            return value.to_bytes(size, "little", signed=value < 0)
        except OverflowError:
            diag(where, f"{value} does not fit in {size} bytes")
            return None
    data = bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)
    if len(data) != size:
        diag(where, f"expected {size} bytes, found {len(data)}", "the map's key and value sizes come from the object")
        return None
    return data
