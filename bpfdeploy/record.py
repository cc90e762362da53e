"""The deployment record: what the kernel cannot tell us about our own objects.

The kernel knows what is loaded, pinned and attached; it does not know which build produced
a program, which legacy (non-link) attachments a deployment made, or which cgroups it
created. The record keeps exactly that, keyed by kernel ids, in one JSON file per deployment
under the state directory. It is written atomically by the applier only.

Every fact is tied to a program id and the boot it was made in, so a record never outlives
the kernel state it describes: after a reboot (new boot id) it is ignored, and a program
replaced by hand has a new id that the record does not vouch for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

RECORD_FORMAT = 1


def state_dir() -> Path:
    return Path(os.environ.get("BPFDEPLOY_STATE_DIR", "/var/lib/bpfdeploy"))


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class LegacyAttachment:
    """A legacy attach (no link): where it is, and which program id we put there."""

    name: str
    attach_type: int
    target: str  # cgroup path
    prog_id: int
    flags: int  # BPF_F_ALLOW_* used


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    pin_root: str
    boot_id: str
    # program id -> digest of the build that produced it
    digests: dict = field(default_factory=dict)
    legacy: tuple[LegacyAttachment, ...] = ()
    created_cgroups: tuple[str, ...] = ()
    manifest: str = ""

    def digest_of(self, prog_id: int) -> str | None:
        return self.digests.get(str(prog_id))

    def to_json(self) -> dict:
        return {"format": RECORD_FORMAT, "name": self.name, "pin_root": self.pin_root, "boot_id": self.boot_id,
                "manifest": self.manifest, "digests": dict(sorted(self.digests.items(), key=lambda kv: int(kv[0]))),
                "legacy": [vars_of(a) for a in self.legacy], "created_cgroups": list(self.created_cgroups)}


def vars_of(a: LegacyAttachment) -> dict:
    return {"name": a.name, "attach_type": a.attach_type, "target": a.target, "prog_id": a.prog_id, "flags": a.flags}


def record_path(name: str, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"{name}.json"


def read_record(name: str, pin_root: str, directory: Path | None = None, current_boot: str | None = None) -> Record:
    """The record of a deployment, or an empty one (none yet, another boot, unreadable)."""
    empty = Record(name=name, pin_root=pin_root, boot_id=current_boot or boot_id())
    try:
        data = json.loads(record_path(name, directory).read_text())
    except (OSError, ValueError):
        return empty
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT or data.get("boot_id") != empty.boot_id:
        return empty
    try:
        return Record(name=name, pin_root=data.get("pin_root", pin_root), boot_id=data["boot_id"],
                      digests={str(k): str(v) for k, v in data.get("digests", {}).items()},
                      legacy=tuple(LegacyAttachment(**a) for a in data.get("legacy", ())),
                      created_cgroups=tuple(data.get("created_cgroups", ())), manifest=data.get("manifest", ""))
    except (TypeError, KeyError):
        return empty


def write_record(record: Record, directory: Path | None = None) -> None:
    path = record_path(record.name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(record.to_json(), fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def remove_record(name: str, directory: Path | None = None) -> None:
    record_path(name, directory).unlink(missing_ok=True)


def other_deployments(name: str, directory: Path | None = None) -> list[tuple[str, str]]:
    """(name, pin root) of every other deployment with a record on this host."""
    out = []
    directory = directory or state_dir()
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return out
    for path in files:
        if path.stem == name:
            continue
        try:
            data = json.loads(path.read_text())
            out.append((str(data["name"]), str(data["pin_root"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
