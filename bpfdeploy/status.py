"""What is deployed and how it is doing: deployments on the host, one deployment in detail, map dumps.

Everything here reads; the one exception, turning kernel.bpf_stats_enabled on for a
measurement window, goes through kernel/apply.py like every other change.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from bpfdeploy.diagnostics import BpfdeployError
from bpfdeploy.kernel import runner
from bpfdeploy.manifest.model import DEFAULT_PIN_BASE
from bpfdeploy.model.frozen import field, frozen
from bpfdeploy.plan import Kind, Plan, Resource
from bpfdeploy.record import state_dir

STATE = {Kind.NOOP: "in sync", Kind.CREATE: "missing", Kind.UPDATE: "drifted", Kind.REPLACE: "drifted",
         Kind.DELETE: "not in the manifest"}


@frozen
class DeploymentSummary:
    name: str
    pin_root: str
    manifest: str
    programs: int
    links: int
    maps: int
    exists: bool


def list_deployments(directory: Path | None = None) -> list[DeploymentSummary]:
    """Every deployment on this host: from the records in the state directory and the default pin base."""
    directory = directory or state_dir()
    seen: dict[str, DeploymentSummary] = {}
    records = sorted(directory.glob("*.json")) if directory.is_dir() else []
    for path in records:
        try:
            data = json.loads(path.read_text())
            name, root, manifest = data["name"], data["pin_root"], data.get("manifest", "")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        seen[root] = _summary(name, root, manifest)
    base = Path(DEFAULT_PIN_BASE)
    if base.is_dir():
        for root in sorted(base.iterdir()):
            if str(root) not in seen and root.is_dir():
                seen[str(root)] = _summary(root.name, str(root), "")
    return sorted(seen.values(), key=lambda d: d.name)


def _summary(name: str, root: str, manifest: str) -> DeploymentSummary:
    def count(sub: str) -> int:
        try:
            return len(os.listdir(os.path.join(root, sub)))
        except OSError:
            return 0
    return DeploymentSummary(name, root, manifest, count("progs"), count("links"), count("maps"), os.path.isdir(root))


@frozen
class ProgramStatus:
    name: str
    id: int | None
    type: str
    attached: tuple[str, ...]  # hooks, as "type on target"
    state: str
    reason: str
    loaded_at: int | None
    run_cnt: int | None = None
    run_time_ns: int | None = None


@frozen
class MapStatus:
    name: str
    id: int | None
    geometry: str
    entries: int | None
    state: str
    reason: str


@frozen
class AttachmentStatus:
    name: str
    program: str
    hook: str
    state: str
    reason: str


@frozen(mutable=True)
class DeploymentStatus:
    name: str
    pin_root: str
    programs: list[ProgramStatus] = field(default_factory=list)
    maps: list[MapStatus] = field(default_factory=list)
    attachments: list[AttachmentStatus] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # live things the manifest no longer has
    conflicts: list[str] = field(default_factory=list)
    stats_window: float | None = None
    # Errors that stop every plan (a symlink or a pin the record does not list in the pin root, an
    # overlapping pin root): nothing can be compared until they are fixed.
    errors: list[str] = field(default_factory=list)

    @property
    def deployed(self) -> bool:
        """Whether anything of the deployment is in the kernel (False: never applied, or destroyed)."""
        return any(x.state != "missing" for x in [*self.programs, *self.maps, *self.attachments])

    @property
    def healthy(self) -> bool:
        return all(x.state == "in sync" for x in [*self.programs, *self.maps, *self.attachments]) \
            and not self.extra and not self.errors

    def counts(self) -> dict:
        progs = self.programs
        return {"programs_expected": len(progs), "programs_loaded": sum(p.id is not None for p in progs),
                "attachments_expected": len(self.attachments),
                "attachments_in_sync": sum(a.state == "in sync" for a in self.attachments),
                "drifted": sum(x.state != "in sync" for x in [*progs, *self.maps, *self.attachments]) + len(self.extra)}

    def to_json(self) -> dict:
        from bpfdeploy.model.frozen import asdict

        return {"deployment": self.name, "pin_root": self.pin_root, "healthy": self.healthy, "deployed": self.deployed,
                "summary": self.counts(),
                "stats_window_seconds": self.stats_window,
                "programs": [asdict(p) for p in self.programs], "maps": [asdict(m) for m in self.maps],
                "attachments": [asdict(a) for a in self.attachments], "not_in_manifest": self.extra,
                "conflicts": self.conflicts, "errors": self.errors}


def deployment_status(desired, live, plan: Plan, stats: dict | None = None, window: float | None = None
                      ) -> DeploymentStatus:
    """The plan read as a status: no-op is in sync, create is missing, update/replace is drift."""
    by_address = {a.address: a for a in plan.actions}
    out = DeploymentStatus(desired.name, str(desired.pin_root), conflicts=list(plan.conflicts), stats_window=window,
                           errors=[d.message for d in plan.errors])
    for p in desired.programs:
        action = by_address.get(f"prog/{p.pin_name}")
        live_prog = live.programs.get(str(p.pin))
        hooks = tuple(f"{a.attach_type.short[0]} on {a.target}" for a in desired.attachments if a.program == p.pin_name)
        run = (stats or {}).get(live_prog.id) if live_prog else None
        out.programs.append(ProgramStatus(
            p.pin_name, live_prog.id if live_prog else None, p.prog_type, hooks,
            STATE[action.kind] if action else "unknown", action.reason if action and action.kind is not Kind.NOOP else "",
            live_prog.loaded_at if live_prog else None,
            run[0] if run else None, run[1] if run else None))
    for m in desired.maps:
        action = by_address.get(f"map/{m.name}")
        live_map = live.maps.get(str(m.pin))
        out.maps.append(MapStatus(m.name, live_map.id if live_map else None,
                                  (live_map.geometry if live_map else m.geometry).describe(),
                                  count_entries(str(m.pin)) if live_map else None,
                                  STATE[action.kind] if action else "unknown",
                                  action.reason if action and action.kind is not Kind.NOOP else ""))
    for a in desired.attachments:
        action = by_address.get(f"attach/{a.name}")
        out.attachments.append(AttachmentStatus(a.name, a.program, a.hook_text(),
                                                STATE[action.kind] if action else "unknown",
                                                action.reason if action and action.kind is not Kind.NOOP else ""))
    out.extra = [f"{a.address} ({a.reason})" for a in plan.actions
                 if a.kind is Kind.DELETE and a.resource is not Resource.CGROUP]
    return out


def count_entries(pin: str) -> int | None:
    """Entries in a pinned map (walks its keys; no values are copied)."""
    from bpfdeploy.kernel import libbpf

    try:
        fd = libbpf.obj_get(pin)
    except Exception:
        return None
    try:
        return libbpf.map_count(fd)
    except Exception:
        return None
    finally:
        os.close(fd)


def program_stats(ids: set[int]) -> dict[int, tuple[int, int]]:
    """run_cnt and run_time_ns of programs (present only when bpf_stats has been on)."""
    result = runner.run(["bpftool", "-j", "prog", "show"])
    if result.returncode != 0:
        raise BpfdeployError(f"bpftool prog show failed: {result.error_text()}")
    out = {}
    for p in json.loads(result.stdout or "[]"):
        # bpftool prints the counters only once stats have counted something.
        if p["id"] in ids and ("run_cnt" in p or stats_on()):
            out[p["id"]] = (p.get("run_cnt", 0), p.get("run_time_ns", 0))
    return out


def stats_on() -> bool:
    try:
        return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "1"
    except OSError:
        return False


def measure_stats(ids: set[int], seconds: float) -> dict[int, tuple[int, int]]:
    """Run counts and run time over a window with kernel.bpf_stats_enabled on (restored afterwards)."""
    from bpfdeploy.kernel.apply import bpf_stats_enabled

    with bpf_stats_enabled():
        before = program_stats(ids)
        time.sleep(seconds)
        after = program_stats(ids)
    return {i: (after[i][0] - before.get(i, (0, 0))[0], after[i][1] - before.get(i, (0, 0))[1]) for i in after}


def pin_root_of(deployment: str) -> Path:
    """A deployment's pin root from its name (through its record) or from a manifest file."""
    path = Path(deployment)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        from bpfdeploy.manifest import load_manifest

        manifest, _ = load_manifest(path, files_must_exist=False)
        return manifest.pin_root
    record = state_dir() / f"{deployment}.json"
    try:
        return Path(json.loads(record.read_text())["pin_root"])
    except (OSError, ValueError, KeyError):
        return Path(DEFAULT_PIN_BASE) / deployment
