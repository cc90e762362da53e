"""What a built object holds (programs, maps, globals), read from its ELF through libbpf.

Kept out of desired.py so that the desired state is pure: resolve() joins the manifest with the
infos it is handed and neither opens files nor writes them. This module is not in kernel/ since
it changes nothing in the kernel: libbpf only parses the ELF and its BTF here (no load). It
keeps a JSON copy per build digest under the build cache, because opening an object through
ctypes and libbpf costs time a warm plan must not pay.
"""

from __future__ import annotations

import json
from pathlib import Path

from bpfdeploy.model.built import BuiltObject
from bpfdeploy.model.frozen import asdict

OBJECT_INFO_FORMAT = 2


def object_info(built: BuiltObject, cache: Path | None):
    """Programs and maps of a built object; cached beside it by digest (opening ELF costs time)."""
    from bpfdeploy.kernel import libbpf  # ctypes and libbpf.so only when an object is opened

    cached = cache / "objects" / f"{built.digest}.json" if cache else None
    if cached is not None and cached.exists():
        try:
            data = json.loads(cached.read_text())
            if data.get("format") == OBJECT_INFO_FORMAT:
                return libbpf.ObjectInfo(tuple(libbpf.ObjectProgram(**p) for p in data["programs"]),
                                         tuple(libbpf.ObjectMap(**m) for m in data["maps"]),
                                         tuple(libbpf.ObjectGlobal(**g) for g in data["globals"]))
        except (ValueError, KeyError, TypeError):
            pass
    info = libbpf.inspect_object(str(built.path))
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": OBJECT_INFO_FORMAT, "programs": [asdict(p) for p in info.programs],
                                       "maps": [asdict(m) for m in info.maps],
                                       "globals": [asdict(g) for g in info.globals]}))
            tmp.replace(cached)
        except OSError:
            pass
    return info


def metric_map_fields(manifest, built: dict[str, BuiltObject], infos: dict) -> dict[str, dict]:
    """The BTF fields of the maps of each object that defines a map a metric reads, by object name.

    Only those objects are read (bpftool runs once per object), so a manifest without metrics
    costs nothing; resolve() checks the metrics' fields against what this returns."""
    wanted = {m.map for m in manifest.metrics}
    if not wanted:
        return {}
    from bpfdeploy.btf_fields import read_map_fields  # runs bpftool: only when a metric asks

    fields = {}
    for obj in manifest.objects:
        info = infos.get(obj.name)
        if info is None or obj.name not in built:
            continue
        if any(obj.deployment_map_name(m.name) in wanted for m in info.maps if not m.internal):
            fields[obj.name] = read_map_fields(built[obj.name].path)
    return fields
