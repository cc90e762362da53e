"""The steps every command shares, in one order: manifest -> build -> desired -> gate -> live -> plan -> apply.

The CLI and the Ansible module both call these functions and only render what they return;
neither re-implements the order. Every function returns data (``Prepared``, ``Planned``,
``Applied``) or raises one of the errors of ``diagnostics``; nothing here prints.
Callbacks (``on_build``, ``on_plan``, ``on_step``, ``on_wait``) let a caller show progress.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bpfdeploy.caches import cache_dir
from bpfdeploy.diagnostics import BpfdeployError, Diagnostic, HostError, ManifestError
from bpfdeploy.manifest.paths import parse_path
from bpfdeploy.model.desired import DesiredState
from bpfdeploy.model.frozen import frozen

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms); type checkers read it as True
if TYPE_CHECKING:  # imported lazily at run time: start-up is most of a no-op plan's cost
    from typing import Any, Callable

    from bpfdeploy.artifacts import ArtifactSet, BuildOutput, Provenance
    from bpfdeploy.kernel.apply import ApplyResult
    from bpfdeploy.kernel.live import LiveState
    from bpfdeploy.manifest.model import Manifest
    from bpfdeploy.model.built import BuiltObject
    from bpfdeploy.plan import Action, Plan
    from bpfdeploy.probe import Features
    from bpfdeploy.status import DeploymentStatus
    from bpfdeploy.verify import Verification

    BuildCallback = Callable[[str, str], None]  # (event: "start" | "done" | "failed", object name)


@frozen
class Prepared:
    """A manifest loaded, its objects built and opened, and resolved into the desired state."""

    manifest: Manifest
    built: dict[str, BuiltObject]
    desired: DesiredState
    warnings: tuple[Diagnostic, ...]
    provenance: Provenance | None = None  # set when the objects came from verified artifacts


@frozen
class Planned:
    """What planning found: the live state it read and the plan computed against it.

    ``manifest`` is the manifest file the plan was made from (a saved plan names its own);
    ``features`` is None for destroy, which needs nothing of the host.
    """

    manifest: Path
    prepared: Prepared
    live: LiveState
    plan: Plan
    features: Features | None
    verification: Verification | None = None  # of `plan --verify` (None: not asked)


@frozen
class Applied:
    """The outcome of apply or destroy. ``result`` is None when apply was not called: the plan
    had errors, nothing needed to change, or the caller asked for a check only."""

    planned: Planned
    result: ApplyResult | None
    destroy: bool = False

    @property
    def applied(self) -> bool:
        return self.result is not None

    @property
    def changed(self) -> bool:
        return self.result is not None and bool(self.result.done)

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """(name, why) of optional attachments that the plan left out or that failed in apply."""
        return tuple(self.planned.plan.skipped) + tuple(self.result.skipped if self.result else ())

    @property
    def partial(self) -> bool:
        """Applied (or nothing to do) but an optional attachment is missing: exit PARTIAL."""
        return bool(self.skipped) and not self.planned.plan.errors and not self.destroy


# -- preparing ---------------------------------------------------------------------------------

def require_root() -> None:
    if os.geteuid() != 0:
        raise HostError("bpfdeploy needs root (CAP_BPF and CAP_SYS_ADMIN) to read and change BPF state")


def prepare(path: Path, on_build: BuildCallback | None = None, destroy: bool = False,
            artifacts: Path | None = None, allowed_signers: Path | None = None) -> Prepared:
    """Load, build and resolve a manifest. Raises ManifestError/BuildError with every problem.

    With ``artifacts`` (a directory made by ``bpfdeploy build --out``; the Ansible module's
    ``artifacts:``), the objects are taken from it instead of being built, so no clang runs:
    they are verified first (``artifacts.verify``: manifest and object digests, and the
    signature when the manifest or ``allowed_signers`` requires one) and an ArtifactError
    stops everything before any object is opened. The result's ``provenance`` says so.

    A manifest prepared before, whose files have not changed since, comes from the cache
    (one entry per artifact set, apart from the local build's; artifacts are verified again
    on every use).
    """
    from bpfdeploy import prepared_cache

    if destroy:
        # Destroy needs the name and pin root only: a prepared manifest has them without the loader.
        cached = prepared_cache.load(path, cache_dir())
        if cached is not None:
            return _for_destroy(cached.manifest, cached.warnings)
        return _prepare(path, on_build, destroy=True)

    source = None
    variant = b""
    if artifacts is not None:
        from bpfdeploy.artifacts import read_artifacts

        source = read_artifacts(artifacts)
        variant = source.fingerprint()
    cached = prepared_cache.load(path, cache_dir(), variant)
    if cached is not None:
        if source is None:
            return cached
        from bpfdeploy.model.frozen import replace

        from bpfdeploy.artifacts import verify

        return replace(cached, provenance=verify(source, cached.manifest, allowed_signers))
    prepared = _prepare(path, on_build, source=source, allowed_signers=allowed_signers)
    prepared_cache.store(path, cache_dir(), prepared, variant)
    return prepared


def _prepare(path: Path, on_build: BuildCallback | None = None, destroy: bool = False,
             source: ArtifactSet | None = None, allowed_signers: Path | None = None,
             for_build: bool = False) -> Prepared:
    # With artifacts the host needs no sources or object files; `bpfdeploy build` on a controller
    # needs them but not the target's cgroups, netns and binaries.
    # Imported here: a prepared manifest from the cache needs none of the loader, builder or resolver.
    from bpfdeploy.build import build_all
    from bpfdeploy.desired import obj_origin, resolve
    from bpfdeploy.object_info import metric_map_fields, object_info
    from bpfdeploy.manifest import load_manifest

    manifest, warnings = load_manifest(path, files_must_exist=not destroy and not for_build,
                                       objects_must_exist=(not destroy and source is None) or for_build)
    if destroy:
        return _for_destroy(manifest, tuple(warnings))  # nothing is built
    cache = cache_dir()
    provenance = None
    if source is not None:
        from bpfdeploy.artifacts import built_objects, verify

        provenance = verify(source, manifest, allowed_signers)  # before libbpf opens any of the files
        built = built_objects(source, manifest, cache / "artifacts")  # the checked bytes, copied
    else:
        built = build_all(manifest, on_build, cache)
    infos = {}
    problems = list(warnings)
    for name, b in built.items():
        try:
            # An artifact's object info is not cached by build digest: the digest is the index's claim.
            infos[name] = object_info(b, cache if source is None else None)
        except Exception as exc:  # an ELF libbpf cannot parse
            from bpfdeploy.load_errors import open_failure_message

            obj = next(o for o in manifest.objects if o.name == name)
            message, hint = open_failure_message(name, obj_origin(manifest, obj), exc, str(b.path))
            problems.append(Diagnostic(message, str(manifest.file), f"objects.{name}", manifest.line_of(obj.where),
                                       hint))
    if any(d.severity == "error" for d in problems):
        raise ManifestError(f"{path}: objects could not be opened", tuple(problems))
    desired, problems2 = resolve(manifest, built, infos, metric_map_fields(manifest, built, infos))
    if desired is None:
        raise ManifestError(f"{path}: {len(problems2)} problem(s)", tuple(warnings) + tuple(problems2))
    return Prepared(manifest, built, desired, tuple(warnings), provenance)


def _for_destroy(manifest: Manifest, warnings: tuple[Diagnostic, ...]) -> Prepared:
    """What destroy needs of a manifest: the deployment's name and pin root, with nothing desired."""
    return Prepared(manifest, {}, DesiredState(manifest.name, manifest.pin_root, (), (), ()), warnings)


