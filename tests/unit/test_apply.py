"""apply against a strict fake kernel: no root, no kernel, every call it makes is checked.

The plans come from the planner on the recorded state of tests/unit/test_plan.py, so what is
tested here is the whole contract: the plan decides, apply carries it out in the plan's order
through kernel/door.Kernel and undoes every step in reverse when one fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import test_plan as recorded
from fake_kernel import MUTATING, FakeKernel

from bpfdeploy.diagnostics import ApplyError
from bpfdeploy.kernel.apply import StepHooks, apply
from bpfdeploy.model.frozen import replace
from bpfdeploy.model.live import LiveState
from bpfdeploy.plan import STAGING_SUFFIX, Kind, plan

ROOT, CGROUP = recorded.ROOT, recorded.CGROUP
OBJ = "/cache/counters.bpf.o"


def counters() -> tuple:
    """A first deployment of the counters object (one map, two programs, one cgroup link) on a bare host."""
    state = recorded.desired(objects=("counters",), attachments=(recorded.ATTACHMENTS[0],))
    hooks_ = {k: replace(h, prog_ids=()) for k, h in recorded.recorded_hooks(False).items()}
    live = LiveState(pin_root=ROOT, pin_root_exists=False, pinned=(), hooks=hooks_,
                     existing_cgroups=frozenset({CGROUP}))
    return state, live, plan(state, live)


def run(p, state, live, kernel, tmp_path, **kw):
    if live.pin_root_exists:  # the directories the recorded deployment has
        kernel.dirs |= {str(ROOT.parent), str(ROOT), *(str(ROOT / s) for s in ("maps", "progs", "links")), CGROUP}
    return apply(p, state, live, state_dir=tmp_path / "state", kernel=kernel, **kw)


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
    kernel = FakeKernel(expect=list(expect))
    result = run(p, state, live, kernel, tmp_path)
    kernel.done()
    assert result.done == [f"create {a.address}" for a in p.changes]
    assert result.mutations == len(kernel.mutating_calls())


def test_a_no_op_plan_makes_no_call_at_all(tmp_path):
    state, live = recorded.desired(), recorded.live_state()
    p = plan(state, live)
    assert not p.changes and not p.errors
    kernel = FakeKernel(expect=[])
    result = run(p, state, live, kernel, tmp_path)
    assert kernel.calls == [] and result.mutations == 0


def _inverse(call) -> tuple | None:
    """The undo of a mutating call, as apply must make it (None: nothing to undo, the kernel frees it)."""
    name = call[0]
    if name == "mkdir":
        return ("rmdir", call[1])
    if name == "obj_pin":
        return ("unlink", call[2])
    if name == "prog_attach":
        return ("prog_detach", *call[1:4])
    return None  # loads and new links are freed with their fds; entries of a new map go with it


def test_a_failure_at_each_step_undoes_every_earlier_step_in_reverse(tmp_path):
    state, live, p = counters()
    probe = FakeKernel()
    run(p, state, live, probe, tmp_path)
    steps = len(probe.mutating_calls())
    assert steps >= 8
    for n in range(steps):
        kernel = FakeKernel(fail_at=n)
        with pytest.raises(ApplyError) as failed:
            run(p, state, live, kernel, tmp_path / str(n))
        assert not failed.value.rollback, failed.value.rollback  # every undo step worked
        failed_at = next(i for i, c in enumerate(kernel.calls) if c[0] == "FAILED")
        before = [c for c in kernel.calls[:failed_at] if c[0] in MUTATING]
        after = [c for c in kernel.calls[failed_at + 1:] if c[0] in MUTATING]
        undo = [u for u in map(_inverse, reversed(before)) if u is not None]
        assert after == undo, f"failure at mutating call {n} ({kernel.calls[failed_at][1]})"


def test_an_injected_step_failure_comes_from_the_hooks_not_the_environment(tmp_path, monkeypatch):
    state, live, p = counters()
    monkeypatch.setenv("BPFDEPLOY_FAIL_AT", "prog/count_egress")  # apply itself must not read it
    kernel = FakeKernel()
    run(p, state, live, kernel, tmp_path)
    kernel = FakeKernel()
    with pytest.raises(ApplyError, match="prog/count_egress"):
        run(p, state, live, kernel, tmp_path / "2", hooks=StepHooks(fail_at="prog/count_egress"))
    assert [c for c in kernel.calls if c[0] == "link_create"] == []  # stopped before the attachment


def test_a_replaced_program_is_staged_then_swapped_by_link_update_then_renamed(tmp_path):
    state = recorded.desired()
    programs = tuple(replace(x, digest="sha256-new") if x.pin_name == "count_ingress" else x
                     for x in state.programs)
    state = replace(state, programs=programs)
    live = recorded.live_state()
    p = plan(state, live)
    assert {a.address: a.kind for a in p.changes} == {"prog/count_ingress": Kind.REPLACE,
                                                      "attach/ingress": Kind.UPDATE}
    kernel = FakeKernel()
    run(p, state, live, kernel, tmp_path)
    staged = str(ROOT / "progs/count_ingress") + STAGING_SUFFIX
    names = [c[0] for c in kernel.mutating_calls()]
    assert names == ["load_object", "obj_pin", "link_update", "rename"]
    pin_call, update, rename = kernel.mutating_calls()[1:]
    assert pin_call[2] == staged  # beside the running program until the commit
    assert update[1] == str(ROOT / "links/ingress")  # the link moves atomically
    assert rename[1:] == (staged, str(ROOT / "progs/count_ingress"))


def test_entries_that_differ_are_written_and_restored_on_failure(tmp_path):
    state = recorded.desired()
    values = {(recorded.pin("maps/blocked_ports"), recorded.u32(9)): recorded.u32(0),
              (recorded.pin("maps/port_rewrites"), recorded.u32(7777)): recorded.u32(7778)}
    live = recorded.live_state(map_values=values)
    p = plan(state, live)
    kernel = FakeKernel()
    run(p, state, live, kernel, tmp_path)
    assert kernel.mutating_calls() == [("map_update", recorded.pin("maps/blocked_ports"), recorded.u32(9),
                                        recorded.u32(1))]


def test_destroy_removes_links_then_programs_then_maps_and_only_under_the_pin_root(tmp_path):
    live = recorded.live_state(without=())
    empty = replace(recorded.desired(), maps=(), programs=(), attachments=())
    p = plan(empty, live, destroy=True)
    kernel = FakeKernel()
    run(p, empty, live, kernel, tmp_path, destroy=True)
    unlinked = [c[1] for c in kernel.mutating_calls() if c[0] == "unlink"]
    assert unlinked and all(u.startswith(str(ROOT) + "/") for u in unlinked)
    kinds = [Path(u).relative_to(ROOT).parts[0] for u in unlinked if not u.endswith(STAGING_SUFFIX)]
    assert kinds == sorted(kinds, key=["links", "progs", "maps"].index)
    detached = [c[1] for c in kernel.mutating_calls() if c[0] == "link_detach"]
    assert set(detached) <= {u for u in unlinked if "/links/" in u}  # links are detached before unpinning


@pytest.mark.parametrize("scenario", ["first", "in sync", "replace", "entries", "destroy"])
def test_every_action_of_a_plan_is_reported_done_once(tmp_path, scenario):
    if scenario == "first":
        state, live, p = counters()
    else:
        state, live = recorded.desired(), recorded.live_state(without=() if scenario == "destroy" else
                                                              recorded.SCENARIO_PINS)
        if scenario == "replace":
            state = replace(state, programs=tuple(replace(x, digest="new")
                                                              for x in state.programs))
        if scenario == "entries":
            live = replace(live, map_values={})
        if scenario == "destroy":
            state = replace(state, maps=(), programs=(), attachments=())
        p = plan(state, live, destroy=scenario == "destroy")
    assert not p.errors
    kernel = FakeKernel()
    result = run(p, state, live, kernel, tmp_path, destroy=scenario == "destroy")
    assert sorted(result.done) == sorted(f"{a.kind.value} {a.address}" for a in p.changes)
    assert result.mutations == len(kernel.mutating_calls())


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
