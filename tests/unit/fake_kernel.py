"""A strict fake of bpfdeploy.kernel.door.Kernel: it records every call and changes nothing.

Every fd it hands out carries a label that says what it stands for (a pin path, "load:<object>
#<program>", "link#3"), so a recorded call reads like what apply meant: ``("obj_pin",
"load:/cache/counters.bpf.o#count_ingress", "/sys/fs/bpf/.../progs/count_ingress")``.

With ``expect`` (an ordered list of calls), any call that is not the next expected one fails the
test at once, as the recorded-command fakes of Ansible collections do; ``done()`` then checks
that none is missing. With ``fail_at=N`` the N-th (0-based) call that changes something raises
instead, to drive apply's rollback: KernelError, or PermissionError for the file-system calls
(the real door calls os for those).

What apply reads is what the test says is there: ``dirs`` (directories), ``files`` (pins),
``stats`` (path -> (uid, gid, mode)) and ``values`` ((label, key) -> value of a map entry).
``for_live()`` fills them from a LiveState, as the host the plan was made on would have them.
"""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace

from bpfdeploy.diagnostics import KernelError

MUTATING = {"load_object", "obj_pin", "link_create", "link_update", "link_detach", "prog_attach", "prog_detach",
            "raw_tracepoint_open", "map_update", "map_delete", "unlink", "rename", "mkdir", "rmdir", "chown",
            "chmod", "tc"}
FILE_SYSTEM = {"unlink", "rename", "mkdir", "rmdir", "chown", "chmod"}


@dataclass
class FakeLoaded:
    program_fds: dict
    map_fds: dict
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLinkInfo:
    prog_id: int
    u0: int = 0


@dataclass
class FakeResult:
    returncode: int = 0
    stdout: str = "[]"
    stderr: str = ""

    def error_text(self) -> str:
        return self.stderr


