"""Command line: argument parsing and exit codes only. Everything else is imported lazily,
because start-up is most of what a no-op plan costs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bpfdeploy.diagnostics import ApplyError, BpfdeployError, ExitCode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpfdeploy", description="Declarative deployment of eBPF programs.")
    parser.add_argument("--version", action="version", version="bpfdeploy 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, manifest=True):
        if manifest:
            p.add_argument("manifest", type=Path, help="the manifest file (YAML)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument("--state-dir", type=Path, help="where deployment records live (default /var/lib/bpfdeploy, "
                                                       "or $BPFDEPLOY_STATE_DIR)")
        return p

    common(sub.add_parser("validate", help="check a manifest and report every problem"))
    p = common(sub.add_parser("plan", help="show what apply would change"))
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 2: changes pending, 1: error")
    p.add_argument("--verbose", "-v", action="store_true", help="list unchanged resources too")
    p.add_argument("--out", type=Path, metavar="FILE", help="save the plan, with a fingerprint of the live state, "
                                                             "for 'bpfdeploy apply FILE'")
    p = common(sub.add_parser("apply", help="make the kernel match the manifest (or carry out a saved plan)"))
    p.add_argument("--check", action="store_true", help="plan only; change nothing")
    p.add_argument("--verbose", "-v", action="store_true", help="list unchanged resources too")
    p.add_argument("--lock-timeout", type=float, default=60, metavar="SECONDS",
                   help="how long to wait for another apply or destroy of the deployment (0: fail at once)")
    p = common(sub.add_parser("destroy", help="remove everything the deployment owns"))
    p.add_argument("--lock-timeout", type=float, default=60, metavar="SECONDS",
                   help="how long to wait for another apply or destroy of the deployment (0: fail at once)")

    p = sub.add_parser("status", help="deployments on this host, or one deployment in detail")
    p.add_argument("manifest", type=Path, nargs="?", help="a deployment's manifest (omit: list every deployment)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--state-dir", type=Path, help="where deployment records live")
    p.add_argument("--stats", nargs="?", type=float, const=1.0, metavar="SECONDS",
                   help="measure run counts and run time over a window (default 1 s) with kernel.bpf_stats_enabled")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="refresh a live table every SECONDS (default 2) until Ctrl-C")
    p = sub.add_parser("dump", help="a deployment map's entries, formatted through BTF")
    p.add_argument("deployment", help="deployment name or manifest file")
    p.add_argument("map", help="map name")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--state-dir", type=Path, help="where deployment records live")
    p = common(sub.add_parser("metrics", help="Prometheus metrics from the deployment's maps and programs"))
    p.add_argument("--listen", default="127.0.0.1:9435", metavar="ADDR:PORT",
                   help="serve /metrics over HTTP here (default 127.0.0.1:9435)")
    p.add_argument("--textfile", type=Path, metavar="PATH",
                   help="write a node_exporter textfile (atomically) instead of serving; with --interval, repeatedly")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="with --textfile: rewrite every SECONDS")
    p.add_argument("--once", action="store_true", help="print the exposition once to stdout and exit")

    probe_p = sub.add_parser("probe", help="what this host's kernel and tools can run")
    probe_sub = probe_p.add_subparsers(dest="probe_command", required=True, metavar="WHAT")
    p = common(probe_sub.add_parser("features", help="kernel BPF features, tool versions, mounts, sysctls"),
               manifest=False)
    p.add_argument("--program-types", action="store_true", help="show program types only")
    p.add_argument("--map-types", action="store_true", help="show map types only")
    p.add_argument("--helpers", metavar="TYPE", help="show the helpers bpftool lists for one program type")
    p.add_argument("--config", action="store_true", help="show system and kernel configuration only")
    p.add_argument("--refresh", action="store_true", help="probe again even if this boot's probe is cached")
    p.add_argument("--cache-dir", type=Path, help="where probes are cached (default $BPFDEPLOY_PROBE_CACHE, "
                                                  "else <build cache>/probe)")
    p = common(probe_sub.add_parser("check", help="does this manifest fit this host? exit 0 yes, 1 no"))
    p.add_argument("--refresh", action="store_true", help="probe again even if this boot's probe is cached")
    p.add_argument("--cache-dir", type=Path, help="where probes are cached")
    return parser


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `bpfdeploy plan … | head` ends quietly
    args = _parser().parse_args(argv)
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
        return ExitCode.ERROR


def _report_error(exc: BpfdeployError, args) -> int:
    if args.json:
        out = {"error": exc.message, "diagnostics": [d.to_json() for d in exc.diagnostics]}
        if isinstance(exc, ApplyError):
            out.update(failed_step=exc.step, detail=exc.detail, rollback_failures=list(exc.rollback))
        print(json.dumps(out, indent=2))
        return ExitCode.ERROR
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
    return ExitCode.ERROR


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


def cmd_validate(args) -> int:
    from bpfdeploy.workflow import prepare

    prepared = prepare(args.manifest, _build_progress(args))
    d = prepared.desired
    if args.json:
        print(json.dumps({"valid": True, "deployment": d.name, "pin_root": str(d.pin_root),
                          "programs": len(d.programs), "maps": len(d.maps), "attachments": len(d.attachments),
                          "diagnostics": [w.to_json() for w in prepared.warnings]}, indent=2))
        return ExitCode.OK
    from bpfdeploy.render import human

    human.diagnostics(prepared.warnings, human.out)
    human.out.print(f"[green]valid[/]: {args.manifest}: deployment [cyan]{d.name}[/], {len(d.programs)} program(s), "
                    f"{len(d.maps)} map(s), {len(d.attachments)} attachment(s)")
    return ExitCode.OK


def _prepare(args, manifest: Path, destroy: bool = False):
    from bpfdeploy.workflow import prepare

    _require_root()
    return prepare(manifest, _build_progress(args), destroy=destroy)


def _gate(prepared, manifest: Path, refresh: bool = False, cache_dir: Path | None = None):
    """Check the host against what the manifest needs (declared and implied), before any change."""
    import dataclasses

    from bpfdeploy.probe import check_requirements, implied_requirements, probe_features

    requires = prepared.manifest.requires or {}
    features = probe_features(cache_dir, refresh=refresh, full_config=bool(requires.get("config")))
    programs, maps, attaches = implied_requirements(prepared.desired)
    diags = check_requirements(features, program_types=programs, map_types=maps, attach_types=attaches,
                               requires=requires, file=str(manifest))
    lines = prepared.manifest
    diags = [dataclasses.replace(d, line=lines.line_of(tuple(d.path.split(".")))) if d.path else d for d in diags]
    return features, diags


def _plan_for(prepared, manifest: Path, destroy: bool = False):
    from bpfdeploy.kernel.live import read_live_state
    from bpfdeploy.plan import plan

    warnings: tuple = ()
    if not destroy:  # removing a deployment needs nothing of the host
        _features, diags = _gate(prepared, manifest)
        errors = [d for d in diags if d.severity == "error"]
        if errors:
            from bpfdeploy.diagnostics import ManifestError

            raise ManifestError(f"{manifest} does not fit this host; nothing was changed", tuple(diags))
        warnings = tuple(diags)  # what the probe cannot tell: shown, not blocking
    live = read_live_state(prepared.desired)
    result = plan(prepared.desired, live, str(manifest), destroy=destroy)
    if warnings:
        import dataclasses

        result = dataclasses.replace(result, diagnostics=result.diagnostics + warnings)
    return live, result


def _require_root() -> None:
    if os.geteuid() != 0:
        from bpfdeploy.diagnostics import HostError

        raise HostError("bpfdeploy needs root (CAP_BPF and CAP_SYS_ADMIN) to read and change BPF state")


SAVED_PLAN_KEY = "bpfdeploy_saved_plan"


def cmd_plan(args) -> int:
    prepared = _prepare(args, args.manifest)
    live, p = _plan_for(prepared, args.manifest)
    if args.out and not p.errors:
        from bpfdeploy.kernel.live import fingerprint

        saved = {SAVED_PLAN_KEY: 1, "manifest": str(args.manifest.resolve()),
                 "desired": _desired_digest(prepared.desired), "live": fingerprint(live), "plan": p.to_json()}
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(saved, indent=1))
        tmp.replace(args.out)
    if args.json:
        print(json.dumps(p.to_json(), indent=2))
    else:
        from bpfdeploy.render import human

        human.plan(p, verbose=args.verbose)
        if args.out and not p.errors:
            human.out.print(f"Saved the plan to {args.out}; carry it out with: bpfdeploy apply {args.out}")
    if p.errors:
        return ExitCode.ERROR
    if args.detailed_exitcode and p.changes:
        return ExitCode.CHANGES
    return ExitCode.OK


def _desired_digest(desired) -> str:
    import hashlib

    return hashlib.sha256(repr(desired).encode()).hexdigest()


def _saved_plan(path: Path) -> dict | None:
    """The saved plan in FILE, or None when FILE is a manifest."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None  # not a saved plan: loading it as a manifest reports what is wrong
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and SAVED_PLAN_KEY in data else None


