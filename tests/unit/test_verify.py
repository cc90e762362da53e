"""plan --verify's bookkeeping: one verdict per program, a refused program set aside so the rest are
loaded again, a map failure failing its whole object (a fake trial load with recorded libbpf logs)."""

from __future__ import annotations

from pathlib import Path

from bpfdeploy.diagnostics import KernelError
from bpfdeploy.model.desired import DesiredProgram, DesiredState
from bpfdeploy.plan import Action, Kind, Plan, Resource
from bpfdeploy.verify import programs_to_verify, verify

LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "libbpf"


def _prog(function: str, obj: str = "tutorial") -> DesiredProgram:
    return DesiredProgram(pin_name=function, pin=Path("/sys/fs/bpf/x/progs") / function, object=obj,
                          function=function, prog_type="xdp", type_override=None, expected_attach_type=None,
                          digest="d", object_path=Path("/cache/" + "a" * 64 + ".o"), maps=(), origin="three_xdp.bpf.c")


def _plan(*programs: DesiredProgram, kinds=None) -> tuple[Plan, DesiredState]:
    kinds = kinds or [Kind.CREATE] * len(programs)
    actions = tuple(Action(k, Resource.PROGRAM, f"prog/{p.pin_name}", desired=p) for p, k in zip(programs, kinds))
    return Plan("x", "/sys/fs/bpf/x", actions), DesiredState("x", Path("/sys/fs/bpf/x"), (), programs, ())


def test_only_created_and_replaced_programs_are_loaded():
    plan, _d = _plan(_prog("a"), _prog("b"), _prog("c"), kinds=[Kind.CREATE, Kind.NOOP, Kind.REPLACE])
    assert [p.function for p in programs_to_verify(plan)] == ["a", "c"]


def test_a_refused_program_is_set_aside_and_the_others_loaded_again():
    log = (LOGS / "verifier_reject.log").read_text().replace("xdp_unchecked_read", "b")
    calls = []

    def trial(first, programs):
        calls.append(sorted(programs))
        if "b" in programs:
            raise KernelError("loading failed", 13, log)
        return {name: 100 + i for i, name in enumerate(sorted(programs))}

    plan, desired = _plan(_prog("a"), _prog("b"), _prog("c"))
    result = verify(plan, desired, trial)
    assert calls == [["a", "b", "c"], ["a", "c"]]
    assert [(v.function, v.accepted, v.trial_id) for v in result.verdicts] == [("a", True, 100), ("b", False, 0),
                                                                               ("c", True, 101)]
    refused = result.verdicts[1]
    assert refused.source_line == "three_xdp.bpf.c:29"
    assert refused.message.startswith("program 'b' of object 'tutorial' (three_xdp.bpf.c) failed to load at")
    assert refused.log_tail.splitlines()[-1].strip() == "R1 offset is outside of the packet"
    assert not result.accepted
    diags = result.diagnostics("m.yaml", lambda where: {("objects", "tutorial"): 7}.get(where))
    assert len(diags) == 1 and diags[0].line == 7 and diags[0].path == "objects.tutorial"


def test_a_map_the_kernel_refuses_fails_every_program_of_its_object_only():
    log = (LOGS / "zero_sized_map.log").read_text()

    def trial(first, programs):
        if first.object == "sized":
            raise KernelError("loading failed", 22, log)
        return {name: 7 for name in programs}

    plan, desired = _plan(_prog("a", "sized"), _prog("b", "sized"), _prog("c", "fine"))
    result = verify(plan, desired, trial)
    assert [(v.function, v.accepted) for v in result.verdicts] == [("a", False), ("b", False), ("c", True)]
    assert all("map 'zz_unsized' of object 'sized'" in v.message for v in result.verdicts[:2])


def test_nothing_to_load_is_accepted():
    plan, desired = _plan(_prog("a"), kinds=[Kind.NOOP])
    result = verify(plan, desired, lambda first, programs: {})
    assert result.verdicts == () and result.accepted