@dataclass
class FakeKernel:
    expect: list | None = None
    fail_at: int | None = None
    calls: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)  # fd -> what it stands for
    mutations: int = 0
    _fds: itertools.count = field(default_factory=lambda: itertools.count(1000))
    _ids: itertools.count = field(default_factory=lambda: itertools.count(9000))
    prog_ids: dict = field(default_factory=dict)  # label -> program id
    dirs: set = field(default_factory=set)  # directories (pin root, cgroups) that exist, as strings
    files: set = field(default_factory=set)  # pins that exist
    stats: dict = field(default_factory=dict)  # path -> (uid, gid, mode)
    values: dict = field(default_factory=dict)  # (map label, key) -> value

    @classmethod
    def for_live(cls, live, **kw) -> FakeKernel:
        """A fake whose file system is the host the plan saw: its directories, pins, owners and map values."""
        kernel = cls(**kw)
        kernel.dirs |= {"/", "/sys", "/sys/fs", "/sys/fs/bpf", "/sys/fs/cgroup", *live.existing_cgroups}
        if live.pin_root_exists:
            root = live.pin_root
            kernel.dirs |= {str(p) for p in root.parents if str(p).startswith("/sys/fs/bpf")}
            kernel.dirs |= {str(root), *(str(root / sub) for sub in ("maps", "progs", "links"))}
        kernel.files |= set(live.pinned)
        kernel.stats.update(live.pin_stats or {})
        # obj_get labels an fd with the pin path, so a map read through its pin finds these values.
        kernel.values.update({k: v for k, v in live.map_values.items() if v is not None})
        return kernel

    # -- bookkeeping
    def _fd(self, label: str) -> int:
        fd = next(self._fds)
        self.labels[fd] = label
        return fd

    def label(self, fd) -> str:
        return self.labels.get(fd, f"fd{fd}") if isinstance(fd, int) else str(fd)

    def _call(self, name: str, *args) -> None:
        call = (name, *args)
        if name in MUTATING:
            if self.fail_at is not None and self.mutations == self.fail_at:
                self.fail_at = None  # once: the undo that follows must go through
                self.calls.append(("FAILED", *call))
                if name in FILE_SYSTEM:  # the door calls os for these: they fail as os does
                    raise PermissionError(errno.EPERM, f"fake kernel: {name} refused (injected)", str(args[-1]))
                raise KernelError(f"fake kernel: {name} refused (injected)", errno.EPERM)
            self.mutations += 1
        self.calls.append(call)
        if self.expect is not None:
            assert self.expect, f"unexpected call {call}: no more calls were expected"
            wanted = self.expect.pop(0)
            assert call[:len(wanted)] == wanted, f"unexpected call {call}; expected {wanted}"

    def done(self) -> None:
        assert not self.expect, f"calls expected but not made: {self.expect}"

    def mutating_calls(self) -> list:
        return [c for c in self.calls if c[0] in MUTATING]

    # -- changes
    def load_object(self, path, pin_root, programs, reuse_maps, globals_=None):
        self._call("load_object", path, tuple(sorted(programs)), tuple(sorted(reuse_maps)))
        progs = {name: self._fd(f"load:{path}#{name}") for name in programs}
        for fd in progs.values():
            self.prog_ids[self.labels[fd]] = next(self._ids)
        return FakeLoaded(progs, _AnyMap(self, path))

    def obj_pin(self, fd, path):
        self._call("obj_pin", self.label(fd), path)

    def link_create(self, prog_fd, target_fd, attach_type, flags=0):
        self._call("link_create", self.label(prog_fd), self.label(target_fd), attach_type)
        return self._fd(f"link:{self.label(prog_fd)}")

    def link_update(self, link_fd, new_prog_fd, old_prog_fd=None):
        self._call("link_update", self.label(link_fd), self.label(new_prog_fd))

    def link_detach(self, link_fd):
        self._call("link_detach", self.label(link_fd))

    def prog_attach(self, prog_fd, target_fd, attach_type, flags, replace_fd=None):
        self._call("prog_attach", self.label(prog_fd), self.label(target_fd), attach_type, flags)

    def prog_detach(self, prog_fd, target_fd, attach_type):
        self._call("prog_detach", self.label(prog_fd), self.label(target_fd), attach_type)

    def raw_tracepoint_open(self, name, prog_fd):
        self._call("raw_tracepoint_open", name, self.label(prog_fd))
        return self._fd(f"link:{self.label(prog_fd)}")

    def perf_event_open(self, *args):
        self._call("perf_event_open", *args)
        return self._fd("perf_event")

    def map_update(self, fd, key, value):
        self._call("map_update", self.label(fd), key, value)

    def map_delete(self, fd, key):
        self._call("map_delete", self.label(fd), key)

    def unlink(self, path):
        self._call("unlink", path)

    def rename(self, old, new):
        self._call("rename", old, new)

    def mkdir(self, path):
        self._call("mkdir", str(path))

    def rmdir(self, path):
        self._call("rmdir", str(path))

    def chown(self, path, uid, gid):
        self._call("chown", path, uid, gid)

    def chmod(self, path, mode):
        self._call("chmod", path, mode)

    def tc(self, argv):
        self._call("tc", tuple(argv))
        return FakeResult()

    # -- reads
    def obj_get(self, path):
        self._call("obj_get", path)
        return self._fd(path)

    def prog_id(self, fd):
        label = self.label(fd)
        return self.prog_ids.setdefault(label, next(self._ids))

    def prog_fd_by_id(self, prog_id):
        self._call("prog_fd_by_id", prog_id)
        return self._fd(f"prog#{prog_id}")

    def link_info(self, fd):
        return FakeLinkInfo(prog_id=4242)

    def map_lookup(self, fd, key, value_size):
        self._call("map_lookup", self.label(fd), key)
        return self.values.get((self.label(fd), key))

    def tc_read(self, argv):
        self._call("tc_read", tuple(argv))
        return FakeResult()

    def open(self, path, flags):
        self._call("open", path)
        return self._fd(path)

    def dup(self, fd):
        return self._fd(self.label(fd))

    def close(self, fd):
        self.labels.pop(fd, None)

    def if_nametoindex(self, device):
        return 7

    def real_dir(self, path):
        return str(path) in self.dirs

    def exists(self, path):
        return str(path) in self.dirs or str(path) in self.files

    def lstat(self, path):
        self._call("lstat", str(path))
        uid, gid, mode = self.stats[str(path)]
        return SimpleNamespace(st_uid=uid, st_gid=gid, st_mode=0o100000 | mode)


class _AnyMap(dict):
    """The map fds of a fake loaded object: any map name asked for gets an fd labelled with it."""

    def __init__(self, kernel: FakeKernel, path: str):
        super().__init__()
        self.kernel, self.path = kernel, path

    def __missing__(self, name: str) -> int:
        fd = self.kernel._fd(f"load:{self.path}@{name}")
        self[name] = fd
        return fd
