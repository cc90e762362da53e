"""Command line: commands, rendering and exit codes (the grammar of argv is cli_args.py).

Each command calls one function of bpfdeploy/workflow.py and renders what it returns, as
text or (--json) as a versioned reply (render/replies.py). Everything is imported lazily,
because start-up is most of what a no-op plan costs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bpfdeploy.cli_args import parse
from bpfdeploy.cli_args import parser as _parser  # the argparse parser (help, errors, man page)
from bpfdeploy.diagnostics import ApplyError, BpfdeployError, ExitCode


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `bpfdeploy plan … | head` ends quietly
    args = parse(argv)
    if getattr(args, "allowed_signers", None) is not None and args.artifacts is None:
        _parser().error("--allowed-signers needs --artifacts DIR (a local build is not signed)")
    if getattr(args, "all_dir", None) is not None and args.manifest:
        _parser().error("metrics: give manifests or --all DIR, not both")
    if args.state_dir:
        os.environ["BPFDEPLOY_STATE_DIR"] = str(args.state_dir)
    try:
        return int(_COMMANDS[args.command](args))
    except BpfdeployError as exc:
        return _report_error(exc, args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.ERROR
    except Exception:  # an unexpected crash: one line, and where the traceback is
        import tempfile
        import traceback

        fd, path = tempfile.mkstemp(prefix="bpfdeploy-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        print(f"bpfdeploy: internal error: {sys.exc_info()[1]!r} (traceback in {path})", file=sys.stderr)
        return ExitCode.INTERNAL


def _exit_code(exc: BpfdeployError) -> ExitCode:
    from bpfdeploy.lock import LockTimeout

    return ExitCode.LOCKED if isinstance(exc, LockTimeout) else ExitCode.ERROR


def _report_error(exc: BpfdeployError, args) -> int:
    code = _exit_code(exc)
    if getattr(args, "json", False):
        from bpfdeploy.render.replies import emit

        out = {"error": exc.message, "exit_code": int(code), "diagnostics": [d.to_json() for d in exc.diagnostics]}
        if isinstance(exc, ApplyError):
            out.update(failed_step=exc.step, detail=exc.detail, rolled_back=not exc.rollback,
                       rollback_failures=list(exc.rollback))
        emit(out)
        return code
    from bpfdeploy.render import human

    if exc.diagnostics:
        human.diagnostics(exc.diagnostics)
        errors = sum(1 for d in exc.diagnostics if d.severity == "error")
        human.err.print(f"[red]{errors} error(s)[/]")
    else:
        human.crash(exc.message)
    detail = getattr(exc, "detail", "") or getattr(exc, "log", "")
    if detail:
        human.err.print(detail, markup=False)
    if isinstance(exc, ApplyError):
        if exc.rollback:
            human.err.print("[red]rollback was incomplete:[/]")
            for line in exc.rollback:
                human.err.print(f"  {line}", markup=False)
        else:
            human.err.print("Rolled back: the kernel is as it was before this apply.")
    return code


def _build_progress(args):
    """A callback that shows builds as they happen (nothing for --json)."""
    if args.json:
        return None
    from bpfdeploy.render import human

    def on_event(kind: str, name: str) -> None:
        if kind == "start":
            human.err.print(f"[dim]building {name} ...[/]")
        elif kind == "failed":
            human.err.print(f"[red]build of {name} failed[/]")
    return on_event


def _artifact_args(args) -> dict:
    """--artifacts/--allowed-signers as workflow keywords."""
    return {"artifacts": args.artifacts, "allowed_signers": args.allowed_signers}


def _manifests(args) -> list[Path]:
    """The MANIFEST arguments as files: `-` is standard input (once), a name is a deployment's manifest."""
    from bpfdeploy.targets import STDIN, manifest_for, stdin_manifest

    if sum(1 for m in args.manifest if str(m) == STDIN) > 1:
        _usage(args, "standard input (-) can be given once")
    out = []
    for m in args.manifest:
        if str(m) == STDIN:
            import atexit
            import shutil
            import tempfile

            directory = tempfile.mkdtemp(prefix="bpfdeploy-stdin-")
            atexit.register(shutil.rmtree, directory, True)
            out.append(stdin_manifest(Path(directory)))
        else:
            out.append(manifest_for(m))
    return out