def cmd_apply(args, destroy: bool = False) -> int:
    from bpfdeploy.lock import deployment_lock

    saved = None if destroy else _saved_plan(args.manifest)
    manifest = Path(saved["manifest"]) if saved else args.manifest
    prepared = _prepare(args, manifest, destroy=destroy)
    human = None
    if not args.json:
        from bpfdeploy.render import human

    def on_wait(message: str) -> None:
        (human.err.print(message) if human else print(message, file=sys.stderr))

    with deployment_lock(prepared.desired.name, args.lock_timeout, on_wait):
        live, p = _plan_for(prepared, manifest, destroy=destroy)
        if saved:
            _check_saved(saved, prepared, live, p, args.manifest)
        return _apply_plan(args, prepared, live, p, manifest, destroy)


def _check_saved(saved: dict, prepared, live, p, path: Path) -> None:
    """A saved plan is carried out only if nothing it was computed from has moved."""
    from bpfdeploy.diagnostics import BpfdeployError
    from bpfdeploy.kernel.live import fingerprint

    if saved.get("desired") != _desired_digest(prepared.desired):
        raise BpfdeployError(f"the saved plan {path} is stale: the manifest or its objects changed since it was made; "
                             "run bpfdeploy plan --out again")
    if saved.get("live") != fingerprint(live):
        raise BpfdeployError(f"the saved plan {path} is stale: the live state changed since it was made "
                             "(another apply, or a change by hand); run bpfdeploy plan --out again")
    if saved.get("plan", {}).get("actions") != p.to_json()["actions"]:
        raise BpfdeployError(f"the saved plan {path} no longer matches what would be done; run bpfdeploy plan --out again")


