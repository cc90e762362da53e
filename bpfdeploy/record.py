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
from functools import lru_cache
from pathlib import Path

from bpfdeploy.model.frozen import field, frozen

RECORD_FORMAT = 1


def state_dir() -> Path:
    return Path(os.environ.get("BPFDEPLOY_STATE_DIR", "/var/lib/bpfdeploy"))


@lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


@frozen
class LegacyAttachment:
    """A legacy attach (no link): where it is, and which program id we put there."""

    name: str
    attach_type: int  # a kernel attach type, or hooks.TC_INGRESS / TC_EGRESS for a tc filter
    target: str  # cgroup path, or "device[@netns file]" for a tc filter
    prog_id: int
    flags: int  # BPF_F_ALLOW_* used
    priority: int = 0  # tc filter pref and handle
    handle: int = 0


@frozen
class Record:
    name: str
    pin_root: str
    boot_id: str
    # program id -> digest of the build that produced it
    digests: dict = field(default_factory=dict)
    legacy: tuple[LegacyAttachment, ...] = ()
    created_cgroups: tuple[str, ...] = ()
    manifest: str = ""
    # link name -> the hook it was made for, where the kernel does not say (device, tracepoint, uprobe)
    link_targets: dict = field(default_factory=dict)
    created_qdiscs: tuple[str, ...] = ()  # "device[@netns file]" where we added the clsact qdisc
    # Every pin the deployment made under its pin root. A pin the record does not list is not
    # ours: the planner refuses it instead of deleting it. None: a record written before pins were
    # recorded (same boot), which vouches for the layout (maps/, progs/, links/) as it used to.
    pins: tuple[str, ...] | None = ()
    # Directories above the pin root that apply created (destroy removes those, when empty, and
    # keeps every directory it did not create, /sys/fs/bpf/bpfdeploy included).
    created_dirs: tuple[str, ...] = ()

    def owns_pin(self, pin: str) -> bool:
        return self.pins is None or pin in self.pins

    def digest_of(self, prog_id: int) -> str | None:
        return self.digests.get(str(prog_id))

    def to_json(self) -> dict:
        return {"format": RECORD_FORMAT, "name": self.name, "pin_root": self.pin_root, "boot_id": self.boot_id,
                "manifest": self.manifest, "digests": dict(sorted(self.digests.items(), key=lambda kv: int(kv[0]))),
                "legacy": [vars_of(a) for a in self.legacy], "created_cgroups": list(self.created_cgroups),
                "link_targets": dict(sorted(self.link_targets.items())), "created_qdiscs": list(self.created_qdiscs),
                **({"pins": sorted(self.pins)} if self.pins is not None else {}),
                "created_dirs": list(self.created_dirs)}


def vars_of(a: LegacyAttachment) -> dict:
    return {"name": a.name, "attach_type": a.attach_type, "target": a.target, "prog_id": a.prog_id, "flags": a.flags,
            "priority": a.priority, "handle": a.handle}


def record_path(name: str, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"{name}.json"


def journal_path(name: str, directory: Path | None = None) -> Path:
    return (directory or state_dir()) / f"{name}.journal"


class Journal:
    """The journal of one apply, kept open while it runs (one write per fact)."""

    def __init__(self, name: str, directory: Path | None = None):
        self.name, self.directory = name, directory
        self.fd: int | None = None

    def append(self, entry: dict) -> None:
        if self.fd is None:
            path = journal_path(self.name, self.directory)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self.fd, (json.dumps({"boot_id": boot_id(), **entry}) + "\n").encode())

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _with_journal(record: Record, directory: Path | None) -> Record:
    """Merge what an interrupted apply journaled into the record (same boot only)."""
    try:
        lines = journal_path(record.name, directory).read_text().splitlines()
    except OSError:
        return record
    digests, legacy, cgroups = dict(record.digests), {a.name: a for a in record.legacy}, set(record.created_cgroups)
    targets, qdiscs = dict(record.link_targets), set(record.created_qdiscs)
    pins, dirs = (set(record.pins) if record.pins is not None else None), set(record.created_dirs)
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if entry.get("boot_id") != record.boot_id:
            continue
        if "digest" in entry:
            digests[str(entry["digest"][0])] = str(entry["digest"][1])
        elif "cgroup" in entry:
            cgroups.add(entry["cgroup"])
        elif "link_target" in entry:
            targets[entry["link_target"][0]] = entry["link_target"][1]
        elif "qdisc" in entry:
            qdiscs.add(entry["qdisc"])
        elif "pin" in entry:  # written before the pin is made, so a kill leaves nothing unowned
            if pins is not None:
                pins.add(str(entry["pin"]))
        elif "dir" in entry:
            dirs.add(str(entry["dir"]))
        elif "legacy" in entry:
            try:
                a = LegacyAttachment(**entry["legacy"])
                legacy[a.name] = a
            except TypeError:
                continue
    return Record(record.name, record.pin_root, record.boot_id, digests, tuple(legacy.values()),
                  tuple(sorted(cgroups)), record.manifest, targets, tuple(sorted(qdiscs)),
                  tuple(sorted(pins)) if pins is not None else None, tuple(sorted(dirs)))


def read_record(name: str, pin_root: str, directory: Path | None = None, current_boot: str | None = None) -> Record:
    """The record of a deployment (with any journal of an interrupted apply merged in),
    or an empty one (none yet, another boot, unreadable)."""
    return _with_journal(_read_record_file(name, pin_root, directory, current_boot), directory)


def _read_record_file(name: str, pin_root: str, directory: Path | None, current_boot: str | None) -> Record:
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
                      created_cgroups=tuple(data.get("created_cgroups", ())), manifest=data.get("manifest", ""),
                      link_targets={str(k): str(v) for k, v in data.get("link_targets", {}).items()},
                      created_qdiscs=tuple(data.get("created_qdiscs", ())),
                      pins=tuple(map(str, data["pins"])) if "pins" in data else None,
                      created_dirs=tuple(map(str, data.get("created_dirs", ()))))
    except (TypeError, KeyError):
        return empty


def write_record(record: Record, directory: Path | None = None) -> None:
    path = record_path(record.name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(record.to_json(), fh, indent=1)
    tmp.replace(path)  # atomic; no fsync needed: the state it describes does not outlive a reboot
    journal_path(record.name, directory).unlink(missing_ok=True)  # the record now holds it all


def remove_record(name: str, directory: Path | None = None) -> None:
    record_path(name, directory).unlink(missing_ok=True)
    journal_path(name, directory).unlink(missing_ok=True)


def other_deployments(name: str, directory: Path | None = None) -> list[tuple[str, str]]:
    """(name, pin root) of every other deployment with a record on this host."""
    out = []
    directory = directory or state_dir()
    try:
        files = sorted(directory.glob("*.json"))
    except OSError:
        return out
    for path in files:
        if path.stem == name or ".tmp" in path.name:
            continue
        try:
            data = json.loads(path.read_text())
            out.append((str(data["name"]), str(data["pin_root"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