def build_artifacts(manifest: Path, out: Path, sign_key: Path | None = None,
                    on_build: BuildCallback | None = None) -> BuildOutput:
    """`build`: build every object of the manifest into ``out`` with an index of digests, and sign it.

    The manifest is checked as for a plan, except for what only the target has (cgroups,
    network namespaces, traced binaries); objects that do not fit their manifest are refused
    here, on the controller, rather than on every host.
    """
    from bpfdeploy.artifacts import BuildOutput, sign_artifacts, write_artifacts

    prepared = _prepare(manifest, on_build, for_build=True)
    artifacts = write_artifacts(prepared.manifest, prepared.built, out)
    if sign_key is not None:
        sign_artifacts(artifacts, sign_key)
    return BuildOutput(artifacts, tuple(sorted(n for n, b in prepared.built.items() if b.built)), sign_key is not None)


# -- the host gate -----------------------------------------------------------------------------

def gate(prepared: Prepared, manifest: Path, refresh: bool = False, probe_cache: Path | None = None
         ) -> tuple[Features, list[Diagnostic]]:
    """Check the host against what the manifest needs (declared and implied), before any change."""
    from bpfdeploy.model.frozen import replace

    from bpfdeploy.probe import check_requirements, implied_requirements, probe_features

    requires = prepared.manifest.requires or {}
    features = probe_features(probe_cache, refresh=refresh, full_config=bool(requires.get("config")))
    programs, maps, attaches = implied_requirements(prepared.desired)
    diags = check_requirements(features, program_types=programs, map_types=maps, attach_types=attaches,
                               requires=requires, file=str(manifest))
    lines = prepared.manifest
    diags = [replace(d, line=lines.line_of(parse_path(d.path))) if d.path else d for d in diags]
    return features, diags


