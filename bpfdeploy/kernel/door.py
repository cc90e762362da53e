"""The one narrow door apply goes through to the kernel: every call that changes it, and the few
reads apply needs while it changes it.

``Kernel`` forwards to kernel/libbpf.py, the file system (pins, cgroups, directories on bpffs)
and ``tc``, and counts the calls that change something (``mutations``). apply.py reaches the
kernel only through one ``Kernel``, so a unit test can hand it a strict fake that records every
call and refuses any it was not told to expect (tests/unit/fake_kernel.py).
"""

from __future__ import annotations

import os
from typing import Any

from bpfdeploy.diagnostics import KernelError
from bpfdeploy.kernel import libbpf


class Kernel:
    """The real kernel. Method names follow kernel/libbpf.py and os."""

    def __init__(self) -> None:
        self.mutations = 0  # kernel-changing calls made (0 for a no-op plan)

    def _changed(self) -> None:
        self.mutations += 1

    # -- objects, pins and links (changes)
    def load_object(self, path: str, pin_root: str, programs: dict, reuse_maps: dict,
                    globals_: dict | None = None) -> libbpf.LoadedObject:
        loaded = libbpf.load_object(path, pin_root, programs, reuse_maps, globals_ or {})
        self._changed()
        return loaded

    def obj_pin(self, fd: int, path: str) -> None:
        libbpf.obj_pin(fd, path)
        self._changed()

    def link_create(self, prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
        fd = (libbpf.link_create_flags(prog_fd, target_fd, attach_type, flags) if flags
              else libbpf.link_create(prog_fd, target_fd, attach_type))
        self._changed()
        return fd

    def link_create_ordered(self, prog_fd: int, target: int, attach_type: int, flags: int,
                            relative_fd: int = 0) -> int:
        fd = libbpf.link_create_ordered(prog_fd, target, attach_type, flags, relative_fd)
        self._changed()
        return fd

    def link_update(self, link_fd: int, new_prog_fd: int, old_prog_fd: int | None = None) -> None:
        libbpf.link_update(link_fd, new_prog_fd, old_prog_fd)
        self._changed()

    def link_detach(self, link_fd: int) -> None:
        libbpf.link_detach(link_fd)
        self._changed()

    def prog_attach(self, prog_fd: int, target_fd: int, attach_type: int, flags: int,
                    replace_fd: int | None = None) -> None:
        libbpf.prog_attach(prog_fd, target_fd, attach_type, flags, replace_fd)
        self._changed()

    def prog_detach(self, prog_fd: int, target_fd: int, attach_type: int) -> None:
        libbpf.prog_detach(prog_fd, target_fd, attach_type)
        self._changed()

    def raw_tracepoint_open(self, name: str | None, prog_fd: int) -> int:
        fd = libbpf.raw_tracepoint_open(name, prog_fd)
        self._changed()
        return fd

    def perf_event_open(self, *args: Any) -> int:
        return libbpf.perf_event_open(*args)  # a perf event changes nothing until a link holds it

    def map_update(self, fd: int, key: bytes, value: bytes) -> None:
        libbpf.map_update(fd, key, value)
        self._changed()

    def map_delete(self, fd: int, key: bytes) -> None:
        libbpf.map_delete(fd, key)
        self._changed()

    # -- the file system: pins, cgroups, directories (changes)
    def unlink(self, path: str) -> None:
        os.unlink(path)
        self._changed()

    def rename(self, old: str, new: str) -> None:
        os.rename(old, new)
        self._changed()

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
        self._changed()

    def rmdir(self, path: str) -> None:
        os.rmdir(path)
        self._changed()

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(path, uid, gid, follow_symlinks=False)
        self._changed()

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode)
        self._changed()

    def tc(self, argv: list[str]):
        """A tc command that changes a qdisc or filter (argv as a list, never a shell string)."""
        from bpfdeploy.kernel import runner

        result = runner.run(argv)
        self._changed()
        return result

    # -- reads apply needs while changing things
    def obj_get(self, path: str) -> int:
        return libbpf.obj_get(path)

    def prog_id(self, fd: int) -> int:
        return libbpf.prog_id(fd)

    def prog_fd_by_id(self, prog_id: int) -> int:
        return libbpf.prog_fd_by_id(prog_id)

    def link_info(self, fd: int):
        return libbpf.link_info(fd)

    def map_lookup(self, fd: int, key: bytes, value_size: int) -> bytes | None:
        return libbpf.map_lookup(fd, key, value_size)

    def tc_read(self, argv: list[str]):
        from bpfdeploy.kernel import runner

        return runner.run(argv)

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def if_nametoindex(self, device: str) -> int:
        import socket

        return socket.if_nametoindex(device)

    def real_dir(self, path) -> bool:
        return real_dir(path)

    def exists(self, path) -> bool:
        """Something is at path (a symlink counts: it is not followed)."""
        return os.path.lexists(path)

    def lstat(self, path) -> os.stat_result:
        return os.lstat(path)


def real_dir(path) -> bool:
    """True for a directory that is really there (not through a symlink); False if it is missing.

    Anything else at the path (a symlink, a file) is refused: pinning through it would put pins
    outside the pin root.
    """
    import stat

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return True
    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
    raise KernelError(f"{path} is {what}: bpfdeploy pins only into real directories of its pin root")