def _apply_plan(args, prepared, live, p, manifest: Path, destroy: bool) -> int:
    title = "Destroy plan" if destroy else "Plan"
    human = None
    if not args.json:
        from bpfdeploy.render import human

        human.plan(p, verbose=getattr(args, "verbose", False), title=title)
    if p.errors:
        if args.json:
            print(json.dumps({"plan": p.to_json(), "applied": False}, indent=2))
        return ExitCode.ERROR
    if getattr(args, "check", False) or not p.changes:
        if args.json:
            print(json.dumps({"plan": p.to_json(), "applied": False, "done": [], "mutations": 0,
                              "commands": _commands()}, indent=2))
        return ExitCode.OK
    from bpfdeploy.kernel.apply import apply, ensure_bpffs

    ensure_bpffs()
    if human:
        human.out.print("[bold]Applying[/]" if not destroy else "[bold]Destroying[/]")
    result = apply(p, prepared.desired, live, destroy=destroy, on_step=human.step if human else None,
                   manifest_file=str(manifest.resolve()))
    if args.json:
        print(json.dumps({"plan": p.to_json(), "applied": True, "done": result.done, "warnings": result.warnings,
                          "mutations": result.mutations, "commands": _commands()}, indent=2))
    else:
        for w in result.warnings:
            human.out.print(f"[yellow]warning[/]: {w}")
        human.out.print(f"[green]{'Destroy' if destroy else 'Apply'} complete.[/] {len(result.done)} change(s) made.")
    return ExitCode.OK


def _commands() -> list[list[str]]:
    """External commands this run started (bpftool reads, clang builds, mount)."""
    from bpfdeploy.kernel import runner

    return [list(c) for c in runner.calls]


def cmd_destroy(args) -> int:
    return cmd_apply(args, destroy=True)


def _status_of(prepared, manifest: Path, stats_seconds: float | None):
    from bpfdeploy.status import deployment_status, measure_stats, program_stats

    live, p = _plan_for(prepared, manifest)
    ids = {prog.id for prog in live.programs.values()}
    stats = None
    if stats_seconds is not None:
        stats = measure_stats(ids, stats_seconds)
    elif ids:
        stats = program_stats(ids)  # counters that stay from earlier stats windows, if any
    return deployment_status(prepared.desired, live, p, stats, stats_seconds)


