"""Carry out a Plan: the only module that changes the kernel.

Apply executes the plan's actions in the plan's order (the planner orders them: leftovers of
a killed apply, cgroups, maps, programs, qdiscs and attachments, then deletions), one executor
per resource kind, reading each action's typed payload; it decides nothing the plan could.
Every step records how to undo it. Replacements are staged beside what they replace and
swapped in at the commit (a rename of the pin, or an atomic link update), so until then the
old programs keep running untouched. If any step fails, the undo journal runs in reverse and
the host is left as it was, map contents included. Deletions run after the commit.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from bpfdeploy.diagnostics import ApplyError, KernelError
from bpfdeploy.hooks import HookKind
from bpfdeploy.kernel import libbpf
from bpfdeploy.kernel.door import Kernel, real_dir
from bpfdeploy.kernel.live import LiveState
from bpfdeploy.model.desired import DesiredAttachment, DesiredProgram, DesiredState
from bpfdeploy.model.frozen import field, frozen
from bpfdeploy.plan import (STAGING_SUFFIX, Action, Cleanup, Kind, LegacyAttach, LegacyDetach, NewMap, Plan, Qdisc,
                            Resource, TcFilter, TcFilterRemoval, WriteEntries, XdpTakeover)
from bpfdeploy.record import (Journal, LegacyAttachment, Record, boot_id, journal_path, remove_record, vars_of,
                              write_record)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms); type checkers read it as True
if TYPE_CHECKING:
    from typing import Callable, Iterator


@frozen(mutable=True)
class ApplyResult:
    done: list[str] = field(default_factory=list)  # "create prog/x", in order
    warnings: list[str] = field(default_factory=list)
    mutations: int = 0  # kernel-changing calls made (0 for a no-op plan)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # optional attachments that failed, and why


class _Undo:
    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def run(self) -> list[str]:
        failures = []
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as exc:  # keep undoing the rest
                failures.append(f"undo '{what}' failed: {exc}")
        self.steps.clear()
        return failures


@frozen
class StepHooks:
    """Test hooks: fail at the step of one address (or "commit": after the first rename of the
    commit), or pause before it so that a test can kill the process there. Read from the
    environment by the caller (workflow), never inside apply."""

    fail_at: str | None = None
    pause_at: str | None = None
    pause_file: str = "/dev/null"
    pause_seconds: float = 60

    @classmethod
    def from_environment(cls) -> StepHooks | None:
        env = os.environ
        if "BPFDEPLOY_FAIL_AT" not in env and "BPFDEPLOY_PAUSE_AT" not in env:
            return None
        return cls(env.get("BPFDEPLOY_FAIL_AT"), env.get("BPFDEPLOY_PAUSE_AT"),
                   env.get("BPFDEPLOY_PAUSE_FILE", "/dev/null"), float(env.get("BPFDEPLOY_PAUSE_SECONDS", "60")))


def apply(plan: Plan, desired: DesiredState, live: LiveState, *, destroy: bool = False,
          state_dir: Path | None = None, on_step: Callable[[Action], None] | None = None,
          manifest_file: str = "", kernel: Kernel | None = None, hooks: StepHooks | None = None) -> ApplyResult:
    """Make the kernel match the plan. Raises ApplyError after rolling back on failure.

    ``kernel``: the door to the kernel (a fake in unit tests); ``hooks``: test hooks."""
    if plan.errors:
        raise ApplyError("the plan has errors; nothing was changed")
    result = ApplyResult()
    if not plan.changes:
        return result
    run = _Run(plan, desired, live, result, state_dir, on_step, kernel or Kernel(), hooks or StepHooks())
    try:
        run.execute()
    except BaseException as exc:
        result.mutations = run.k.mutations
        failures = run.undo.run()
        run.close()
        if not failures:  # everything was undone: what the journal noted no longer exists
            journal_path(desired.name, state_dir).unlink(missing_ok=True)
        step = run.current
        detail = exc.log if isinstance(exc, KernelError) else ""
        message = str(exc) if isinstance(exc, Exception) else type(exc).__name__
        raise ApplyError(f"{step}: {message}" if step else message, step=step, detail=detail,
                         rollback=tuple(failures)) from (exc if not isinstance(exc, KernelError) else None)
    run.close()
    run.commit_deletes()
    run.write_record(destroy, manifest_file)
    result.mutations = run.k.mutations
    return result


class _Run:
    def __init__(self, plan: Plan, desired: DesiredState, live: LiveState, result: ApplyResult,
                 state_dir: Path | None, on_step, kernel: Kernel, hooks: StepHooks):
        self.plan, self.d, self.live, self.result = plan, desired, live, result
        self.state_dir, self.on_step = state_dir, on_step
        self.k = kernel  # every change to the kernel goes through it (kernel/door.py)
        self.undo = _Undo()
        self.current = ""
        self.fds: list[int] = []
        self.map_fds: dict[str, int] = {}  # deployment map name -> fd to use
        self.prog_fds: dict[str, int] = {}  # program pin name -> fd of the program to attach
        self.prog_ids: dict[str, int] = {}  # program pin name -> id after apply
        self.prog_pins: dict[str, str] = {}  # program pin name -> where the program loaded now is pinned
        self.renames: list[tuple[str, str]] = []  # staged pin -> final pin, done at commit
        self.legacy: dict[str, LegacyAttachment] = {}
        self.created_cgroups: set[str] = set(live.record.created_cgroups if live.record else ())
        self.created_qdiscs: set[str] = set(live.record.created_qdiscs if live.record else ())
        self.created_dirs: set[str] = set(live.record.created_dirs if live.record else ())
        # The pins this deployment owns (see Record.pins); every new one is journaled before it is made.
        owned = live.record.pins if live.record else ()
        self.pins: set[str] = set(live.pinned if owned is None else owned)
        self.digests: dict[str, str] = {}
        self.retired: list[LegacyDetach | TcFilterRemoval] = []  # old hooks of moved attaches, after the commit
        self.loaded_objects: set[str] = set()  # objects whose programs of this plan are loaded
        # Object name -> the plan's program loads from it, in plan order (one load per object).
        self.loads: dict[str, list[Action]] = {}
        for x in plan.actions:
            if x.resource is Resource.PROGRAM and x.kind in (Kind.CREATE, Kind.REPLACE):
                self.loads.setdefault(x.desired.object, []).append(x)
        self.known_dirs: set[str] = set()  # directories seen to exist (or made) in this apply
        self.journal = Journal(desired.name, state_dir)
        self.skipped: set[str] = set()  # optional attachments that failed in this run
        self.link_fds: dict[str, int] = {}  # attachment name -> fd of its link (anchors of ordered links)
        self.hooks = hooks

    # -- bookkeeping
    def _fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        self.journal.close()
        for fd in self.fds:
            try:
                self.k.close(fd)
            except OSError:
                pass
        self.fds = []

    def _journal(self, entry: dict) -> None:
        self.journal.append(entry)

    def _own(self, *pins: str) -> None:
        """Journal pins before they are made: after a kill, the next plan knows they are ours."""
        for pin in pins:
            if pin not in self.pins:
                self._journal({"pin": pin})
                self.pins.add(pin)

    def _step(self, action: Action) -> None:
        self.current = f"{action.kind.value} {action.address}"
        if self.on_step:
            self.on_step(action)
        # Test hooks: fail at a step, or stop before it so that a test can kill the process there.
        if self.hooks.fail_at == action.address:
            raise KernelError(f"injected failure (BPFDEPLOY_FAIL_AT={action.address})")
        if self.hooks.pause_at == action.address:
            Path(self.hooks.pause_file).touch()
            import time

            time.sleep(self.hooks.pause_seconds)

    def _done(self, action: Action) -> None:
        self.result.done.append(f"{action.kind.value} {action.address}")

    # -- the run
    def execute(self) -> None:
        """Every action but deletions, in the plan's order, then the commit (deletions follow it)."""
        executors = {Resource.CGROUP: self._cgroup, Resource.MAP: self._map, Resource.PROGRAM: self._program,
                     Resource.QDISC: self._qdisc, Resource.ATTACHMENT: self._attachment_of_plan,
                     Resource.ACCESS: self._access}
        dirs_ready = False
        for a in self.plan.actions:
            if isinstance(a.payload, Cleanup):
                self._step(a)
                confined(self.d.pin_root, a.live_pin)
                self.k.unlink(a.live_pin)  # garbage of a killed apply: nothing to undo
                self._done(a)
                continue
            if a.kind is Kind.DELETE:
                continue  # after the commit: commit_deletes
            if not dirs_ready:
                self._ensure_dirs()
                dirs_ready = True
            executors[a.resource](a)
        if not dirs_ready:
            self._ensure_dirs()
        self.current = "commit"
        for staged, final in self.renames:
            old = None
            if os.path.dirname(final) == str(self.d.pin_root / "links") and self.k.exists(final):
                # The old link leaves its hook now, not when the kernel frees it after losing its
                # pin: a plan made right after sees the chain as it is (an ordered link moved).
                self._detach_now(final)
            elif self.k.exists(final):
                # The old map or program loses its pin to the rename: hold it, so that a later
                # rename of this commit that fails can pin it back (a half-done commit is undone).
                old = self._fd(self.k.obj_get(final))
            self.k.rename(staged, final)
            self.undo.push(f"put back {final}", lambda s=staged, f=final, o=old: self._unrename(s, f, o))
            if self.hooks.fail_at == "commit":  # test hook: the commit fails with one rename done
                raise KernelError("injected failure (BPFDEPLOY_FAIL_AT=commit)")
        self.renames.clear()
        self.undo.steps.clear()  # committed: from here on nothing is rolled back
        self.current = ""

    def _unrename(self, staged: str, final: str, old: int | None) -> None:
        """Undo one rename of the commit: the new object goes back to its staged pin (whose own undo
        unpins it), the old one, held since, to its pin."""
        self.k.rename(final, staged)
        if old is not None:
            self.k.obj_pin(old, final)

    def _ensure_dirs(self) -> None:
        root = self.d.pin_root
        chain = [p for p in [*reversed(root.parents), root] if str(p).startswith("/sys/fs/bpf/")]
        if self.d.maps or self.d.programs or self.d.attachments:
            chain += [root / sub for sub in ("maps", "progs", "links")]
        for attempt in range(3):
            try:
                self._make_dirs(root, chain)
                return
            except FileNotFoundError:
                # A parent vanished between our check and our mkdir: another deployment's destroy
                # removed a directory it had created, now empty. Walk the chain again.
                if attempt == 2:
                    raise

    def _make_dirs(self, root: Path, chain: list[Path]) -> None:
        for path in chain:
            if self.k.real_dir(path):  # never p.exists(): that follows a symlink out of the pin root
                continue
            self.current = f"create directory {path}"
            if path not in (root, *(root / sub for sub in ("maps", "progs", "links"))):
                self._journal({"dir": str(path)})  # above the pin root: destroy removes only what apply made
                self.created_dirs.add(str(path))
            self.k.mkdir(path)
            self.undo.push(f"rmdir {path}", lambda p=path: (self._rmdir_if_there(p), self.created_dirs.discard(str(p))))
            if self.d.pin_root_access is not None and (path == root or path.parent == root):
                self._set_access(str(path), self.d.pin_root_access)

    def _set_access(self, path: str, access, before=None) -> None:
        """chown/chmod a new pin or directory as the manifest asks (its removal undoes it), or an
        existing one whose lstat is ``before``: each change is undone on its own, so that a chmod
        that fails still gets the chown before it put back."""
        if access.uid is not None or access.gid is not None:
            self.k.chown(path, -1 if access.uid is None else access.uid, -1 if access.gid is None else access.gid)
            if before is not None:
                self.undo.push(f"restore owner of {path}",
                               lambda u=before.st_uid, g=before.st_gid: self.k.chown(path, u, g))
        if access.mode is not None:
            self.k.chmod(path, access.mode)
            if before is not None:
                self.undo.push(f"restore mode of {path}", lambda m=before.st_mode & 0o7777: self.k.chmod(path, m))

    def _access(self, a: Action) -> None:
        """Fix the owner, group or mode of an existing pin; undo puts the old ones back."""
        if a.kind is not Kind.UPDATE:
            return
        self._step(a)
        self._set_access(a.live_pin, a.desired, before=self.k.lstat(a.live_pin))
        self._done(a)

    def _cgroup(self, a: Action) -> None:
        if a.kind is not Kind.CREATE:
            return
        self._step(a)
        chain = [str(Path(a.desired))]  # the cgroup, then its parents (as strings: thousands of cgroups)
        while os.path.dirname(chain[-1]) != chain[-1]:
            chain.append(os.path.dirname(chain[-1]))
        missing = []
        for p in chain:  # up to the first that exists
            if p in self.known_dirs or self.k.exists(p):
                break
            missing.append(p)
        self.known_dirs.update(chain[:len(missing) + 1])
        for p in reversed(missing):  # parents too, outermost first: each is recorded, so destroy removes them all
            self._journal({"cgroup": p})
            self.k.mkdir(p)
            self.undo.push(f"rmdir {p}", lambda p=p: self.k.rmdir(p))
            self.created_cgroups.add(p)
        self._done(a)

    def _map(self, a: Action) -> None:
        m = a.desired
        if a.kind is Kind.NOOP:
            return
        self._step(a)
        if isinstance(a.payload, NewMap):
            new: NewMap = a.payload
            user = self.d.program(new.loader)
            try:
                loaded = self.k.load_object(str(user.object_path), str(self.d.pin_root), {}, {})
            except KernelError as exc:
                from bpfdeploy.load_errors import load_failure_message, name_in_log  # only when a load fails

                failure, message = load_failure_message(user.object, user.origin, exc)
                outer = dict(user.maps).get(failure.item) if failure.item_kind == "map" else None
                if outer and outer != m.name:  # blame the map libbpf names, not the first one created
                    self.current = f"{a.kind.value} map/{outer}"
                raise KernelError(message, exc.errno, name_in_log(exc.log, str(user.object_path), user.origin)) from None
            try:
                fd = self._fd(self.k.dup(loaded.map_fds[new.inner]))
            finally:
                loaded.close()  # an open object keeps its ELF and BTF in memory: close it at once
            self._pin(fd, m.pin, a.kind is Kind.REPLACE, m.access)
            self.map_fds[m.name] = fd
            for key, value in new.entries:
                self.k.map_update(fd, key, value)
        else:  # WriteEntries: write the entries that differ, remembering what was there
            writes: WriteEntries = a.payload
            fd = self._map_fd(m.name)
            for key, value in writes.entries:
                old = self.k.map_lookup(fd, key, m.geometry.value_size)
                self.k.map_update(fd, key, value)
                if old is None:
                    self.undo.push(f"delete entry of {m.name}", lambda k=key, f=fd: self.k.map_delete(f, k))
                else:
                    self.undo.push(f"restore entry of {m.name}", lambda k=key, v=old, f=fd: self.k.map_update(f, k, v))
        self._done(a)

    def _pin(self, fd: int, pin: Path, staged: bool, access=None) -> str:
        """Pin a new map, program or link; a replacement is pinned beside the old one (staged) and
        renamed over it at the commit. Journaled first, undone by unpinning. Returns where it is."""
        target = str(pin) + (STAGING_SUFFIX if staged else "")
        self._own(target, str(pin))
        self.k.obj_pin(fd, target)
        self.undo.push(f"unpin {target}", lambda t=target: self.k.unlink(t))
        if access is not None:
            self._set_access(target, access)
        if staged:
            self.renames.append((target, str(pin)))
        return target

    def _map_fd(self, name: str) -> int:
        if name not in self.map_fds:
            self.map_fds[name] = self._fd(self.k.obj_get(str(self.d.map(name).pin)))
        return self.map_fds[name]

    def _program(self, a: Action) -> None:
        if a.kind is Kind.NOOP:
            self.prog_ids[a.desired.pin_name] = a.live_id
            self.digests[str(a.live_id)] = a.desired.digest
            return
        obj = a.desired.object
        if obj in self.loaded_objects:
            return  # loaded with the first program of its object
        self.loaded_objects.add(obj)
        # One load per object: every program of this plan's that comes from it is loaded together.
        group = self.loads[obj]
        first: DesiredProgram = group[0].desired
        for a in group:
            self._step(a)
        reuse = {inner: self._map_fd(outer) for inner, outer in first.maps}
        try:
            loaded = self.k.load_object(str(first.object_path), str(self.d.pin_root),
                                        {a.desired.function: (a.desired.type_override, a.desired.expected_attach_type)
                                         for a in group}, reuse, dict(first.globals))
        except KernelError as exc:
            from bpfdeploy.load_errors import load_failure_message, name_in_log  # only when a load fails

            failure, message = load_failure_message(first.object, first.origin, exc)
            culprit = next((a for a in group if a.desired.function == failure.item), None) \
                if failure.item_kind == "program" else None
            if culprit is not None:  # blame the program libbpf names, not the last one stepped into
                self.current = f"{culprit.kind.value} {culprit.address}"
            raise KernelError(message, exc.errno, name_in_log(exc.log, str(first.object_path), first.origin)) from None
        try:
            fds = {a.desired.function: self._fd(self.k.dup(loaded.program_fds[a.desired.function])) for a in group}
        finally:
            loaded.close()  # the programs live on through the fds and pins
        for a in group:
            p: DesiredProgram = a.desired
            fd = fds[p.function]
            target = self._pin(fd, p.pin, a.kind is Kind.REPLACE, p.access)
            self.prog_pins[p.pin_name] = target
            self.prog_fds[p.pin_name] = fd
            self.prog_ids[p.pin_name] = self.k.prog_id(fd)
            self.digests[str(self.prog_ids[p.pin_name])] = p.digest
            self._journal({"digest": [self.prog_ids[p.pin_name], p.digest]})
            self._done(a)

    def _prog_fd(self, pin_name: str) -> int:
        if pin_name not in self.prog_fds:
            self.prog_fds[pin_name] = self._fd(self.k.obj_get(str(self.d.program(pin_name).pin)))
        return self.prog_fds[pin_name]

    def _target_fd(self, a: DesiredAttachment) -> int:
        if a.kind is HookKind.SOCKMAP:
            return self._map_fd(a.target)
        flags = os.O_RDONLY | (os.O_DIRECTORY if a.kind is HookKind.CGROUP else 0)
        return self._fd(self.k.open(a.target, flags))

    def _link_target(self, att: DesiredAttachment) -> str:
        from bpfdeploy.plan import link_target

        return link_target(att, self.live.hooks.get((att.kind.value, att.target, att.attach_type.value)))

    def _xdp_takeover(self, att: DesiredAttachment, old_pin: str) -> None:
        """Remove our old XDP link from the device (one XDP program per device); undo puts it back."""
        link_fd = self.k.obj_get(old_pin)
        try:
            info = self.k.link_info(link_fd)
            old_prog = self._fd(self.k.prog_fd_by_id(info.prog_id))  # keeps the old program alive for undo
            ifindex = info.u0
            # Detach now: the kernel may free an unpinned link a moment later, and the device must be free.
            self.k.link_detach(link_fd)
        finally:
            self.k.close(link_fd)
        self.k.unlink(old_pin)
        recorded = (self.live.record.link_targets.get(Path(old_pin).name, "") if self.live.record else "")
        mode = recorded.rpartition(" mode ")[2] if " mode " in recorded else ""

        def put_back() -> None:
            from bpfdeploy.kernel import netns

            with netns.entered(att.netns):
                fd = self.k.link_create(old_prog, ifindex, att.attach_type.value, libbpf.XDP_FLAGS.get(mode, 0))
            try:
                self.k.obj_pin(fd, old_pin)
            finally:
                self.k.close(fd)
        self.undo.push(f"put back the XDP link {old_pin}", put_back)

    def _make_link(self, att: DesiredAttachment, prog_fd: int) -> int:
        """A new bpf_link holding prog_fd on the attachment's hook (the caller pins it)."""
        at = att.attach_type
        if att.kind is HookKind.DEVICE:
            from bpfdeploy.kernel import netns

            placement = self._placement(att) if att.order is not None else None
            with netns.entered(att.netns):
                ifindex = self.k.if_nametoindex(att.device)
                if placement is not None:  # tcx, at its place in the chain
                    return self.k.link_create_ordered(prog_fd, ifindex, at.value, *placement)
                flags = libbpf.XDP_FLAGS.get(att.xdp_mode or "", 0)
                return self.k.link_create(prog_fd, ifindex, at.value, flags)
        if att.kind is HookKind.TRACE:
            short = at.short[0]
            if short == "raw_tracepoint":
                return self.k.raw_tracepoint_open(att.trace_target, prog_fd)
            if short == "tp_btf":
                return self.k.raw_tracepoint_open(None, prog_fd)
            if short == "iter":
                return self.k.link_create(prog_fd, 0, at.value)
            perf_fd = self._perf_event(att)  # tracepoint, uprobe, kprobe
            try:
                return self.k.link_create(prog_fd, perf_fd, at.value)
            finally:
                self.k.close(perf_fd)  # the link holds the perf event
        if att.order is not None:  # a cgroup link at its place in the chain
            return self.k.link_create_ordered(prog_fd, self._target_fd(att), at.value, *self._placement(att))
        return self.k.link_create(prog_fd, self._target_fd(att), at.value)

    def _tcx_vacate(self, att: DesiredAttachment, prog_fd: int) -> None:
        """A tcx hook holds a program once (EEXIST): detach our old link of the same program before
        the new one is made at its place. Undo makes a link of it again, at the end of the chain."""
        try:
            old = self._fd(self.k.obj_get(str(att.pin)))
        except KernelError:
            return
        info = self.k.link_info(old)
        if info.prog_id != self.k.prog_id(prog_fd):
            return  # another program: both may be on the hook at once
        self.k.link_detach(old)

        def put_back() -> None:
            from bpfdeploy.kernel import netns

            with netns.entered(att.netns):
                fd = self.k.link_create(prog_fd, self.k.if_nametoindex(att.device), att.attach_type.value, 0)
            try:
                self.k.unlink(att.pin)
                self.k.obj_pin(fd, str(att.pin))
            finally:
                self.k.close(fd)
        self.undo.push(f"put back the tcx link {att.name}", put_back)

    def _placement(self, att: DesiredAttachment) -> tuple[int, int]:
        """(flags, relative link fd) that put a new link where att.order says (BPF_F_BEFORE/AFTER)."""
        from bpfdeploy.manifest.model import OrderKind

        kind = att.order.kind
        flags = libbpf.BPF_F_BEFORE if kind in (OrderKind.FIRST, OrderKind.BEFORE) else libbpf.BPF_F_AFTER
        if att.order.anchor is None:
            return flags, 0  # no anchor: the front or the back of the chain
        # The anchor's link: made earlier in this apply (the plan puts anchors first), or pinned.
        fd = self.link_fds.get(att.order.anchor)
        if fd is None:
            anchor = next(a for a in self.d.attachments if a.name == att.order.anchor)
            fd = self.link_fds[anchor.name] = self._fd(self.k.obj_get(str(anchor.pin)))
        return flags | libbpf.BPF_F_LINK, fd

    def _perf_event(self, att: DesiredAttachment) -> int:
        short = att.attach_type.short[0]
        if short == "tracepoint":
            tracefs = ensure_tracefs()
            tp_id = int((Path(tracefs) / "events" / att.trace_target / "id").read_text())
            return self.k.perf_event_open(2, tp_id)  # PERF_TYPE_TRACEPOINT
        if short in ("uprobe", "uretprobe"):
            import ctypes

            from bpfdeploy.kernel.elfsym import symbol_offset

            pmu = int(Path("/sys/bus/event_source/devices/uprobe/type").read_text())
            offset = (symbol_offset(att.binary, att.symbol) if att.symbol else 0) + (att.offset or 0)
            path = ctypes.create_string_buffer(att.binary.encode())
            retprobe = 1 if short == "uretprobe" else 0  # format/retprobe is config:0
            return self.k.perf_event_open(pmu, retprobe, ctypes.addressof(path), offset, att.pid or -1)
        if short in ("kprobe", "kretprobe"):  # needs CONFIG_KPROBES: the plan refuses it where it is off
            import ctypes

            pmu = int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
            function = ctypes.create_string_buffer(att.trace_target.encode())
            retprobe = 1 if short == "kretprobe" else 0
            return self.k.perf_event_open(pmu, retprobe, ctypes.addressof(function), 0)
        raise KernelError(f"{short} cannot be attached on this kernel")

    def _tc(self, a: Action) -> None:
        """A tc filter at a fixed pref/handle: 'replace' creates it or swaps its program atomically."""
        from bpfdeploy.kernel import netns

        att: DesiredAttachment = a.desired
        tc: TcFilter = a.payload
        prog = self.d.program(att.program)
        pin = self.prog_pins.get(att.program, str(prog.pin))  # the staged pin of a program replaced now
        base = ["tc", "filter", "replace", "dev", tc.device, tc.direction, "pref", str(tc.priority), "handle",
                str(tc.handle), "bpf", "da", "pinned"]
        self._tc_run(netns.command(base + [pin], tc.netns))
        if a.kind is Kind.UPDATE and tc.old is not None:
            self.undo.push(f"put back tc filter {att.name}",
                           lambda: self._tc_run(netns.command(base + [str(prog.pin)], tc.netns)))
        else:
            removal = TcFilterRemoval(tc.device, tc.netns, tc.direction, tc.priority, tc.handle)
            self.undo.push(f"delete tc filter {att.name}", lambda: self._delete_tc_filter(removal))
        if tc.retire is not None:
            self.retired.append(tc.retire)  # the filter at its old place goes after the commit
        self.legacy[att.name] = LegacyAttachment(att.name, att.attach_type.value, att.target,
                                                 self.prog_ids[att.program], 0, tc.priority, tc.handle)
        self._journal({"legacy": vars_of(self.legacy[att.name])})

    def _tc_run(self, argv: list[str]) -> None:
        result = self.k.tc(argv)
        if result.returncode != 0:
            raise KernelError(f"{' '.join(argv)} failed: {result.error_text()}")

    def _qdisc(self, a: Action) -> None:
        from bpfdeploy.kernel import netns

        if a.kind is not Kind.CREATE:
            return
        att: DesiredAttachment = a.desired
        q: Qdisc = a.payload
        self._step(a)
        self._journal({"qdisc": att.target})
        self._tc_run(netns.command(["tc", "qdisc", "add", "dev", q.device, "clsact"], q.netns))
        self.undo.push(f"delete clsact on {q.device}", lambda: self._tc_run(
            netns.command(["tc", "qdisc", "del", "dev", q.device, "clsact"], q.netns)))
        self.created_qdiscs.add(att.target)
        self._done(a)

    def _optional_attachment(self, a: Action) -> None:
        """An attachment whose failure is a warning: its own steps are undone, the rest goes on."""
        att: DesiredAttachment = a.desired
        marks = len(self.undo.steps), len(self.renames), len(self.retired)
        try:
            self._attachment(a)
        except Exception as exc:  # KeyboardInterrupt and the like still roll everything back
            steps = self.undo.steps[marks[0]:]
            del self.undo.steps[marks[0]:], self.renames[marks[1]:], self.retired[marks[2]:]
            for what, fn in reversed(steps):
                try:
                    fn()
                except Exception as undo_exc:
                    self.result.warnings.append(f"undo '{what}' of optional attachment {att.name!r} failed: {undo_exc}")
            old = self._previous_legacy(a)
            if old is not None:  # the old attach is still in place: keep it in the record
                self.legacy[att.name] = old
            why = str(exc) if not isinstance(exc, KernelError) or not exc.log else f"{exc}: {exc.log.strip()[-300:]}"
            self.result.skipped.append((att.name, why))
            self.result.warnings.append(f"optional attachment {att.name!r} was not made: {why}")
            self.skipped.add(att.name)
        finally:
            self.current = ""

    @staticmethod
    def _previous_legacy(a: Action) -> LegacyAttachment | None:
        if a.kind is Kind.CREATE:
            return None
        payload = a.payload
        return payload.old if isinstance(payload, (LegacyAttach, TcFilter)) else None

    def _attachment_of_plan(self, a: Action) -> None:
        if isinstance(a.desired, DesiredAttachment) and a.desired.optional:
            self._optional_attachment(a)
        else:
            self._attachment(a)

    def _attachment(self, a: Action) -> None:
        att: DesiredAttachment = a.desired
        if isinstance(a.payload, TcFilter):
            if a.kind is Kind.NOOP:
                self.legacy[att.name] = a.payload.old
                return
            self._step(a)
            self._prog_fd(att.program)
            if att.program not in self.prog_ids:
                self.prog_ids[att.program] = self.k.prog_id(self._prog_fd(att.program))
            self._tc(a)
            self._done(a)
            return
        if a.kind is Kind.NOOP:
            if isinstance(a.payload, LegacyAttach) and a.payload.old is not None:
                self.legacy[att.name] = a.payload.old
            return
        self._step(a)
        prog_fd = self._prog_fd(att.program)
        if not isinstance(a.payload, LegacyAttach):
            if a.kind is Kind.UPDATE:
                link_fd = self._fd(self.k.obj_get(str(att.pin)))
                old_prog = self.k.link_info(link_fd).prog_id
                old_fd = self._fd(self.k.prog_fd_by_id(old_prog))
                self.k.link_update(link_fd, prog_fd, old_fd)
                self.undo.push(f"move link {att.name} back", lambda l=link_fd, o=old_fd: self.k.link_update(l, o))
            else:
                if isinstance(a.payload, XdpTakeover):
                    self._xdp_takeover(att, a.payload.holder_pin)
                self._journal({"link_target": [att.name, self._link_target(att)]})
                if a.kind is Kind.REPLACE and att.attach_type.name in ("tcx_ingress", "tcx_egress"):
                    self._tcx_vacate(att, prog_fd)
                link_fd = self._fd(self._make_link(att, prog_fd))
                self.link_fds[att.name] = link_fd
                self._pin(link_fd, att.pin, a.kind is Kind.REPLACE)
        else:
            legacy: LegacyAttach = a.payload
            flags, old = legacy.flags, legacy.old
            target_fd = self._target_fd(att)
            at = att.attach_type.value
            if a.kind is Kind.UPDATE and old is not None:
                old_fd = self._fd(self.k.prog_fd_by_id(old.prog_id))
                replace_fd = old_fd if flags & libbpf.BPF_F_ALLOW_MULTI else None
                self.k.prog_attach(prog_fd, target_fd, at, flags, replace_fd)
                self.undo.push(f"reattach {att.name}", lambda: self.k.prog_attach(
                    old_fd, target_fd, at, flags, prog_fd if replace_fd is not None else None))
            else:
                if legacy.detach_first:
                    # Only the flags change, and the kernel refuses mixed flags: detach first (a gap).
                    old_fd = self._fd(self.k.prog_fd_by_id(old.prog_id))
                    self.k.prog_detach(old_fd, target_fd, at)
                    self.undo.push(f"reattach {att.name}", lambda: self.k.prog_attach(old_fd, target_fd, at, old.flags))
                self.k.prog_attach(prog_fd, target_fd, at, flags)
                self.undo.push(f"detach {att.name}", lambda: self.k.prog_detach(prog_fd, target_fd, at))
                if legacy.retire is not None:
                    self.retired.append(legacy.retire)
            self.legacy[att.name] = LegacyAttachment(att.name, at, att.target, self.prog_ids[att.program], flags)
            self._journal({"legacy": {"name": att.name, "attach_type": at, "target": att.target,
                                      "prog_id": self.prog_ids[att.program], "flags": flags}})
        self._done(a)

    # -- after commit
    def commit_deletes(self) -> None:
        for retired in self.retired:
            self._remove_old_hook(retired)
        for a in self.plan.actions:
            if a.kind is not Kind.DELETE or isinstance(a.payload, Cleanup):
                continue
            self.current = f"delete {a.address}"
            if self.on_step:
                self.on_step(a)
            try:
                if isinstance(a.payload, (LegacyDetach, TcFilterRemoval)):
                    self._remove_old_hook(a.payload)
                elif a.resource is Resource.QDISC:
                    if not self._delete_qdisc(a.live_pin, a.payload):
                        continue  # kept (it still holds filters): said in a warning
                elif a.resource is Resource.CGROUP:
                    try:
                        self.k.rmdir(a.live_pin)
                        self.created_cgroups.discard(a.live_pin)
                    except OSError as exc:
                        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                            self.result.warnings.append(f"cgroup {a.live_pin} was kept: it still has processes or children")
                        elif exc.errno == errno.ENOENT:
                            self.created_cgroups.discard(a.live_pin)
                        else:
                            raise
                else:
                    # The plan saw real directories; check again right before the removal, so that a
                    # symlink put there since cannot send it (or the detach) outside the pin root.
                    confined(self.d.pin_root, a.live_pin)
                    if a.resource is Resource.ATTACHMENT:
                        self._detach_now(a.live_pin)
                    try:
                        self.k.unlink(a.live_pin)  # a link detaches, a program or map is freed when unused
                    except FileNotFoundError:
                        continue  # already gone (an XDP link taken over by its successor)
                self._done(a)
            except (OSError, KernelError) as exc:
                self.result.warnings.append(f"{self.current} failed: {exc}")
        self.current = ""
        self._remove_empty_dirs()

    def _delete_tc_filter(self, f: TcFilterRemoval) -> None:
        from bpfdeploy.kernel import netns

        self._tc_run(netns.command(["tc", "filter", "del", "dev", f.device, f.direction, "pref", str(f.priority),
                                    "handle", str(f.handle), "bpf"], f.netns))

    def _remove_old_hook(self, what: LegacyDetach | TcFilterRemoval) -> None:
        if isinstance(what, TcFilterRemoval):
            self._delete_tc_filter(what)
            return
        old = what.old
        flags = os.O_RDONLY | os.O_DIRECTORY
        try:
            target_fd = self.k.open(old.target, flags)
        except FileNotFoundError:
            return
        try:
            prog_fd = self.k.prog_fd_by_id(old.prog_id)
        except KernelError:
            self.k.close(target_fd)
            return
        try:
            self.k.prog_detach(prog_fd, target_fd, old.attach_type)
        finally:
            self.k.close(prog_fd)
            self.k.close(target_fd)

    def _delete_qdisc(self, target: str, q: Qdisc) -> bool:
        """Remove a clsact qdisc we added, unless filters (anyone's) are still on it.

        The filters are read again here, at the moment of deleting: another tool may have added
        one since the plan was made, and a qdisc holding its filter must stay."""
        from bpfdeploy.kernel import netns
        from bpfdeploy.kernel.live import parse_tc_filters

        device, ns = q.device, q.netns
        if ns and not os.path.exists(ns):
            self.created_qdiscs.discard(target)
            return False
        left = []
        for direction in ("ingress", "egress"):
            result = self.k.tc_read(netns.command(["tc", "-j", "filter", "show", "dev", device, direction], ns))
            if result.returncode != 0:  # the device is gone, and its qdisc with it
                self.created_qdiscs.discard(target)
                return False
            left += parse_tc_filters(result.stdout)
        if left:
            self.result.warnings.append(f"clsact qdisc on {target} was kept: it still holds tc filters")
            return False
        self._tc_run(netns.command(["tc", "qdisc", "del", "dev", device, "clsact"], ns))
        self.created_qdiscs.discard(target)
        return True

    def _remove_empty_dirs(self) -> None:
        root = self.d.pin_root
        keep = bool(self.d.maps or self.d.programs or self.d.attachments)
        for sub in ("links", "progs", "maps"):
            path = root / sub
            if not keep and self.k.exists(path):
                try:
                    self.k.rmdir(path)
                except OSError:
                    pass
        if not keep and self.k.exists(root):
            try:
                self.k.rmdir(root)
            except OSError:
                self.result.warnings.append(f"pin root {root} is not empty; it was kept")
        if keep:
            return
        # Directories above the pin root go only if this deployment's apply created them (the record
        # says so) and nothing else is in them; /sys/fs/bpf/bpfdeploy made by someone else stays.
        for path in sorted(self.created_dirs, key=lambda d: -d.count("/")):
            if Path(path) not in root.parents:
                continue
            try:
                self.k.rmdir(path)
                self.created_dirs.discard(path)
            except FileNotFoundError:
                self.created_dirs.discard(path)
            except OSError:
                pass  # another deployment's pin root is in it: kept

    def write_record(self, destroy: bool, manifest_file: str) -> None:
        pins = tuple(sorted(p for p in self.pins if os.path.lexists(p)))
        if destroy:
            if not self.created_cgroups and not self.created_qdiscs:
                remove_record(self.d.name, self.state_dir)
                return
        from bpfdeploy.plan import link_target

        targets = {a.name: link_target(a, self.live.hooks.get((a.kind.value, a.target, a.attach_type.value)))
                   for a in self.d.attachments if not a.mode.legacy and not a.attach_type.tc_filter}
        old_targets = self.live.record.link_targets if self.live.record else {}
        skipped = self.skipped | {name for name, _why in self.plan.skipped}
        for name in skipped & set(targets):  # not made now: what the record knew of it stays
            if name in old_targets:
                targets[name] = old_targets[name]
            else:
                del targets[name]
        for old in (self.live.record.legacy if self.live.record else ()):
            if old.name in skipped and old.name not in self.legacy:
                self.legacy[old.name] = old
        record = Record(name=self.d.name, pin_root=str(self.d.pin_root), boot_id=boot_id(),
                        digests=self.digests, legacy=tuple(self.legacy.values()),
                        created_cgroups=tuple(sorted(self.created_cgroups)), manifest=manifest_file,
                        link_targets=targets, created_qdiscs=tuple(sorted(self.created_qdiscs)), pins=pins,
                        created_dirs=tuple(sorted(self.created_dirs)))
        write_record(record, self.state_dir)

    def _detach_now(self, link_pin: str) -> None:
        """Detach a pinned link before its pin goes, so the hook is free when destroy returns (the kernel
        may free an unpinned link a moment later). perf_event and raw_tp links cannot be detached this
        way; removing their pin is enough."""
        try:
            fd = self.k.obj_get(link_pin)
        except KernelError:
            return
        try:
            self.k.link_detach(fd)
        except KernelError:
            pass
        finally:
            self.k.close(fd)

    def _rmdir_if_there(self, path: Path) -> None:
        try:
            self.k.rmdir(path)
        except FileNotFoundError:
            pass