def _usage(args, message: str) -> None:
    _parser().error(f"{args.command}: {message}")


def _each(args, one) -> int:
    """Run ONE(args, manifest) -> (exit code, JSON body) for every manifest given. With one manifest
    the reply is that manifest's; with several, each is reported and the worst exit code wins."""
    manifests = _manifests(args)
    if len(manifests) == 1:
        code, body = one(args, manifests[0])
        if args.json:
            from bpfdeploy.render.replies import emit

            emit(body)
        return code
    results, codes = [], []
    for manifest in manifests:
        try:
            code, body = one(args, manifest)
        except BpfdeployError as exc:
            code = _exit_code(exc)
            body = {"error": exc.message, "exit_code": int(code), "diagnostics": [d.to_json() for d in exc.diagnostics]}
            if not args.json:
                _report_error(exc, args)
        codes.append(code)
        results.append({"manifest": str(manifest), "exit_code": int(code), **body})
    if args.json:
        from bpfdeploy.render.replies import emit

        emit({"results": results})
    worst = [ExitCode.ERROR, ExitCode.LOCKED, ExitCode.CHANGES]
    return next((c for c in worst if c in codes), ExitCode.OK)


def cmd_validate(args) -> int:
    return _each(args, _validate_one)


def _validate_one(args, manifest: Path) -> tuple[int, dict]:
    from bpfdeploy.workflow import prepare

    prepared = prepare(manifest, _build_progress(args), **_artifact_args(args))
    d = prepared.desired
    body = {"valid": True, "deployment": d.name, "pin_root": str(d.pin_root),
            "programs": len(d.programs), "maps": len(d.maps), "attachments": len(d.attachments),
            "diagnostics": [w.to_json() for w in prepared.warnings]}
    if not args.json:
        from bpfdeploy.render import human

        human.diagnostics(prepared.warnings, human.out)
        human.out.print(f"[green]valid[/]: {manifest}: deployment [cyan]{d.name}[/], {len(d.programs)} program(s), "
                        f"{len(d.maps)} map(s), {len(d.attachments)} attachment(s)")
    return ExitCode.OK, body


def cmd_plan(args) -> int:
    if args.out and len(args.manifest) > 1:
        _usage(args, "--out saves the plan of one manifest")
    if args.out and any(str(m) == "-" for m in args.manifest):
        _usage(args, "--out needs a manifest file: a saved plan names the manifest apply reads again")
    return _each(args, _plan_one)


def _plan_one(args, manifest: Path) -> tuple[int, dict]:
    from bpfdeploy.workflow import plan_deployment, save_plan

    planned = plan_deployment(manifest, on_build=_build_progress(args), verify=args.verify,
                              **_artifact_args(args))
    p = planned.plan
    if args.out and not p.errors:
        save_plan(planned, args.out)
    body = p.to_json()
    if planned.verification is not None:
        body["verification"] = planned.verification.to_json()
    if not args.json:
        from bpfdeploy.render import human

        human.plan(p, verbose=args.verbose)
        if planned.verification is not None:
            from bpfdeploy.render.verify import verification

            verification(planned.verification)
        if args.out and not p.errors:
            human.out.print(f"Saved the plan to {args.out}; carry it out with: bpfdeploy apply {args.out}")
    if p.errors:
        return ExitCode.ERROR, body
    if args.detailed_exitcode and p.pending:
        return ExitCode.CHANGES, body
    return ExitCode.OK, body