def check_fit(manifest: Path, on_build: BuildCallback | None = None, refresh: bool = False,
              probe_cache: Path | None = None, artifacts: Path | None = None,
              allowed_signers: Path | None = None) -> tuple[Features, list[Diagnostic]]:
    """`probe check`: does this manifest fit this host? (diagnostics with severity error: no)"""
    require_root()
    return gate(prepare(manifest, on_build, artifacts=artifacts, allowed_signers=allowed_signers),
                manifest, refresh, probe_cache)


# -- planning ----------------------------------------------------------------------------------

def plan_prepared(prepared: Prepared, manifest: Path, destroy: bool = False) -> Planned:
    """Gate, read the live state once, and plan. Raises ManifestError when the host does not fit."""
    from bpfdeploy.kernel.live import read_live_state
    from bpfdeploy.plan import plan

    features = None
    warnings: tuple[Diagnostic, ...] = ()
    if not destroy:  # removing a deployment needs nothing of the host
        features, diags = gate(prepared, manifest)
        if any(d.severity == "error" for d in diags):
            raise ManifestError(f"{manifest} does not fit this host; nothing was changed", tuple(diags))
        warnings = tuple(diags)  # what the probe cannot tell: shown, not blocking
    live = read_live_state(prepared.desired)
    result = plan(prepared.desired, live, str(manifest), destroy=destroy)
    if any(d.path and d.line is None for d in result.diagnostics):  # the planner is pure: lines come from here
        from bpfdeploy.model.frozen import replace

        lines = prepared.manifest
        result = replace(result, diagnostics=tuple(
            replace(d, line=lines.line_of(parse_path(d.path))) if d.path and d.line is None else d
            for d in result.diagnostics))
    if warnings or prepared.provenance is not None:
        from bpfdeploy.model.frozen import replace

        result = replace(result, diagnostics=result.diagnostics + warnings,
                                     artifacts=prepared.provenance.to_json() if prepared.provenance else None)
    return Planned(manifest, prepared, live, result, features)


