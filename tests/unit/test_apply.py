"""apply against a strict fake kernel: no root, no kernel, every call it makes is checked.

The plans come from the planner on the scenarios of tests/unit/scenarios.py, the very ones
test_plan.py checks, so what is tested here is the whole contract: the plan decides, apply
carries it out in the plan's order through kernel/door.Kernel and undoes every step in reverse
when one fails. ``expected_calls`` says, action by action, what each kind of action means in
kernel calls; every scenario's apply is compared with it call for call.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import scenarios as sc
from fake_kernel import MUTATING, FakeKernel

from bpfdeploy.diagnostics import ApplyError
from bpfdeploy.hooks import HookKind
from bpfdeploy.kernel.apply import StepHooks, apply
from bpfdeploy.model.frozen import replace
from bpfdeploy.plan import STAGING_SUFFIX, Cleanup, Kind, LegacyAttach, LegacyDetach, NewMap, Resource, WriteEntries, plan

ROOT, CGROUP = sc.ROOT, sc.CGROUP
OBJ = "/cache/counters.bpf.o"


def counters() -> tuple:
    """A first deployment of the counters object (one map, two programs, one cgroup link) on a bare host."""
    state, live, _ = sc.counters_on_a_bare_host()
    return state, live, plan(state, live)


def run(p, state, live, kernel, tmp_path, **kw):
    return apply(p, state, live, state_dir=tmp_path / "state", kernel=kernel, **kw)


def fake(live, **kw) -> FakeKernel:
    return FakeKernel.for_live(live, **kw)


def test_first_apply_makes_exactly_these_calls_in_the_plans_order(tmp_path):
    state, live, p = counters()
    assert [a.address for a in p.changes] == ["map/traffic", "prog/count_ingress", "prog/count_egress",
                                              "attach/ingress"]
    dirs = [str(ROOT.parent), str(ROOT), *(str(ROOT / s) for s in ("maps", "progs", "links"))]
    expect = [("mkdir", d) for d in dirs] + [
        ("load_object", OBJ, (), ()),  # the map, from the object the planner chose
        ("obj_pin", f"load:{OBJ}@traffic", str(ROOT / "maps/traffic")),
        ("load_object", OBJ, ("count_egress", "count_ingress"), ("traffic",)),  # one load per object, map reused
        ("obj_pin", f"load:{OBJ}#count_ingress", str(ROOT / "progs/count_ingress")),
        ("obj_pin", f"load:{OBJ}#count_egress", str(ROOT / "progs/count_egress")),
        ("open", CGROUP),
        ("link_create", f"load:{OBJ}#count_ingress", CGROUP),
        ("obj_pin", f"link:load:{OBJ}#count_ingress", str(ROOT / "links/ingress")),
    ]
    kernel = fake(live, expect=list(expect))
    result = run(p, state, live, kernel, tmp_path)
    kernel.done()
    assert result.done == [f"create {a.address}" for a in p.changes]
    assert result.mutations == len(kernel.mutating_calls())


def test_a_no_op_plan_makes_no_call_at_all(tmp_path):
    state, live = sc.desired(), sc.live_state()
    p = plan(state, live)
    assert not p.changes and not p.errors
    kernel = fake(live, expect=[])
    result = run(p, state, live, kernel, tmp_path)
    assert kernel.calls == [] and result.mutations == 0


def test_an_injected_step_failure_comes_from_the_hooks_not_the_environment(tmp_path, monkeypatch):
    state, live, p = counters()
    monkeypatch.setenv("BPFDEPLOY_FAIL_AT", "prog/count_egress")  # apply itself must not read it
    kernel = fake(live)
    run(p, state, live, kernel, tmp_path)
    kernel = fake(live)
    with pytest.raises(ApplyError, match="prog/count_egress"):
        run(p, state, live, kernel, tmp_path / "2", hooks=StepHooks(fail_at="prog/count_egress"))
    assert [c for c in kernel.calls if c[0] == "link_create"] == []  # stopped before the attachment


def test_a_replaced_program_is_staged_then_swapped_by_link_update_then_renamed(tmp_path):
    state = sc.desired()
    programs = tuple(replace(x, digest="sha256-new") if x.pin_name == "count_ingress" else x
                     for x in state.programs)
    state = replace(state, programs=programs)
    live = sc.live_state()
    p = plan(state, live)
    assert {a.address: a.kind for a in p.changes} == {"prog/count_ingress": Kind.REPLACE,
                                                      "attach/ingress": Kind.UPDATE}
    kernel = fake(live)
    run(p, state, live, kernel, tmp_path)
    staged = str(ROOT / "progs/count_ingress") + STAGING_SUFFIX
    names = [c[0] for c in kernel.mutating_calls()]
    assert names == ["load_object", "obj_pin", "link_update", "rename"]
    pin_call, update, rename = kernel.mutating_calls()[1:]
    assert pin_call[2] == staged  # beside the running program until the commit
    assert update[1] == str(ROOT / "links/ingress")  # the link moves atomically
    assert rename[1:] == (staged, str(ROOT / "progs/count_ingress"))


def test_entries_that_differ_are_written_and_restored_on_failure(tmp_path):
    state = sc.desired()
    values = {(sc.pin("maps/blocked_ports"), sc.u32(9)): sc.u32(0),
              (sc.pin("maps/port_rewrites"), sc.u32(7777)): sc.u32(7778)}
    live = sc.live_state(map_values=values)
    p = plan(state, live)
    kernel = fake(live)
    run(p, state, live, kernel, tmp_path)
    assert kernel.mutating_calls() == [("map_update", sc.pin("maps/blocked_ports"), sc.u32(9),
                                        sc.u32(1))]


def test_destroy_removes_links_then_programs_then_maps_and_only_under_the_pin_root(tmp_path):
    live = sc.live_state(without=())
    empty = replace(sc.desired(), maps=(), programs=(), attachments=())
    p = plan(empty, live, destroy=True)
    kernel = fake(live)
    run(p, empty, live, kernel, tmp_path, destroy=True)
    unlinked = [c[1] for c in kernel.mutating_calls() if c[0] == "unlink"]
    assert unlinked and all(u.startswith(str(ROOT) + "/") for u in unlinked)
    kinds = [Path(u).relative_to(ROOT).parts[0] for u in unlinked if not u.endswith(STAGING_SUFFIX)]
    assert kinds == sorted(kinds, key=["links", "progs", "maps"].index)
    detached = [c[1] for c in kernel.mutating_calls() if c[0] == "link_detach"]
    assert set(detached) <= {u for u in unlinked if "/links/" in u}  # links are detached before unpinning


def test_apply_reaches_the_kernel_only_through_the_door():
    """In kernel/apply.py, no mutating libbpf or os call outside trial_load and the mount helpers."""
    source = Path(__file__).resolve().parents[2] / "bpfdeploy/kernel/apply.py"
    tree = ast.parse(source.read_text())
    allowed = {"trial_load", "ensure_bpffs", "ensure_tracefs", "bpf_stats_enabled"}
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.ClassDef)) or fn.name in allowed:
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("libbpf", "os") \
                    and node.func.attr in MUTATING | {"open", "dup", "close"}:
                bad.append(f"line {node.lineno}: {node.func.value.id}.{node.func.attr}()")
    assert not bad, "apply.py calls the kernel directly: " + ", ".join(sorted(set(bad)))


# ---------------------------------------------------------------- every planning scenario through apply


def expected_calls(p, state, kernel: FakeKernel) -> list[tuple]:
    """The kernel-changing calls that carry out plan ``p``, in order, as the fake records them.

    Written from what each kind of action means, not from apply's code: the plan's actions in its
    order (deletions after the commit), each object loaded once with all its programs of the plan,
    a replacement pinned beside the old pin and renamed over it at the commit. ``("STEP", address)``
    marks where apply says it starts an action; the calls of that action follow it.
    """
    calls: list[tuple] = []
    loaded: dict[str, str] = {}  # program pin name -> fd label of the program loaded now
    new_maps: dict[str, str] = {}  # map name -> fd label of the map made now
    objects: set[str] = set()
    staged: list[tuple[str, str]] = []

    def pin_new(label: str, final, replacing: bool, access=None) -> None:
        target = str(final) + (STAGING_SUFFIX if replacing else "")
        calls.append(("obj_pin", label, target))
        if access is not None:
            calls.extend(access_calls(target, access))
        if replacing:
            staged.append((target, str(final)))

    def access_calls(path: str, access) -> list[tuple]:
        out = []
        if access.uid is not None or access.gid is not None:
            out.append(("chown", path, -1 if access.uid is None else access.uid, -1 if access.gid is None else access.gid))
        if access.mode is not None:
            out.append(("chmod", path, access.mode))
        return out

    def prog_label(pin_name: str) -> str:
        return loaded.get(pin_name) or str(state.program(pin_name).pin)  # else obj_get of its pin

    def map_label(name: str) -> str:
        return new_maps.get(name) or str(state.map(name).pin)

    def ensure_dirs() -> None:
        root = state.pin_root
        chain = [d for d in [*reversed(root.parents), root] if str(d).startswith("/sys/fs/bpf/")]
        if state.maps or state.programs or state.attachments:
            chain += [root / sub for sub in ("maps", "progs", "links")]
        for d in chain:
            if str(d) not in kernel.dirs:
                calls.append(("mkdir", str(d)))
                if state.pin_root_access is not None and (d == root or d.parent == root):
                    calls.extend(access_calls(str(d), state.pin_root_access))

    dirs_ready = False
    for a in p.actions:
        if isinstance(a.payload, Cleanup):
            calls += [("STEP", a.address), ("unlink", a.live_pin)]
            continue
        if a.kind in (Kind.DELETE, Kind.NOOP):
            continue
        if not dirs_ready:
            ensure_dirs()
            dirs_ready = True
        if a.resource is Resource.PROGRAM:
            obj = a.desired.object
            if obj in objects:
                continue  # loaded, pinned and reported with the first program of its object
            objects.add(obj)
            group = [x for x in p.actions if x.resource is Resource.PROGRAM and x.kind in (Kind.CREATE, Kind.REPLACE)
                     and x.desired.object == obj]
            calls += [("STEP", x.address) for x in group]
            first = group[0].desired
            calls.append(("load_object", str(first.object_path), tuple(sorted(x.desired.function for x in group)),
                          tuple(sorted(inner for inner, _ in first.maps))))
            for x in group:
                loaded[x.desired.pin_name] = f"load:{first.object_path}#{x.desired.function}"
                pin_new(loaded[x.desired.pin_name], x.desired.pin, x.kind is Kind.REPLACE, x.desired.access)
            continue
        calls.append(("STEP", a.address))
        if a.resource is Resource.CGROUP:
            missing = [d for d in [*reversed(Path(a.desired).parents), Path(a.desired)] if str(d) not in kernel.dirs]
            calls += [("mkdir", str(d)) for d in missing]
        elif a.resource is Resource.MAP and isinstance(a.payload, NewMap):
            loader = state.program(a.payload.loader)
            label = new_maps[a.desired.name] = f"load:{loader.object_path}@{a.payload.inner}"
            calls.append(("load_object", str(loader.object_path), (), ()))
            pin_new(label, a.desired.pin, a.kind is Kind.REPLACE, a.desired.access)
            calls += [("map_update", label, k, v) for k, v in a.payload.entries]
        elif a.resource is Resource.MAP and isinstance(a.payload, WriteEntries):
            calls += [("map_update", map_label(a.desired.name), k, v) for k, v in a.payload.entries]
        elif a.resource is Resource.ACCESS:
            calls += access_calls(a.live_pin, a.desired)
        elif a.resource is Resource.ATTACHMENT:
            att = a.desired
            assert att.kind in (HookKind.CGROUP, HookKind.SOCKMAP), f"no model for {att.kind} attachments"
            target = att.target if att.kind is HookKind.CGROUP else map_label(att.target)
            if isinstance(a.payload, LegacyAttach):
                assert not a.payload.detach_first and a.payload.old is None, "no model for a moved legacy attach"
                calls.append(("prog_attach", prog_label(att.program), target, att.attach_type.value, a.payload.flags))
            elif a.kind is Kind.UPDATE:
                calls.append(("link_update", str(att.pin), prog_label(att.program)))
            else:
                calls.append(("link_create", prog_label(att.program), target, att.attach_type.value))
                pin_new(f"link:{prog_label(att.program)}", att.pin, a.kind is Kind.REPLACE)
        else:
            raise AssertionError(f"no model for {a.resource} {a.kind}")
    if not dirs_ready:
        ensure_dirs()
    for target, final in staged:  # the commit
        if Path(final).parent == state.pin_root / "links" and final in kernel.files:
            calls.append(("link_detach", final))  # the old link leaves its hook before the new pin takes its name
        calls.append(("rename", target, final))
    for a in p.actions:  # deletions, after the commit
        if a.kind is not Kind.DELETE or isinstance(a.payload, Cleanup):
            continue
        calls.append(("STEP", a.address))
        if isinstance(a.payload, LegacyDetach):
            old = a.payload.old
            calls.append(("prog_detach", f"prog#{old.prog_id}", old.target, old.attach_type))
        elif a.resource is Resource.CGROUP:
            calls.append(("rmdir", a.live_pin))
        elif a.resource is Resource.ATTACHMENT:
            calls += [("link_detach", a.live_pin), ("unlink", a.live_pin)]
        else:
            calls.append(("unlink", a.live_pin))
    if not (state.maps or state.programs or state.attachments):  # destroy: the emptied directories go
        root = state.pin_root
        calls += [("rmdir", str(root / sub)) for sub in ("links", "progs", "maps") if str(root / sub) in kernel.dirs]
        if str(root) in kernel.dirs:
            calls.append(("rmdir", str(root)))
    return calls


def steps_and_mutations(kernel: FakeKernel) -> list[tuple]:
    return [c for c in kernel.calls if c[0] == "STEP" or c[0] in MUTATING]


def marking(kernel: FakeKernel):
    """An on_step callback that puts a ("STEP", address) mark among the fake's calls."""
    return lambda action: kernel.calls.append(("STEP", action.address))