def cmd_apply(args, destroy: bool = False) -> int:
    if not destroy and (args.all_dir is None) == (args.manifest is None):
        print("usage: bpfdeploy apply [options] (FILE | --all DIR)\n"
              "bpfdeploy apply: error: give either a manifest FILE or --all DIR", file=sys.stderr)
        return ExitCode.USAGE
    if not destroy and args.all_dir is not None:
        return cmd_apply_all(args)
    from bpfdeploy.workflow import apply_deployment, summary

    human = None
    if not args.json:
        from bpfdeploy.render import human

    def on_wait(message: str) -> None:
        (human.err.print(message) if human else print(message, file=sys.stderr))

    def on_plan(planned) -> None:
        human.plan(planned.plan, verbose=getattr(args, "verbose", False),
                   title="Destroy plan" if destroy else "Plan")
        p = planned.plan
        if not p.errors and p.changes and not getattr(args, "check", False):
            human.out.print("[bold]Applying[/]" if not destroy else "[bold]Destroying[/]")

    applied = apply_deployment(args.manifest, destroy=destroy, check=getattr(args, "check", False),
                               lock_timeout=args.lock_timeout, on_build=_build_progress(args), on_wait=on_wait,
                               on_plan=on_plan if human else None, on_step=human.step if human else None,
                               **(_artifact_args(args) if not destroy else {}))
    if args.json:
        from bpfdeploy.render.replies import emit

        emit(summary(applied))
    elif applied.result is not None:
        for w in applied.result.warnings:
            human.out.print(f"[yellow]warning[/]: {w}")
        human.out.print(f"[green]{'Destroy' if destroy else 'Apply'} complete.[/] "
                        f"{len(applied.result.done)} change(s) made.")
    if human and applied.partial:
        names = ", ".join(name for name, _why in applied.skipped)
        human.out.print(f"[yellow]Partial:[/] optional attachment(s) not made: {names} (exit {int(ExitCode.PARTIAL)})")
    if applied.planned.plan.errors:
        return ExitCode.ERROR
    return ExitCode.PARTIAL if applied.partial else ExitCode.OK


def cmd_apply_all(args) -> int:
    """`apply --all DIR`: each manifest reported as `apply FILE` would, then one line per manifest."""
    from bpfdeploy.workflow import apply_all, outcome_json, overall_exit_code

    if args.artifacts is not None:
        from bpfdeploy.diagnostics import HostError

        raise HostError("--artifacts names the objects of one manifest; it cannot be used with --all")
    human = None
    if not args.json:
        from bpfdeploy.render import human

    def on_start(manifest: Path, i: int, n: int) -> None:
        human.out.print(f"[bold]== {escape(str(manifest))} ({i}/{n}) ==[/]")

    def on_plan(planned) -> None:
        human.plan(planned.plan, verbose=args.verbose)
        if not planned.plan.errors and planned.plan.changes and not args.check:
            human.out.print("[bold]Applying[/]")

    def on_outcome(outcome) -> None:
        applied = outcome.applied
        if applied is not None and applied.result is not None:
            for w in applied.result.warnings:
                human.out.print(f"[yellow]warning[/]: {escape(w)}")
            human.out.print(f"[green]Apply complete.[/] {len(applied.result.done)} change(s) made.")
        elif outcome.error is not None:
            _report_error(outcome.error, args)
        elif outcome.crash:
            human.crash(outcome.crash)
        human.out.print()

    def on_wait(message: str) -> None:
        (human.err.print(message) if human else print(message, file=sys.stderr))

    from bpfdeploy.render.human import escape

    outcomes = apply_all(args.all_dir, check=args.check, lock_timeout=args.lock_timeout,
                         on_start=on_start if human else None, on_outcome=on_outcome if human else None,
                         on_build=_build_progress(args), on_wait=on_wait, on_plan=on_plan if human else None,
                         on_step=human.step if human else None)
    code = overall_exit_code(outcomes)
    if args.json:
        from bpfdeploy.render.replies import emit

        emit({"directory": str(args.all_dir), "exit_code": int(code),
              "failed": [str(o.manifest) for o in outcomes if o.exit_code not in (ExitCode.OK, ExitCode.PARTIAL)],
              "deployments": [outcome_json(o) for o in outcomes]})
        return code
    if not outcomes:
        human.out.print(f"No manifests (*.yaml, *.yml) in {escape(str(args.all_dir))}: nothing to do.")
        return code
    human.out.print(f"[bold]Summary[/] of {len(outcomes)} manifest(s) in {escape(str(args.all_dir))}:")
    width = max(len(o.manifest.name) for o in outcomes)
    for o in outcomes:
        color = {"changed": "green", "in sync": "green", "partial": "yellow"}.get(o.status, "red")
        what = ""
        if o.applied is not None:
            what = f"deployment {o.applied.planned.plan.name}"
            if o.applied.result is not None:
                what += f", {len(o.applied.result.done)} change(s)"
            if o.applied.partial:
                what += ", optional attachment(s) not made: " + ", ".join(n for n, _ in o.applied.skipped)
            if o.applied.planned.plan.errors:
                what += f", {len(o.applied.planned.plan.errors)} error(s) in its plan"
        else:
            what = o.error.message if o.error is not None else o.crash
        human.out.print(f"  [{color}]{o.status:<8}[/] {escape(o.manifest.name):<{width}}  {escape(what)}")
    return code


