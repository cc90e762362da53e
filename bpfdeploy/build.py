"""Build C sources with clang, with a content-hash cache.

The digest of an object covers everything that decides its bytes: the source, the local
headers it includes (found by following ``#include`` lines), flags, defines, the clang
binary and, with ``vmlinux_h``, the kernel's BTF. An unchanged digest means no clang
process at all. A prebuilt object's digest is the hash of its bytes.

The digest is also what the planner compares to decide that a program must be replaced
(the applier keeps it in the deployment record, see ``record.py``). It does not depend on
where the manifest lives (paths are hashed relative to the source's directory), so a host
that builds locally and one that deploys artifacts built elsewhere (``artifacts.py``) record
the same digest for the same inputs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Callable

from bpfdeploy.caches import cache_dir  # noqa: F401 - re-exported: build's callers ask it where the cache is
from bpfdeploy.diagnostics import BuildError, Diagnostic
from bpfdeploy.kernel import runner
from bpfdeploy.manifest.model import Manifest, ObjectSpec
from bpfdeploy.model.built import BuiltObject, ObjectOrigin  # noqa: F401 - re-exported

BUILD_FORMAT = "bpfdeploy-build-1"  # prebuilt `file` objects (their digest is unchanged since format 1)
SOURCE_FORMAT = "bpfdeploy-build-2"  # `source` objects: path-independent since format 2
INPUTS_FORMAT = "bpfdeploy-inputs-1"
VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")
_INCLUDE = re.compile(rb'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
_ARCH = {"x86_64": ("x86", "x86_64-linux-gnu"), "aarch64": ("arm64", "aarch64-linux-gnu"),
         "arm64": ("arm64", "aarch64-linux-gnu"), "s390x": ("s390", "s390x-linux-gnu"),
         "ppc64le": ("powerpc", "powerpc64le-linux-gnu")}


def clang_identity() -> str:
    """What the digest knows of the compiler: its real path, size and modification time."""
    return _clang_identity()


def btf_identity() -> str:
    """What the digest of a `vmlinux_h` object knows of the kernel: its release and BTF size."""
    return _btf_identity()


def _clang_identity() -> str:
    clang = shutil.which("clang")
    if clang is None:
        return "clang-missing"
    st = os.stat(os.path.realpath(clang))
    return f"{os.path.realpath(clang)}:{st.st_size}:{int(st.st_mtime)}"


def _btf_identity() -> str:
    try:
        return f"{os.uname().release}:{VMLINUX_BTF.stat().st_size}"
    except OSError:
        return "no-btf"


class InputRefused(Exception):
    """A source, header or object that is not read: too big, or not a regular file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _open_input(path: Path) -> tuple[int, int]:
    """(fd, size) of a regular file within the input limit; InputRefused for anything else.

    O_NONBLOCK: opening a FIFO to read would otherwise wait for a writer.
    """
    from bpfdeploy.limits import max_input_bytes, too_big

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(path, f"{path} is not a regular file")
        limit = max_input_bytes()
        if st.st_size > limit:
            raise InputRefused(path, too_big(str(path), st.st_size, limit))
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_input(path: Path) -> bytes:
    """A whole input file, which the size limit keeps small."""
    fd, size = _open_input(path)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(size + 1)


def hash_input(h, path: Path) -> None:
    """Feed a file to a hash in pieces: it is never held whole in memory."""
    from bpfdeploy.limits import READ_CHUNK

    fd, _size = _open_input(path)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)


def local_headers(source: Path, include_dirs: tuple[Path, ...]) -> list[Path]:
    """Local headers the source includes, recursively (system headers are left out)."""
    found: list[Path] = []
    seen: set[Path] = set()
    todo = [source]
    while todo:
        current = todo.pop()
        try:
            text = read_input(current)
        except OSError:
            continue
        for quote, name in _INCLUDE.findall(text):
            name = name.decode(errors="replace")
            dirs = ((current.parent,) if quote == b'"' else ()) + include_dirs
            for d in dirs:
                candidate = (d / name).resolve()
                if candidate.is_file():
                    if candidate not in seen:
                        seen.add(candidate)
                        found.append(candidate)
                        todo.append(candidate)
                    break
    return sorted(found)


