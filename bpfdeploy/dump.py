"""`bpfdeploy dump`: a deployment map's entries, or the globals its programs keep in .bss/.data/.rodata.

Entries come from `bpftool map dump -j` (formatted through BTF where the map has it) and are
normalised into one shape, pure and unit-tested on recorded dumps:

    {"key": K, "value": V}                                  a plain map
    {"key": K, "value": SUM, "per_cpu": [V0, V1, ...]}      a per-CPU map: each CPU's value, and their sum
    {"key": "TEXT", "key_raw": K, ...}                       a key decoded (ipv4, port, string, ...)
    {"key": "packets_seen", "value": 14}                     one global variable of .bss/.data/.rodata

Globals are not pinned (bpfdeploy never pins internal maps): they are found through the
deployment's pinned programs, whose `map_ids` include their object's .bss/.data/.rodata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bpfdeploy.decode import DECODE_KINDS, decode, per_cpu_sum, raw_bytes
from bpfdeploy.diagnostics import BpfdeployError
from bpfdeploy.kernel import runner
from bpfdeploy.model.frozen import frozen

GLOBAL_SECTIONS = (".bss", ".data", ".rodata")


@frozen
class KeyDecoder:
    """How to show a key: the whole key (field None) or one field of a key struct, as `kind`."""

    field: str | None
    kind: str
    enum: tuple[tuple[str, str], ...] = ()


def parse_key_decoder(text: str) -> KeyDecoder:
    """`--key-decode ipv4` or `--key-decode saddr=ipv4` (a field of the key struct)."""
    name, _, kind = text.rpartition("=")
    if kind not in DECODE_KINDS or kind == "enum":
        raise BpfdeployError(f"--key-decode {text!r}: expected [FIELD=]KIND with KIND one of "
                             + ", ".join(k for k in DECODE_KINDS if k != "enum"))
    return KeyDecoder(name or None, kind)


def _bpftool_json(argv: list[str], what: str):
    result = runner.run(["bpftool", "-j", *argv])
    if result.returncode != 0:
        raise BpfdeployError(f"cannot read {what}: {result.error_text()}")
    return json.loads(result.stdout or "[]")


# ---------------------------------------------------------------- pure: shaping entries


def decode_key(key, raw: bytes, decoders: tuple[KeyDecoder, ...]):
    """The key with the decoders applied (a struct keeps its other fields as they are)."""
    whole = next((d for d in decoders if d.field is None), None)
    if whole is not None:
        return decode(whole.kind, key, raw, whole.enum)
    if not isinstance(key, dict):
        return key
    out = dict(key)
    for d in decoders:
        if d.field in out:
            out[d.field] = decode(d.kind, out[d.field], b"", d.enum)
    return out


def normalise(entries: list[dict], decoders: tuple[KeyDecoder, ...] = ()) -> list[dict]:
    """bpftool's dump entries in dump's shape (see the module docstring)."""
    out = []
    for entry in entries:
        shown = entry.get("formatted") or entry
        key = shown.get("key", entry.get("key"))
        item: dict = {"key": key}
        if "values" in shown:  # per-CPU: [{"cpu": 0, "value": ...}, ...]
            per_cpu = [v.get("value") for v in shown["values"]]
            item["value"] = per_cpu_sum(per_cpu)
            item["per_cpu"] = per_cpu
        else:
            item["value"] = shown.get("value")
        if decoders:
            item["key"] = decode_key(key, raw_bytes(entry.get("key")), decoders)
            item["key_raw"] = key
        out.append(item)
    return out


def globals_entries(entries: list[dict], section: str) -> list[dict]:
    """The variables of a .bss/.data/.rodata dump, one entry each ({"key": name, "value": value})."""
    out = []
    for entry in entries:
        formatted = (entry.get("formatted") or {}).get("value")
        if isinstance(formatted, dict) and isinstance(formatted.get(section), list):
            for var in formatted[section]:
                out += [{"key": name, "value": value} for name, value in var.items()]
        else:  # no BTF: the section's bytes
            out.append({"key": section, "value": entry.get("value")})
    return out


# ---------------------------------------------------------------- reading


def dump_map(deployment: str, map_name: str, decoders: tuple[KeyDecoder, ...] = ()) -> list[dict]:
    """A deployment map's entries, or (map_name .bss/.data/.rodata, or PROGRAM:.bss) its globals."""
    from bpfdeploy.status import pin_root_of

    root = pin_root_of(deployment)
    program, _, section = map_name.rpartition(":")
    if section in GLOBAL_SECTIONS:
        return _dump_globals(deployment, root, program or None, section)
    if not decoders:
        decoders = manifest_key_decoders(deployment, map_name)
    pin = root / "maps" / map_name
    if not pin.exists():
        names = sorted(os.listdir(pin.parent)) if pin.parent.is_dir() else []
        raise BpfdeployError(f"deployment {deployment!r} has no map {map_name!r} (looked for {pin})"
                             + (f"; its maps: {', '.join(names)}" if names else "")
                             + "; the globals of its programs: .bss, .data, .rodata")
    return normalise(_bpftool_json(["map", "dump", "pinned", str(pin)], str(pin)), decoders)


def manifest_key_decoders(deployment: str, map_name: str) -> tuple[KeyDecoder, ...]:
    """The key decoders the manifest's metrics section gives this map (when DEPLOYMENT is a manifest)."""
    path = Path(deployment)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        return ()
    from bpfdeploy.manifest import load_manifest

    try:
        manifest, _ = load_manifest(path, files_must_exist=False)
    except BpfdeployError:
        return ()
    found: dict = {}
    for spec in manifest.metrics:
        if spec.map == map_name:
            for label in spec.labels:
                if label.decode != "integer":
                    found.setdefault(label.field, KeyDecoder(label.field, label.decode, label.enum))
    return tuple(found.values())


def _dump_globals(deployment: str, root: Path, program: str | None, section: str) -> list[dict]:
    progs_dir = root / "progs"
    pins = sorted(progs_dir.iterdir()) if progs_dir.is_dir() else []
    if program is not None:
        pins = [p for p in pins if p.name == program]
        if not pins:
            raise BpfdeployError(f"deployment {deployment!r} has no program {program!r} (looked in {progs_dir})")
    owners: dict[int, list[str]] = {}  # internal map id -> programs using it
    names: dict[int, str] = {}
    for pin in pins:
        prog = _bpftool_json(["prog", "show", "pinned", str(pin)], str(pin))
        for map_id in prog.get("map_ids", ()):
            if map_id not in names:
                names[map_id] = _bpftool_json(["map", "show", "id", str(map_id)], f"map id {map_id}").get("name", "")
            if names[map_id].endswith(section):
                owners.setdefault(map_id, []).append(pin.name)
    if not owners:
        raise BpfdeployError(f"no program of deployment {deployment!r} has a {section} section"
                             + (f" (looked at {', '.join(p.name for p in pins)})" if pins else " (it has no programs)"))
    if len(owners) > 1:
        choices = ", ".join(f"{progs[0]}:{section}" for progs in owners.values())
        raise BpfdeployError(f"the programs of deployment {deployment!r} come from several objects, each with its "
                             f"own {section}: name one, as {choices}")
    map_id = next(iter(owners))
    return globals_entries(_bpftool_json(["map", "dump", "id", str(map_id)], f"{section} (map id {map_id})"), section)