def confined(root: Path, pin: str) -> None:
    """Raise KernelError unless pin is a file reached from root through real directories only.

    Checked with lstat just before a pin is removed or its link detached: BPF_OBJ_GET and unlink
    follow symlinks in the directories on the way.
    """
    import stat

    top = str(root).rstrip("/")
    if pin.startswith(top + "/") and not any(x in pin for x in ("//", "/./", "/../")) \
            and not pin.endswith(("/", "/.", "/..")):
        # The usual pin, in string operations (Path objects were most of a destroy's own time).
        directories = [top]
        for part in pin[len(top) + 1:].split("/")[:-1]:
            directories.append(directories[-1] + "/" + part)
    else:
        path = Path(pin)
        if root not in path.parents:
            raise KernelError(f"{pin} is outside the pin root {root}: not removed")
        directories = [root]
        for part in path.relative_to(root).parts[:-1]:
            directories.append(directories[-1] / part)
    for current in directories:
        if not real_dir(current):  # a symlink raises; a missing directory means the pin is gone too
            return
    try:
        st = os.lstat(pin)
    except FileNotFoundError:
        return  # already gone: nothing to remove
    if stat.S_ISLNK(st.st_mode):
        raise KernelError(f"{pin} is a symlink: bpfdeploy removes only its own pins, never what a link points to")




