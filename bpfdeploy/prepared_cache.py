"""A cache of prepared manifests: the no-op plan's shortcut past YAML, checks, digests and objects.

Preparing a manifest (parse, schema and semantic checks, source digests, object inspection,
resolution) is pure given its inputs, so its result is kept, pickled, under a key made of the
manifest's path and bytes, and is used again only while every file it was made from is unchanged:
the manifest, the schema, every source, header, object file and include directory (by size,
mtime and inode), the clang binary, the kernel's BTF, and bpfdeploy's own code.

The checks also look at paths they do not read: a uprobe's `binary` must exist, a cgroup named
without `create` must exist, and an existing cgroup must not lead out of the cgroup mount. Those
paths are stamped by presence (what they are and where they lead, not their mtime: a cgroup's
directory changes whenever a process or child cgroup comes and goes), so removing one sends
`validate` back through the checks. Anything else (devices, netns, pins) is read live by every plan.
"""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

FORMAT = b"bpfdeploy-prepared-3"
_CODE_DIR = Path(__file__).resolve().parent


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)


def _presence(path: str, must_exist: bool = True, parents: dict | None = None) -> tuple:
    """What a path is and where it leads, for checks that only ask whether it exists (and is inside a mount).

    must_exist False (a cgroup with `create`): only where it leads counts, so that the apply that
    creates it does not throw the prepared manifest away. ``parents`` keeps the real paths of
    directories already resolved, for a manifest of thousands of cgroups under one parent.
    """
    if not must_exist:
        return (path, must_exist, _realpath(path, parents))
    try:
        st = os.stat(path)
    except OSError:
        return (path, must_exist, None)
    return (path, must_exist, "dir" if os.path.isdir(path) else "file", st.st_ino, _realpath(path, parents))


def _realpath(path: str, parents: dict | None) -> str:
    """os.path.realpath, resolving each parent directory once: the real path of a/b is the real
    path of a joined with b, unless b itself is a symlink (or the path is not plain)."""
    if parents is None or not path.startswith("/") or "/." in path or "//" in path or path.endswith("/"):
        return os.path.realpath(path)
    parent, base = os.path.split(path)
    if not base or os.path.islink(path):
        return os.path.realpath(path)
    real_parent = parents.get(parent)
    if real_parent is None:
        real_parent = parents[parent] = os.path.realpath(parent)
    return os.path.join(real_parent, base)


def _presence_paths(prepared) -> list[tuple[str, bool]]:
    paths = []
    for att in prepared.manifest.attachments:
        if att.cgroup is not None:
            paths.append((str(att.cgroup.path), not att.cgroup.create))
        if att.binary is not None:
            paths.append((str(att.binary), True))
    return paths


def _code_stamps() -> list[tuple]:
    return [_stamp(str(p)) for p in sorted(_CODE_DIR.rglob("*.py"))]


def _key(manifest: Path, cache: Path, variant: bytes = b"") -> tuple[Path, bytes]:
    """The entry's file and the identity it must hold: format, manifest path, artifact set, manifest bytes.

    The file is named by CRC-32s (zlib: hashlib would load OpenSSL, 2.7 ms of a no-op plan) and
    holds the whole identity, which load() compares: a clash of names only misses the cache."""
    # variant: what the objects come from (b"": a local build; else the artifact set), so that a
    # locally built result is never served to a deploy from artifacts, or the reverse.
    from bpfdeploy.limits import MAX_MANIFEST_BYTES

    with open(manifest, "rb") as fh:
        text = fh.read(MAX_MANIFEST_BYTES + 1)  # never more: the loader refuses a larger manifest
    if len(text) > MAX_MANIFEST_BYTES:
        raise OSError(f"{manifest} is over the manifest size limit")  # not cached; the loader says why
    where = FORMAT + b"\0" + str(manifest.resolve()).encode() + b"\0" + variant
    name = f"{zlib.crc32(where):08x}-{zlib.crc32(text):08x}-{len(text)}.pickle"
    return cache / "prepared" / name, where + b"\0" + text


LD_SO_CACHE = "/etc/ld.so.cache"


def _inputs(prepared) -> list[str]:
    from bpfdeploy.build import VMLINUX_BTF, local_headers
    from bpfdeploy.manifest.paths import SCHEMA_PATH

    files = [str(SCHEMA_PATH)]
    for obj in prepared.manifest.objects:
        if obj.file is not None:
            files.append(str(obj.file))
            continue
        files.append(str(obj.source))
        files += [str(h) for h in local_headers(obj.source, obj.include_dirs)]
        files += [str(d) for d in obj.include_dirs]
        if obj.vmlinux_h:
            files.append(str(VMLINUX_BTF))
    files += [str(b.path) for b in prepared.built.values()]
    if _uses_names(prepared.manifest):  # owner and group names were resolved through these
        files += ["/etc/passwd", "/etc/group"]
    if any(att.binary is not None for att in prepared.manifest.attachments):
        files.append(LD_SO_CACHE)  # a uprobe `binary: libc` was resolved through it (libraries.py)
    from bpfdeploy.kernel.runner import which

    clang = which("clang")
    if clang:
        files.append(os.path.realpath(clang))
    return files


def load(manifest: Path, cache: Path, variant: bytes = b""):
    """The prepared manifest if nothing it was made from has changed, else None."""
    try:
        path, identity = _key(manifest, cache, variant)
        with open(path, "rb") as fh:
            stored, inputs, presence, code, prepared = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError, TypeError):
        return None
    parents: dict = {}
    if stored != identity or code != _code_stamps() or any(_stamp(stamp[0]) != stamp for stamp in inputs) \
            or any(_presence(stamp[0], stamp[1], parents) != stamp for stamp in presence):
        return None
    return prepared


def store(manifest: Path, cache: Path, prepared, variant: bytes = b"") -> None:
    try:
        path, identity = _key(manifest, cache, variant)
        if getattr(prepared, "provenance", None) is not None:
            from bpfdeploy.model.frozen import replace

            prepared = replace(prepared, provenance=None)  # verified again at every use
        inputs = [_stamp(f) for f in _inputs(prepared)]
        parents: dict = {}
        presence = [_presence(p, must, parents) for p, must in _presence_paths(prepared)]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as fh:
            pickle.dump((identity, inputs, presence, _code_stamps(), prepared), fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass  # no cache: prepare in full next time


def _uses_names(manifest) -> bool:
    accesses = [manifest.pin_root_access, *(m.access for m in manifest.maps),
                *(p.access for o in manifest.objects for p in (o.programs or ()))]
    return any(a is not None and (a.owner_name or a.group_name) for a in accesses)