SCENARIOS = sorted(sc.SCENARIOS)
# Every scenario of scenarios.py goes through apply below; none is left out (the fixtures hold
# only cgroup and sockmap hooks, which the fake and expected_calls both cover).
LEFT_OUT: dict[str, str] = {}


def test_every_planning_scenario_is_carried_through_apply():
    assert set(SCENARIOS) == set(sc.SCENARIOS) - set(LEFT_OUT)
    assert len(SCENARIOS) >= 36


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_applies_with_exactly_the_plans_calls(tmp_path, name):
    s = sc.SCENARIOS[name]()
    p = plan(s.state, s.live, destroy=s.destroy)
    kernel = fake(s.live)
    if p.errors:  # a plan with errors changes nothing, and reads nothing either
        with pytest.raises(ApplyError, match="the plan has errors"):
            run(p, s.state, s.live, kernel, tmp_path, destroy=s.destroy, on_step=marking(kernel))
        assert kernel.calls == []
        return
    result = run(p, s.state, s.live, kernel, tmp_path, destroy=s.destroy, on_step=marking(kernel))
    if not p.changes:  # a no-op plan: not one call, not even a read
        assert kernel.calls == [] and result.mutations == 0 and result.done == []
        return
    assert steps_and_mutations(kernel) == expected_calls(p, s.state, kernel)
    assert result.done == [f"{a.kind.value} {a.address}" for a in p.changes if a.kind is not Kind.DELETE
                           or isinstance(a.payload, Cleanup)] + [
        f"delete {a.address}" for a in p.changes if a.kind is Kind.DELETE and not isinstance(a.payload, Cleanup)]
    assert result.mutations == len(kernel.mutating_calls()) and not result.warnings