def cmd_status(args) -> int:
    _require_root()
    if args.manifest is None:
        from bpfdeploy.status import list_deployments

        items = list_deployments()
        if args.json:
            from dataclasses import asdict

            print(json.dumps([asdict(d) for d in items], indent=2))
        else:
            from bpfdeploy.render import status as view

            view.deployments(items)
        return ExitCode.OK
    prepared = _prepare(args, args.manifest)
    if args.watch and not args.json:
        from rich.live import Live

        from bpfdeploy.render import status as view

        out = view.out
        with Live(view.status_table(_status_of(prepared, args.manifest, args.stats)), console=out,
                  refresh_per_second=4) as live_view:
            try:
                while True:
                    import time

                    time.sleep(args.watch)
                    live_view.update(view.status_table(_status_of(prepared, args.manifest, args.stats)))
            except KeyboardInterrupt:
                return ExitCode.OK
    status = _status_of(prepared, args.manifest, args.stats)
    if args.json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        from bpfdeploy.render import status as view

        view.out.print(view.status_table(status))
    return ExitCode.OK


def cmd_dump(args) -> int:
    from bpfdeploy.status import dump_map

    _require_root()
    entries = dump_map(args.deployment, args.map)
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        from bpfdeploy.render import status as view

        view.dump(entries, f"{args.deployment} / {args.map}")
    return ExitCode.OK


def cmd_metrics(args) -> int:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server, write_to_textfile

    from bpfdeploy.metrics import DeploymentCollector

    prepared = _prepare(args, args.manifest)
    registry = CollectorRegistry()
    registry.register(DeploymentCollector(prepared, lambda: _status_of(prepared, args.manifest, None)))
    if args.once:
        sys.stdout.write(generate_latest(registry).decode())
        return ExitCode.OK
    if args.textfile:
        import signal
        import threading

        stop = threading.Event()  # SIGTERM ends the loop between writes, never inside one
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while True:
            write_to_textfile(str(args.textfile), registry)  # a temporary file renamed into place
            if not args.interval or stop.wait(args.interval):
                return ExitCode.OK
    host, _, port = args.listen.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    print(f"serving metrics of {prepared.desired.name} on http://{args.listen}/metrics", file=sys.stderr, flush=True)
    try:
        thread.join()
    except KeyboardInterrupt:
        server.shutdown()
    return ExitCode.OK


def cmd_probe(args) -> int:
    return {"features": cmd_probe_features, "check": cmd_probe_check}[args.probe_command](args)


def cmd_probe_features(args) -> int:
    from bpfdeploy.probe import features_json, probe_features

    features = probe_features(args.cache_dir, refresh=args.refresh)
    known_type = args.helpers is None or features.helpers_for(args.helpers) is not None
    if args.json:
        print(json.dumps(features_json(features, program_types=args.program_types, map_types=args.map_types,
                                       helpers=args.helpers, config=args.config), indent=2))
    else:
        from bpfdeploy.render.probe import render_features

        render_features(features, program_types=args.program_types, map_types=args.map_types,
                        helpers=args.helpers, config=args.config)
    return ExitCode.OK if known_type else ExitCode.ERROR


def cmd_probe_check(args) -> int:
    prepared = _prepare(args, args.manifest)
    features, diags = _gate(prepared, args.manifest, args.refresh, args.cache_dir)
    errors = [d for d in diags if d.severity == "error"]
    if args.json:
        print(json.dumps({"fits": not errors, "kernel": features.kernel_release, "probed_at": features.probed_at,
                          "from_cache": features.from_cache, "diagnostics": [d.to_json() for d in diags]},
                         indent=2))
    else:
        from bpfdeploy.render.probe import render_check

        render_check(diags, file=str(args.manifest), features=features)
    return ExitCode.ERROR if errors else ExitCode.OK


_COMMANDS = {"validate": cmd_validate, "plan": cmd_plan, "apply": cmd_apply, "destroy": cmd_destroy,
             "probe": cmd_probe, "status": cmd_status, "dump": cmd_dump, "metrics": cmd_metrics}

if __name__ == "__main__":
    sys.exit(main())