def cmd_destroy(args) -> int:
    from bpfdeploy.targets import manifest_for

    args.manifest = manifest_for(args.manifest)  # a deployment's name will do, as for dump
    return cmd_apply(args, destroy=True)


def cmd_status(args) -> int:
    from bpfdeploy.workflow import prepare, require_root, status_of

    require_root()
    if args.manifest is None:
        from bpfdeploy.status import list_deployments

        items = list_deployments()
        if args.json:
            from bpfdeploy.model.frozen import asdict

            from bpfdeploy.render.replies import emit

            emit({"deployments": [asdict(d) for d in items]})
        else:
            from bpfdeploy.render import status as view

            view.fit(args.wide)
            view.deployments(items)
        return ExitCode.OK
    from bpfdeploy.targets import manifest_for

    args.manifest = manifest_for(args.manifest)  # a deployment's name will do, as for dump
    prepared = prepare(args.manifest, _build_progress(args), **_artifact_args(args))
    if args.watch and not args.json:
        import time

        from rich.live import Live

        from bpfdeploy.render import status as view

        view.fit(args.wide)
        with Live(view.status_table(status_of(prepared, args.manifest, args.stats)), console=view.out,
                  refresh_per_second=4) as live_view:
            try:
                while True:
                    time.sleep(args.watch)
                    live_view.update(view.status_table(status_of(prepared, args.manifest, args.stats)))
            except KeyboardInterrupt:
                return ExitCode.OK
    status = status_of(prepared, args.manifest, args.stats)
    if args.json:
        from bpfdeploy.render.replies import emit

        emit(status.to_json())
    else:
        from bpfdeploy.render import status as view

        view.fit(args.wide)
        view.out.print(view.status_table(status))
    return ExitCode.OK if status.healthy else ExitCode.DRIFTED


def cmd_dump(args) -> int:
    from bpfdeploy.dump import dump_map, parse_key_decoder
    from bpfdeploy.workflow import require_root

    require_root()
    entries = dump_map(args.deployment, args.map, tuple(parse_key_decoder(t) for t in args.key_decode))
    if args.json:
        from bpfdeploy.render.replies import emit

        emit({"deployment": args.deployment, "map": args.map, "entries": entries})
    else:
        from bpfdeploy.render import status as view

        view.fit(args.wide)
        view.dump(entries, f"{args.deployment} / {args.map}")
    return ExitCode.OK


def cmd_metrics(args) -> int:
    from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile

    from bpfdeploy import exporter
    from bpfdeploy.workflow import require_root, status_of

    require_root()
    sources = exporter.gather(args.manifest, args.all_dir, _build_progress(args))
    registry = CollectorRegistry()
    registry.register(exporter.HostCollector(sources, lambda s: status_of(s.prepared, s.manifest, None)))
    if args.json:  # one scrape as data; no server
        from bpfdeploy.render.replies import emit

        emit({"deployments": [s.prepared.desired.name for s in sources if not s.problem],
              "unprepared": [{"manifest": str(s.manifest), "error": s.problem} for s in sources if s.problem],
              "families": exporter.families_json(registry)})
        return ExitCode.OK
    if args.textfile:  # with --once too: --once means one write, never "to stdout instead"
        import signal
        import threading

        stop = threading.Event()  # SIGTERM ends the loop between writes, never inside one
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while True:
            write_to_textfile(str(args.textfile), registry)  # a temporary file renamed into place
            if args.once or not args.interval or stop.wait(args.interval):
                return ExitCode.OK
    if args.once:
        sys.stdout.write(generate_latest(registry).decode())
        return ExitCode.OK
    exporter.serve(registry, args.listen or exporter.DEFAULT_LISTEN,
                   [s.prepared.desired.name for s in sources if not s.problem])
    return ExitCode.OK


