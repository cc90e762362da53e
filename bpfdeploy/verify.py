"""`plan --verify`: ask the verifier about every new or changed program before anything changes.

Each program the plan would create or replace is loaded into the kernel and freed again at
once (kernel/apply.py's ``trial_load``): nothing is pinned or attached, and the maps it loads
with are fresh ones made from the object's own definitions, so pinned maps are not touched.
libbpf stops an object's load at the first program the kernel refuses; that program is set
aside and the rest are loaded again, so every program gets its own verdict. A map the kernel
will not create fails every program of its object, and says so.
"""

from __future__ import annotations

from typing import Callable

from bpfdeploy.diagnostics import Diagnostic, KernelError
from bpfdeploy.load_errors import FailureKind, load_failure_message, name_in_log, verifier_tail
from bpfdeploy.model.desired import DesiredProgram, DesiredState
from bpfdeploy.model.frozen import frozen
from bpfdeploy.plan import Kind, Plan, Resource


@frozen
class Verdict:
    """What the kernel said about one program of the plan."""

    program: str  # pin name (attachments refer to it)
    object: str
    function: str
    accepted: bool
    trial_id: int = 0  # the id the program had while it was loaded (freed again), when accepted
    message: str = ""  # why not, naming the program or map libbpf blamed
    source_line: str = ""  # file.c:LINE from the BTF line info, when the verifier log has it
    log_tail: str = ""  # the useful end of the verifier log (or libbpf's messages)

    def to_json(self) -> dict:
        return {"program": self.program, "object": self.object, "function": self.function,
                "accepted": self.accepted, "trial_id": self.trial_id or None, "message": self.message,
                "source_line": self.source_line or None, "log_tail": self.log_tail}


@frozen
class Verification:
    verdicts: tuple[Verdict, ...]

    @property
    def accepted(self) -> bool:
        return all(v.accepted for v in self.verdicts)

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "programs": [v.to_json() for v in self.verdicts]}

    def diagnostics(self, file: str, line_of: Callable[[tuple], int | None]) -> tuple[Diagnostic, ...]:
        """An error per refused program, at the manifest's object (its programs entry when listed)."""
        out = []
        for v in self.verdicts:
            if v.accepted:
                continue
            where = ("objects", v.object)
            line = line_of(where + ("programs", v.function)) or line_of(where)
            out.append(Diagnostic(f"plan --verify: {v.message}", file, f"objects.{v.object}", line,
                                  "the kernel was left as it was; fix the program or leave it out of 'programs'"))
        return tuple(out)


def programs_to_verify(plan: Plan) -> list[DesiredProgram]:
    """The programs apply would load: those the plan creates or replaces."""
    return [a.desired for a in plan.actions
            if a.resource is Resource.PROGRAM and a.kind in (Kind.CREATE, Kind.REPLACE)]


TrialLoad = Callable[[DesiredProgram, dict], dict]  # (first program, {function: (type, expected)}) -> ids


def verify(plan: Plan, desired: DesiredState, trial_load: TrialLoad | None = None) -> Verification:
    """A verdict for each program the plan would load (none when it loads nothing)."""
    if trial_load is None:
        from bpfdeploy.kernel.apply import trial_load
    by_object: dict[str, list[DesiredProgram]] = {}
    for p in programs_to_verify(plan):
        by_object.setdefault(p.object, []).append(p)
    verdicts: list[Verdict] = []
    for group in by_object.values():
        verdicts += _verify_object(group, trial_load)
    return Verification(tuple(verdicts))


def _verify_object(group: list[DesiredProgram], trial_load: TrialLoad) -> list[Verdict]:
    pending = {p.function: p for p in group}
    verdicts: dict[str, Verdict] = {}
    while pending:
        first = next(iter(pending.values()))
        try:
            ids = trial_load(first, {f: (p.type_override, p.expected_attach_type) for f, p in pending.items()})
        except KernelError as exc:
            failure, message = load_failure_message(first.object, first.origin, exc)
            log = name_in_log(exc.log, str(first.object_path), first.origin)
            culprit = pending.get(failure.item) if failure.item_kind == "program" else None
            if culprit is None:  # a map, or a failure libbpf blamed on no program of ours: all of them fail
                for p in pending.values():
                    verdicts[p.function] = Verdict(p.pin_name, p.object, p.function, False, message=message,
                                                   log_tail=verifier_tail(log))
                break
            tail = verifier_tail(log.split("verifier log (last lines):", 1)[-1]) \
                if failure.kind is FailureKind.PROGRAM_LOAD else verifier_tail(log)
            if exc.errno == 1 and culprit.prog_type in ("tracing", "lsm", "ext") and "verifier log" not in log:
                message += (f"; the kernel refused a {culprit.prog_type} program with EPERM and no verifier log, as "
                            "kernels that cannot run fentry/fexit/LSM programs do")
            verdicts[culprit.function] = Verdict(culprit.pin_name, culprit.object, culprit.function, False,
                                                 message=message, source_line=failure.source_line, log_tail=tail)
            del pending[culprit.function]  # the others get a load of their own
            continue
        for function, p in pending.items():
            verdicts[function] = Verdict(p.pin_name, p.object, p.function, True, trial_id=ids.get(function, 0))
        break
    return [verdicts[p.function] for p in group]


def verify_planned(planned):
    """The workflow's Planned with the verdicts, and an error in the plan for each refused program."""
    from bpfdeploy.model.frozen import replace

    desired = planned.prepared.desired
    manifest = planned.prepared.manifest
    verification = verify(planned.plan, desired)
    diags = verification.diagnostics(str(planned.manifest), manifest.line_of)
    plan = replace(planned.plan, diagnostics=planned.plan.diagnostics + diags)
    return replace(planned, plan=plan, verification=verification)