def plan_deployment(manifest: Path, *, destroy: bool = False, on_build: BuildCallback | None = None,
                    artifacts: Path | None = None, allowed_signers: Path | None = None,
                    verify: bool = False) -> Planned:
    """`plan`: everything up to the plan, changing nothing. ``artifacts``: see ``prepare``.
    ``verify`` (`plan --verify`): every new or changed program is loaded and freed again."""
    require_root()
    planned = plan_prepared(prepare(manifest, on_build, destroy=destroy, artifacts=artifacts,
                                    allowed_signers=allowed_signers), manifest, destroy=destroy)
    if verify and not destroy:
        from bpfdeploy.verify import verify_planned

        planned = verify_planned(planned)
    return planned


# -- saved plans -------------------------------------------------------------------------------

SAVED_PLAN_KEY = "bpfdeploy_saved_plan"


def save_plan(planned: Planned, out: Path) -> None:
    """Write the plan with what it was computed from, for `apply FILE` (refused once any of it moved)."""
    from bpfdeploy.kernel.live import fingerprint

    saved = {SAVED_PLAN_KEY: 1, "manifest": str(planned.manifest.resolve()),
             "desired": _desired_digest(planned.prepared.desired), "live": fingerprint(planned.live),
             "plan": planned.plan.to_json()}
    provenance = planned.prepared.provenance
    if provenance is not None:  # `apply FILE` takes the objects from the same artifacts, checked again
        saved["artifacts"] = str(provenance.directory)
        saved["allowed_signers"] = str(provenance.allowed_signers) if provenance.allowed_signers else None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(saved, indent=1))
    tmp.replace(out)


def read_saved_plan(path: Path) -> dict | None:
    """The saved plan in FILE, or None when FILE is a manifest."""
    from bpfdeploy.limits import MAX_SAVED_PLAN_BYTES

    try:
        with open(path, "rb") as fh:  # never read on without end (/dev/zero, a 3 GB file)
            data = fh.read(MAX_SAVED_PLAN_BYTES + 1)
        text = data.decode() if len(data) <= MAX_SAVED_PLAN_BYTES else ""
    except (OSError, UnicodeDecodeError):
        return None  # not a saved plan: loading it as a manifest reports what is wrong
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and SAVED_PLAN_KEY in data else None


def _desired_digest(desired: DesiredState) -> str:
    import hashlib

    return hashlib.sha256(repr(desired).encode()).hexdigest()


def _check_saved(saved: dict, planned: Planned, path: Path) -> None:
    """A saved plan is carried out only if nothing it was computed from has moved."""
    from bpfdeploy.kernel.live import fingerprint

    if saved.get("desired") != _desired_digest(planned.prepared.desired):
        raise BpfdeployError(f"the saved plan {path} is stale: the manifest or its objects changed since it was made; "
                             "run bpfdeploy plan --out again")
    if saved.get("live") != fingerprint(planned.live):
        raise BpfdeployError(f"the saved plan {path} is stale: the live state changed since it was made "
                             "(another apply, or a change by hand); run bpfdeploy plan --out again")
    if saved.get("plan", {}).get("actions") != planned.plan.to_json()["actions"]:
        raise BpfdeployError(f"the saved plan {path} no longer matches what would be done; run bpfdeploy plan --out again")


# -- applying ----------------------------------------------------------------------------------