def inputs_digest(obj: ObjectSpec) -> str:
    """The digest of a `source` object's own inputs, without the compiler and the kernel.

    Covers the source, the local headers it includes (by name and bytes), the vmlinux_h
    switch and every clang argument, with the source's directory written as ``$SRC`` and
    include directories relative to it, so that the same tree gives the same digest wherever
    it is checked out.
    """
    h = hashlib.sha256()
    h.update(INPUTS_FORMAT.encode())
    h.update(b"\0source\0")
    hash_input(h, obj.source)
    for header in local_headers(obj.source, obj.include_dirs):
        h.update(b"\0header\0" + header.name.encode() + b"\0")
        hash_input(h, header)
    for part in _portable_args(obj):
        h.update(b"\0arg\0" + part.encode())
    h.update(b"\0vmlinux_h\0" + (b"1" if obj.vmlinux_h else b"0"))
    return h.hexdigest()


def source_digest(inputs: str, clang_id: str, btf_id: str | None) -> str:
    """The build digest of a `source` object from its parts (artifacts.py checks them with this)."""
    h = hashlib.sha256()
    h.update(SOURCE_FORMAT.encode())
    h.update(b"\0clang\0" + clang_id.encode())
    h.update(b"\0inputs\0" + inputs.encode())
    if btf_id is not None:
        h.update(b"\0btf\0" + btf_id.encode())
    return h.hexdigest()


def file_digest(data: bytes) -> str:
    """The build digest of a prebuilt `file` object: its bytes (its path does not count)."""
    return hashlib.sha256(BUILD_FORMAT.encode() + b"file\0" + data).hexdigest()


def prebuilt_digest(path: Path) -> str:
    """file_digest of a file, without holding it in memory (InputRefused: too big, not a regular file)."""
    h = hashlib.sha256(BUILD_FORMAT.encode() + b"file\0")
    hash_input(h, path)
    return h.hexdigest()


def object_digest(obj: ObjectSpec, clang_id: str | None = None) -> str:
    if obj.file is not None:
        return prebuilt_digest(obj.file)
    return source_digest(inputs_digest(obj), clang_id or _clang_identity(),
                         _btf_identity() if obj.vmlinux_h else None)


def _portable_args(obj: ObjectSpec) -> list[str]:
    """The clang arguments as the digest sees them: no absolute path of the source tree."""
    base = obj.source.parent
    return _clang_args(obj, Path("$VMLINUX"), lambda d: "$SRC" if d == base else "$SRC/" + os.path.relpath(d, base))


def _clang_args(obj: ObjectSpec, vmlinux_dir: Path, tree_path: Callable[[Path], str] = str) -> list[str]:
    """clang's arguments; tree_path writes the directories of the source tree (the digest writes them relative)."""
    arch, multiarch = _ARCH.get(os.uname().machine, ("x86", "x86_64-linux-gnu"))
    args = ["-O2", "-g", "-target", "bpf", f"-D__TARGET_ARCH_{arch}", f"-I/usr/include/{multiarch}",
            f"-I{tree_path(obj.source.parent)}"]
    if obj.vmlinux_h:
        args.append(f"-I{vmlinux_dir}")
    args += [f"-I{tree_path(d)}" for d in obj.include_dirs]
    args += [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in obj.defines]
    args += list(obj.cflags)
    return args


def _vmlinux_dir(cache: Path) -> Path:
    """A directory holding vmlinux.h for this kernel, generated once per kernel BTF."""
    key = hashlib.sha256(_btf_identity().encode()).hexdigest()[:16]
    directory = cache / "vmlinux" / key
    header = directory / "vmlinux.h"
    if not header.exists():
        directory.mkdir(parents=True, exist_ok=True)
        result = runner.run(["bpftool", "btf", "dump", "file", str(VMLINUX_BTF), "format", "c"])
        if result.returncode != 0:
            raise BuildError(f"cannot generate vmlinux.h: {result.error_text()}")
        tmp = header.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(result.stdout)
        tmp.replace(header)
    return directory


