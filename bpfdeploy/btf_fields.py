"""Which fields a map's key and value have, from the BTF of a built object.

`bpfdeploy metrics` reads a value (or key) field by its dotted name in bpftool's BTF-formatted
dump (``packets``, ``stats.drops``). `validate` checks those names against the object's BTF, so
that a typo is an error naming the manifest line instead of a metric that silently stays empty.

The BTF comes from `bpftool btf dump file OBJ -j` (a file read: no root, no kernel object);
parsing is pure, so it is tested on recorded output.
"""

from __future__ import annotations

import json
from pathlib import Path

from bpfdeploy.model.frozen import frozen

# Kinds that only qualify another type: look through them to the type they name.
_QUALIFIERS = {"TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"}
_RECORDS = {"STRUCT", "UNION"}


@frozen
class MapFields:
    """The dotted field names of a map's key and value. None: the object's BTF does not say
    (a map defined without __type, or no BTF at all), so nothing can be checked."""

    key: frozenset[str] | None
    value: frozenset[str] | None


def parse_map_fields(btf: dict) -> dict[str, MapFields]:
    """{map name: MapFields} from bpftool's BTF JSON of an object (maps defined in ``.maps``)."""
    types = {t["id"]: t for t in btf.get("types", ()) if isinstance(t, dict) and "id" in t}
    out: dict[str, MapFields] = {}
    for sec in types.values():
        if sec.get("kind") != "DATASEC" or sec.get("name") != ".maps":
            continue
        for var_ref in sec.get("vars", ()):
            var = types.get(var_ref.get("type_id"))
            if not var or var.get("kind") != "VAR":
                continue
            definition = _resolve(types, var.get("type_id"))
            if not definition or definition.get("kind") not in _RECORDS:
                continue
            members = {m.get("name"): m.get("type_id") for m in definition.get("members", ())}
            out[var["name"]] = MapFields(_pointee_fields(types, members.get("key")),
                                         _pointee_fields(types, members.get("value")))
    return out


def _resolve(types: dict, type_id) -> dict | None:
    seen = set()
    t = types.get(type_id)
    while t is not None and t.get("kind") in _QUALIFIERS and t["id"] not in seen:
        seen.add(t["id"])
        t = types.get(t.get("type_id"))
    return t


def _pointee_fields(types: dict, ptr_id) -> frozenset[str] | None:
    """__type(key, T) is a member of type T*: the fields of T (empty for a scalar or an array)."""
    ptr = types.get(ptr_id)
    if ptr is None or ptr.get("kind") != "PTR":
        return None
    target = _resolve(types, ptr.get("type_id"))
    if target is None:
        return None
    names: set[str] = set()
    _collect(types, target, "", names, depth=0)
    return frozenset(names)


def _collect(types: dict, t: dict, prefix: str, names: set[str], depth: int) -> None:
    if t.get("kind") not in _RECORDS or depth > 16:
        return
    for m in t.get("members", ()):
        inner = _resolve(types, m.get("type_id"))
        name = m.get("name") or ""
        if name in ("", "(anon)"):  # an anonymous struct/union: its members are reached directly
            if inner is not None:
                _collect(types, inner, prefix, names, depth + 1)
            continue
        path = prefix + name
        names.add(path)
        if inner is not None:
            _collect(types, inner, path + ".", names, depth + 1)


def read_map_fields(obj: Path) -> dict[str, MapFields]:
    """The map fields of a built object; {} when bpftool cannot read its BTF (nothing is checked)."""
    from bpfdeploy.kernel import runner

    result = runner.run(["bpftool", "-j", "btf", "dump", "file", str(obj)])
    if result.returncode != 0:
        return {}
    try:
        return parse_map_fields(json.loads(result.stdout or "{}"))
    except (ValueError, AttributeError, TypeError):
        return {}