def undo_of(call, made: set, kernel: FakeKernel, state) -> list[tuple]:
    """What rolling back a call must do, given the pins and directories ``made`` by this apply before it."""
    name = call[0]
    if name == "mkdir":
        return [("rmdir", call[1])]
    if name == "obj_pin":
        return [("unlink", call[2])]
    if name == "prog_attach":
        return [("prog_detach", *call[1:4])]
    if name == "link_update":  # back to the program the link held (FakeKernel.link_info says 4242)
        return [("link_update", call[1], "prog#4242")]
    if name == "map_update" and not call[1].startswith("load:"):  # a live map: its old entry back
        old = kernel.values.get((call[1], call[2]))
        return [("map_update", call[1], call[2], old) if old is not None else ("map_delete", call[1], call[2])]
    if name in ("chown", "chmod") and call[1] not in made:  # an existing pin: its owner or mode back
        uid, gid, mode = kernel.stats[call[1]]
        return [("chown", call[1], uid, gid) if name == "chown" else ("chmod", call[1], mode)]
    if name == "rename":  # the new object to its staged pin; the old map or program pinned back
        staged, final = call[1:]
        back = [("rename", final, staged)]
        if final in kernel.files and Path(final).parent != state.pin_root / "links":
            back.append(("obj_pin", final, final))
        return back
    # Nothing to undo: a load or a new link is freed with its fd, a new map's entries go with it,
    # a new pin's owner and mode with the pin, a staged pin of a killed apply was garbage. The old
    # link that the commit detaches before its replacement takes the pin cannot be put back: a
    # detached link does not attach again (see the report of issue 15; not modelled as undone).
    return []


