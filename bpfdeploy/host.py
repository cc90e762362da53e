"""Facts about this host that the manifest's paths depend on: where cgroup v2, bpffs and tracefs are."""

from __future__ import annotations

from pathlib import Path

from bpfdeploy.model.frozen import frozen


@frozen
class Mounts:
    cgroup2: Path | None  # first cgroup2 mount (/sys/fs/cgroup/unified on a hybrid host)
    bpffs: tuple[Path, ...]  # every bpf file system mount
    tracefs: Path | None


def read_mounts(text: str | None = None) -> Mounts:
    if text is None:
        text = Path("/proc/self/mounts").read_text()
    cgroup2 = tracefs = None
    bpffs = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        where, fstype = Path(fields[1].replace("\\040", " ")), fields[2]
        if fstype == "cgroup2" and cgroup2 is None:
            cgroup2 = where
        elif fstype == "bpf":
            bpffs.append(where)
        elif fstype == "tracefs" and tracefs is None:
            tracefs = where
    return Mounts(cgroup2=cgroup2, bpffs=tuple(bpffs), tracefs=tracefs)


def cgroup2_root(mounts: Mounts | None = None) -> Path:
    """The cgroup v2 mount; /sys/fs/cgroup when none is mounted (paths are then reported missing)."""
    mounts = mounts or read_mounts()
    return mounts.cgroup2 or Path("/sys/fs/cgroup")