def apply_deployment(manifest: Path, *, destroy: bool = False, check: bool = False, lock_timeout: float = 60,
                     on_build: BuildCallback | None = None, on_wait: Callable[[str], None] | None = None,
                     on_plan: Callable[[Planned], None] | None = None,
                     on_step: Callable[[Action], None] | None = None,
                     artifacts: Path | None = None, allowed_signers: Path | None = None) -> Applied:
    """`apply` / `destroy` (``manifest`` may be a saved plan file): lock, plan, carry the plan out.

    ``artifacts``/``allowed_signers``: deploy objects built elsewhere (see ``prepare``); a digest
    or signature that does not match raises ArtifactError before anything is changed.

    apply is called only when the plan has no errors, has changes and ``check`` is false, so
    check mode makes no mutating call by construction. Raises ApplyError after a rollback.
    """
    from bpfdeploy.lock import deployment_lock

    require_root()
    saved = None if destroy else read_saved_plan(manifest)
    source = Path(saved["manifest"]) if saved else manifest
    if saved and artifacts is None and saved.get("artifacts"):
        artifacts = Path(saved["artifacts"])
        if allowed_signers is None and saved.get("allowed_signers"):
            allowed_signers = Path(saved["allowed_signers"])
    prepared = prepare(source, on_build, destroy=destroy, artifacts=None if destroy else artifacts,
                       allowed_signers=allowed_signers)
    with deployment_lock(prepared.desired.name, lock_timeout, on_wait):
        planned = plan_prepared(prepared, source, destroy=destroy)
        if saved:
            _check_saved(saved, planned, manifest)
        if on_plan:
            on_plan(planned)
        p = planned.plan
        if p.errors or check or not p.pending:
            return Applied(planned, None, destroy)
        from bpfdeploy.kernel.apply import StepHooks, apply, ensure_bpffs

        ensure_bpffs()
        if p.mounts:
            # The plan could not see a single pin (no bpffs here): plan again against what the
            # mounted bpffs holds, so that whose programs sit on the hooks is decided for real.
            planned = plan_prepared(prepared, source, destroy=destroy)
            if on_plan:
                on_plan(planned)
            p = planned.plan
            if p.errors or not p.changes:
                return Applied(planned, None, destroy)
        result = apply(p, prepared.desired, planned.live, destroy=destroy, on_step=on_step,
                       manifest_file=str(source.resolve()), hooks=StepHooks.from_environment())
        return Applied(planned, result, destroy)


# -- every manifest of a directory (the boot-time unit) ----------------------------------------

MANIFEST_SUFFIXES = (".yaml", ".yml")


@frozen
class Outcome:
    """What became of one manifest of `apply --all`: applied (``applied``) or failed (``error``).

    ``exit_code`` is what `bpfdeploy apply` of that manifest alone would have exited with.
    ``crash`` holds the one-line description of an unexpected exception (and where its
    traceback was written); such a manifest counts as INTERNAL.
    """

    manifest: Path
    exit_code: int
    applied: Applied | None = None
    error: BpfdeployError | None = None
    crash: str = ""

    @property
    def status(self) -> str:
        from bpfdeploy.diagnostics import ExitCode

        if self.exit_code == ExitCode.OK:
            return "changed" if self.applied is not None and self.applied.changed else "in sync"
        return {ExitCode.PARTIAL: "partial", ExitCode.LOCKED: "locked", ExitCode.INTERNAL: "crashed"}.get(
            self.exit_code, "failed")


def manifests_in(directory: Path) -> tuple[Path, ...]:
    """The manifests `apply --all DIR` applies: DIR's *.yaml and *.yml files (not hidden), sorted by name."""
    if not directory.is_dir():
        raise HostError(f"{directory} is not a directory of manifests")
    return tuple(sorted(p for p in directory.iterdir()
                        if p.suffix in MANIFEST_SUFFIXES and not p.name.startswith(".") and p.is_file()))


def overall_exit_code(outcomes: tuple[Outcome, ...]) -> int:
    """The worst of the manifests' exit codes: INTERNAL, then ERROR, LOCKED, PARTIAL, OK."""
    from bpfdeploy.diagnostics import ExitCode

    order = (ExitCode.INTERNAL, ExitCode.ERROR, ExitCode.LOCKED, ExitCode.PARTIAL)
    codes = {o.exit_code for o in outcomes}
    return next((c for c in order if c in codes), ExitCode.OK)