def trial_load(first: DesiredProgram, programs: dict[str, tuple[int | None, int | None]]) -> dict[str, int]:
    """Load programs of one object and free them at once (`plan --verify`): function name -> the id each had.

    Nothing is pinned or attached. The maps are fresh ones made from the object's definitions
    (the deployment's pinned maps are not reused, so nothing in them can change) and go with the
    object when it is closed. Raises KernelError as a real load would.
    """
    loaded = libbpf.load_object(str(first.object_path), str(first.pin.parent), programs, {}, dict(first.globals))
    try:
        return {name: libbpf.prog_id(fd) for name, fd in loaded.program_fds.items()}
    finally:
        loaded.close()  # the last reference to each program and map: the kernel frees them here


def ensure_bpffs(path: str = "/sys/fs/bpf") -> None:
    """Mount bpffs where it is missing (a fresh machine has none; bpftool mounts it only as a side effect)."""
    from bpfdeploy.kernel.live import bpffs_mounted

    if bpffs_mounted(path):
        return
    from bpfdeploy.kernel import runner

    result = runner.run(["mount", "-t", "bpf", "bpf", path])
    if result.returncode != 0:
        from bpfdeploy.diagnostics import HostError

        raise HostError(f"cannot mount bpffs on {path}: {result.error_text()}")


def ensure_tracefs(path: str = "/sys/kernel/tracing") -> str:
    """The tracefs mount (mounted here if missing: libbpf and perf tracepoints need it)."""
    from bpfdeploy.host import read_mounts

    mounted = read_mounts().tracefs
    if mounted is not None:
        return str(mounted)
    from bpfdeploy.kernel import runner

    result = runner.run(["mount", "-t", "tracefs", "nodev", path])
    if result.returncode != 0:
        from bpfdeploy.diagnostics import HostError

        raise HostError(f"cannot mount tracefs on {path}: {result.error_text()}")
    return path


@contextmanager
def bpf_stats_enabled(path: str = "/proc/sys/kernel/bpf_stats_enabled") -> Iterator[None]:
    """kernel.bpf_stats_enabled on for a measurement window, then back to what it was."""
    before = Path(path).read_text().strip()
    if before != "1":
        Path(path).write_text("1")
    try:
        yield
    finally:
        if before != "1":
            Path(path).write_text(before)