def build_all(manifest: Manifest, on_event: Callable[[str, str], None] | None = None,
              cache: Path | None = None) -> dict[str, BuiltObject]:
    """Build every object of the manifest that is not in the cache, on every core."""
    cache = cache or cache_dir()
    clang_id = _clang_identity()
    results: dict[str, BuiltObject] = {}
    todo: list[tuple[ObjectSpec, str, Path]] = []
    refused: list[Diagnostic] = []
    for obj in manifest.objects:
        key = "file" if obj.file is not None else "source"
        try:
            digest = object_digest(obj, clang_id)
        except InputRefused as exc:  # the checks refused the source or file itself; this is a header, or a race
            refused.append(Diagnostic(exc.reason, str(manifest.file), f"objects.{obj.name}.{key}",
                                      manifest.line_of(obj.where + (key,))))
            continue
        except OSError as exc:
            refused.append(Diagnostic(f"{exc.filename or getattr(obj, key)} cannot be read: {exc.strerror or exc}",
                                      str(manifest.file), f"objects.{obj.name}.{key}",
                                      manifest.line_of(obj.where + (key,))))
            continue
        if obj.file is not None:
            results[obj.name] = BuiltObject(obj.name, obj.file, digest, False)
            continue
        out = cache / "objects" / f"{digest}.o"
        if out.exists():
            results[obj.name] = BuiltObject(obj.name, out, digest, False)
        else:
            todo.append((obj, digest, out))
    if refused:
        raise BuildError(f"{len(refused)} object(s) cannot be read", tuple(refused))
    if not todo:
        return results
    if shutil.which("clang") is None:
        raise BuildError("clang is not installed", tuple(
            Diagnostic("clang is needed to build this source; install the clang package",
                       str(manifest.file), f"objects.{o.name}.source", manifest.line_of(o.where + ("source",)))
            for o, _, _ in todo))
    (cache / "objects").mkdir(parents=True, exist_ok=True)
    vmlinux_dir = _vmlinux_dir(cache) if any(o.vmlinux_h for o, _, _ in todo) else cache

    def compile_one(item: tuple[ObjectSpec, str, Path]) -> tuple[ObjectSpec, str, Path, runner.Result]:
        obj, digest, out = item
        if on_event:
            on_event("start", obj.name)
        tmp = out.with_suffix(f".tmp{os.getpid()}.o")
        result = runner.run(["clang", *_clang_args(obj, vmlinux_dir), "-x", "c", "-c", str(obj.source), "-o", str(tmp)])
        if result.returncode == 0 and not tmp.exists():
            result = runner.Result(result.argv, 1, result.stdout, "clang wrote no object file")
        if result.returncode == 0:
            tmp.replace(out)
        else:
            tmp.unlink(missing_ok=True)
        if on_event:
            on_event("done" if result.returncode == 0 else "failed", obj.name)
        return obj, digest, out, result

    from concurrent.futures import ThreadPoolExecutor  # only when something is built

    failures: list[Diagnostic] = []
    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
        for obj, digest, out, result in pool.map(compile_one, todo):
            if result.returncode != 0:
                failures.append(Diagnostic(
                    f"clang failed to build {obj.source.name}:\n{_clang_errors(result.stderr)}",
                    str(manifest.file), f"objects.{obj.name}.source", manifest.line_of(obj.where + ("source",))))
            else:
                results[obj.name] = BuiltObject(obj.name, out, digest, True)
    if failures:
        raise BuildError(f"{len(failures)} object(s) failed to build", tuple(failures))
    return results


def _clang_errors(stderr: str, limit: int = 30) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    keep = lines[:limit]
    if len(lines) > limit:
        keep.append(f"... ({len(lines) - limit} more lines)")
    return "\n".join("  " + ln for ln in keep)