def _mutations(calls) -> list[tuple]:
    return [c for c in calls if c[0] in MUTATING]


def _split_at_commit(p, expected) -> tuple[list, list]:
    """The expected mutating calls before the deletions (rolled back on a failure) and from them on."""
    deletes = {a.address for a in p.actions if a.kind is Kind.DELETE and not isinstance(a.payload, Cleanup)}
    first = next((i for i, c in enumerate(expected) if c[0] == "STEP" and c[1] in deletes), len(expected))
    return _mutations(expected[:first]), _mutations(expected[first:])


def _multi_step(name: str) -> bool:
    s = sc.SCENARIOS[name]()
    p = plan(s.state, s.live, destroy=s.destroy)
    return not p.errors and bool(p.changes) and len(_mutations(expected_calls(p, s.state, fake(s.live)))) > 1


MULTI_STEP = [name for name in SCENARIOS if _multi_step(name)]


def test_the_multi_step_scenarios_are_the_ones_with_several_calls():
    assert {"nothing live", "every program rebuilt", "incompatible map geometry, recreate", "pin access drift",
            "destroy", "defunct link", "every enforced entry is missing"} <= set(MULTI_STEP)


@pytest.mark.parametrize("name", MULTI_STEP)
def test_a_failure_at_each_call_of_a_scenario_undoes_the_earlier_calls_in_reverse(tmp_path, name):
    """Before the commit a failure undoes everything done; after it, a failed deletion is a warning
    and the other deletions still happen (what is committed is never rolled back)."""
    s = sc.SCENARIOS[name]()
    p = plan(s.state, s.live, destroy=s.destroy)
    before_commit, deletions = _split_at_commit(p, expected_calls(p, s.state, fake(s.live)))
    for n, failing in enumerate(before_commit + deletions):
        kernel = fake(s.live, fail_at=n)
        where = f"failure at call {n} {failing}"
        if failing[0] == "link_detach":
            # The old link that the commit (or a deletion) detaches goes with its pin anyway: the
            # detach only frees the hook at once, so its failure is let pass (apply._detach_now).
            result = run(p, s.state, s.live, kernel, tmp_path / str(n), destroy=s.destroy)
            assert _mutations(kernel.calls) == [c for i, c in enumerate(before_commit + deletions) if i != n], where
            assert not result.warnings, where
        elif n < len(before_commit):
            with pytest.raises(ApplyError) as failed:
                run(p, s.state, s.live, kernel, tmp_path / str(n), destroy=s.destroy)
            assert not failed.value.rollback, (where, failed.value.rollback)  # every undo step worked
            at = next(i for i, c in enumerate(kernel.calls) if c[0] == "FAILED")
            assert kernel.calls[at][1:] == failing, where
            done = _mutations(kernel.calls[:at])
            made = {c[2] for c in done if c[0] == "obj_pin"} | {c[1] for c in done if c[0] == "mkdir"}
            undo = [u for i in reversed(range(len(done))) for u in undo_of(done[i], made, kernel, s.state)]
            assert _mutations(kernel.calls[at + 1:]) == undo, where
        else:
            result = run(p, s.state, s.live, kernel, tmp_path / str(n), destroy=s.destroy)
            assert _mutations(kernel.calls) == [c for i, c in enumerate(before_commit + deletions) if i != n], where
            # The emptied directories of a destroy are removed where possible (commit_deletes).
            ignored = failing[0] == "rmdir" and Path(failing[1]).parent == s.state.pin_root
            assert len(result.warnings) == (0 if ignored else 1), (where, result.warnings)


def test_a_failure_in_the_commit_puts_the_old_program_back_on_its_pin(tmp_path):
    """The rename of the commit replaces the old program's pin: a rollback after it must pin the
    old program there again (it used to be left unpinned, the new one in its place)."""
    s = sc.changed_digest()
    p = plan(s.state, s.live)
    kernel = fake(s.live)
    with pytest.raises(ApplyError, match="commit: injected failure"):
        run(p, s.state, s.live, kernel, tmp_path, hooks=StepHooks(fail_at="commit"))
    final = sc.pin("progs/count_ingress")
    staged = final + STAGING_SUFFIX
    rename = kernel.calls.index(("rename", staged, final))
    assert _mutations(kernel.calls[rename + 1:]) == [
        ("rename", final, staged),  # the new program back to its staged pin ...
        ("obj_pin", final, final),  # ... the old one, held by the fd read from its pin, pinned again
        ("link_update", sc.pin("links/ingress"), "prog#4242"),  # the link back on the old program
        ("unlink", staged),  # and the new program's pin gone
    ]