def cmd_build(args) -> int:
    from bpfdeploy.workflow import build_artifacts

    output = build_artifacts(args.manifest, args.out, args.sign_key, on_build=_build_progress(args))
    arts = output.artifacts
    if args.json:
        from bpfdeploy.render.replies import emit

        emit({"directory": str(arts.directory), "index": str(arts.index), "deployment": arts.deployment,
              "manifest_sha256": arts.manifest_sha256, "bpfdeploy_version": arts.bpfdeploy_version,
              "signature": str(arts.signature) if output.signed else None,
              "objects": [{"object": o.name, "file": str(o.path), "kind": o.kind.value, "sha256": o.sha256,
                           "build_digest": o.digest, "built": o.name in output.built} for o in arts.objects]})
        return ExitCode.OK
    from bpfdeploy.render import human

    human.out.print(f"Artifacts of deployment [cyan]{human.escape(arts.deployment)}[/] in {human.escape(str(arts.directory))}")
    for o in arts.objects:
        how = "built" if o.name in output.built else "prebuilt file" if o.kind.value == "file" else "from the build cache"
        human.out.print(f"  {human.escape(o.name)}  {human.escape(str(o.path))}  sha256 {o.sha256[:16]}  ({how})")
    human.out.print(f"  index {human.escape(str(arts.index))} (manifest sha256 {arts.manifest_sha256[:16]})")
    if output.signed:
        human.out.print(f"  signature {human.escape(str(arts.signature))}")
    human.out.print(f"[green]Wrote[/] {len(arts.objects)} object(s); deploy with: bpfdeploy apply MANIFEST "
                    f"--artifacts {human.escape(str(arts.directory))}")
    return ExitCode.OK


def cmd_graph(args) -> int:
    from bpfdeploy.render.graph import dot
    from bpfdeploy.targets import manifest_for
    from bpfdeploy.workflow import prepare

    args.json = False  # DOT is the output; diagnostics go to stderr
    prepared = prepare(manifest_for(args.manifest), _build_progress(args), **_artifact_args(args))
    sys.stdout.write(dot(prepared.desired))
    return ExitCode.OK


def cmd_probe(args) -> int:
    return {"features": cmd_probe_features, "check": cmd_probe_check}[args.probe_command](args)


def cmd_probe_features(args) -> int:
    from bpfdeploy.probe import features_json, probe_features

    features = probe_features(args.cache_dir, refresh=args.refresh)
    known_type = args.helpers is None or features.helpers_for(args.helpers) is not None
    if args.json:
        from bpfdeploy.render.replies import emit

        emit(features_json(features, program_types=args.program_types, map_types=args.map_types,
                           helpers=args.helpers, config=args.config))
    else:
        from bpfdeploy.render.probe import render_features

        render_features(features, program_types=args.program_types, map_types=args.map_types,
                        helpers=args.helpers, config=args.config)
    return ExitCode.OK if known_type else ExitCode.ERROR


def cmd_probe_check(args) -> int:
    from bpfdeploy.workflow import check_fit

    features, diags = check_fit(args.manifest, _build_progress(args), args.refresh, args.cache_dir,
                                **_artifact_args(args))
    errors = [d for d in diags if d.severity == "error"]
    if args.json:
        from bpfdeploy.render.replies import emit

        emit({"fits": not errors, "kernel": features.kernel_release, "probed_at": features.probed_at,
              "from_cache": features.from_cache, "diagnostics": [d.to_json() for d in diags]})
    else:
        from bpfdeploy.render.probe import render_check

        render_check(diags, file=str(args.manifest), features=features)
    return ExitCode.ERROR if errors else ExitCode.OK


_COMMANDS = {"validate": cmd_validate, "build": cmd_build, "plan": cmd_plan, "apply": cmd_apply, "destroy": cmd_destroy,
             "probe": cmd_probe, "status": cmd_status, "dump": cmd_dump, "metrics": cmd_metrics, "graph": cmd_graph}

if __name__ == "__main__":
    sys.exit(main())