def apply_all(directory: Path, *, check: bool = False, lock_timeout: float = 60,
              on_start: Callable[[Path, int, int], None] | None = None,
              on_outcome: Callable[[Outcome], None] | None = None, **callbacks: Any) -> tuple[Outcome, ...]:
    """`apply --all DIR`: every manifest of DIR in name order, each with its own lock and plan.

    One manifest failing (a bad manifest, a rolled-back apply, a lock held elsewhere, even a
    crash) does not stop the others; each outcome says what happened. ``callbacks`` are passed
    to apply_deployment (on_build, on_wait, on_plan, on_step).
    """
    from bpfdeploy.diagnostics import ExitCode
    from bpfdeploy.lock import LockTimeout

    require_root()
    manifests = manifests_in(directory)
    outcomes = []
    for i, manifest in enumerate(manifests):
        if on_start:
            on_start(manifest, i + 1, len(manifests))
        try:
            applied = apply_deployment(manifest, check=check, lock_timeout=lock_timeout, **callbacks)
            code = ExitCode.ERROR if applied.planned.plan.errors else \
                ExitCode.PARTIAL if applied.partial else ExitCode.OK
            outcome = Outcome(manifest, code, applied=applied)
        except LockTimeout as exc:
            outcome = Outcome(manifest, ExitCode.LOCKED, error=exc)
        except BpfdeployError as exc:
            outcome = Outcome(manifest, ExitCode.ERROR, error=exc)
        except Exception as exc:  # a crash in one manifest must not keep the others from booting
            outcome = Outcome(manifest, ExitCode.INTERNAL, crash=_crash_note(exc))
        outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)
    return tuple(outcomes)


def _crash_note(exc: Exception) -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="bpfdeploy-crash-", suffix=".txt")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exception(exc, file=fh)
    return f"internal error: {exc!r} (traceback in {path})"


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """One manifest's entry in the `apply --all --json` reply."""
    out: dict[str, Any] = {"manifest": str(outcome.manifest), "exit_code": int(outcome.exit_code),
                           "status": outcome.status}
    if outcome.applied is not None:
        out["deployment"] = outcome.applied.planned.plan.name
        out.update(summary(outcome.applied))
    elif outcome.error is not None:
        from bpfdeploy.diagnostics import ApplyError

        exc = outcome.error
        out.update(error=exc.message, diagnostics=[d.to_json() for d in exc.diagnostics])
        if isinstance(exc, ApplyError):
            out.update(failed_step=exc.step, detail=exc.detail, rolled_back=not exc.rollback,
                       rollback_failures=list(exc.rollback))
    else:
        out["error"] = outcome.crash
    return out


# -- reading -----------------------------------------------------------------------------------

def status_of(prepared: Prepared, manifest: Path, stats_seconds: float | None = None) -> DeploymentStatus:
    """One deployment in detail: the plan read as a status, with run counters when asked."""
    from bpfdeploy.status import deployment_status, measure_stats, program_stats

    planned = plan_prepared(prepared, manifest)
    live = planned.live
    ids = {prog.id for prog in live.programs.values()}
    stats = None
    if stats_seconds is not None:
        stats = measure_stats(ids, stats_seconds)
    elif ids:
        stats = program_stats(ids)  # counters that stay from earlier stats windows, if any
    return deployment_status(prepared.desired, live, planned.plan, stats, stats_seconds)


def commands_run() -> list[list[str]]:
    """External commands this process started (bpftool reads, clang builds, mount, tc)."""
    from bpfdeploy.kernel import runner

    return [list(c) for c in runner.calls]


def summary(applied: Applied) -> dict[str, Any]:
    """The JSON body of an apply or destroy reply (the CLI's --json and the Ansible module share it)."""
    out: dict[str, Any] = {"plan": applied.planned.plan.to_json(), "applied": applied.applied}
    if applied.planned.plan.errors:
        return out
    r = applied.result
    out.update(done=list(r.done) if r else [], warnings=list(r.warnings) if r else [],
               mutations=r.mutations if r else 0, commands=commands_run(), partial=applied.partial,
               skipped=[{"attachment": name, "reason": why} for name, why in applied.skipped])
    return out
