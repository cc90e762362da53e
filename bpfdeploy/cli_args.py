"""The command line's grammar: every sub-command and what it takes, and two ways to read argv.

The grammar is written once, as the argparse calls it stands for (``_grammar``), and recorded
by ``_Spec`` rather than run. ``parser()`` replays it into a real argparse parser: that is what
prints ``--help`` and usage errors and what the man page and completion are made from.
``parse()`` first tries ``fast_parse()``, a reader of the same grammar for the plain command
lines that scripts and timers run (known options spelled in full, the positionals in one run);
anything else (``-h``, an abbreviation, a bad value, a missing argument) goes to argparse,
which answers exactly as it always did. Importing argparse and building the parser costs
about 8 ms of the 50 a no-op plan takes (issue 16); ``tests/unit/test_cli_args.py`` checks
that both readers agree on every command line it generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

from bpfdeploy.diagnostics import ExitCode


class _Spec:
    """One (sub-)command: the keywords of its parser and its add_argument calls, in order."""

    def __init__(self, name: str | None, **kwargs):
        self.name, self.kwargs = name, kwargs
        self.arguments: list[tuple[tuple[str, ...], dict]] = []
        self.subcommands: _Subcommands | None = None

    def add_argument(self, *flags: str, **kwargs) -> None:
        self.arguments.append((flags, kwargs))

    def add_subparsers(self, **kwargs) -> _Subcommands:
        self.subcommands = _Subcommands(kwargs)
        return self.subcommands


class _Subcommands:
    def __init__(self, kwargs: dict):
        self.kwargs = kwargs
        self.specs: dict[str, _Spec] = {}

    def add_parser(self, name: str, **kwargs) -> _Spec:
        spec = self.specs[name] = _Spec(name, **kwargs)
        return spec


def _grammar() -> _Spec:
    """Every command and what it takes, written as argparse calls (recorded by _Spec)."""
    parser = _Spec(None, prog="bpfdeploy", description="Declarative deployment of eBPF programs.",
                   epilog="exit codes: 0 ok, 1 error (a failed apply is rolled back), 2 changes pending "
                          "(plan --detailed-exitcode), 3 drifted or not deployed (status), 4 locked "
                          "(--lock-timeout passed), 5 partial (an optional attachment failed), 64 usage, "
                          "70 internal error")
    parser.add_argument("--version", action="version-report", nargs=0,
                        help="show bpfdeploy's version and those of the kernel, bpftool, libbpf, clang and iproute2")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, manifest=True):
        if manifest:
            p.add_argument("manifest", type=Path, help="the manifest file (YAML)")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument("--state-dir", type=Path, help="where deployment records live (default /var/lib/bpfdeploy, "
                                                       "or $BPFDEPLOY_STATE_DIR)")
        return p

    def from_artifacts(p):
        p.add_argument("--artifacts", type=Path, metavar="DIR",
                       help="take the objects from DIR (made by 'bpfdeploy build --out DIR') instead of building: "
                            "no clang; every digest is checked first")
        p.add_argument("--allowed-signers", type=Path, metavar="FILE",
                       help="with --artifacts: require a good signature by a key of this ssh allowed_signers file")
        return p

    def manifests(p):
        p.add_argument("manifest", type=Path, nargs="+", help="manifest files ('-': standard input), or deployment "
                                                              "names (the manifest their record names)")
        return p

    from_artifacts(common(manifests(sub.add_parser("validate", help="check manifests and report every problem")),
                          manifest=False))
    p = common(sub.add_parser("build", help="build every object of the manifest into a directory of artifacts, "
                                            "for 'apply --artifacts' on hosts without clang"))
    p.add_argument("--out", type=Path, metavar="DIR", required=True,
                   help="where the objects and their index of digests (artifacts.json) are written")
    p.add_argument("--sign-key", type=Path, metavar="KEY",
                   help="sign the index with this ssh private key (ssh-keygen -Y sign, namespace bpfdeploy)")
    p = from_artifacts(common(manifests(sub.add_parser("plan", help="show what apply would change")), manifest=False))
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 0: no changes, 2: changes pending, 1: error")
    p.add_argument("--verbose", "-v", action="store_true", help="list unchanged resources too")
    p.add_argument("--out", type=Path, metavar="FILE", help="save the plan, with a fingerprint of the live state, "
                                                             "for 'bpfdeploy apply FILE'")
    p.add_argument("--verify", action="store_true", help="load every new or changed program into the kernel and "
                   "free it at once (nothing pinned or attached): show which ones the verifier accepts")
    p = sub.add_parser("apply", help="make the kernel match the manifest (or carry out a saved plan)")
    p.add_argument("manifest", type=Path, nargs="?", help="the manifest file (YAML), or a plan saved by plan --out")
    p.add_argument("--all", type=Path, metavar="DIR", dest="all_dir",
                   help="apply every manifest in DIR (*.yaml, *.yml, in name order), each with its own lock; one "
                        "failing does not stop the others (what bpfdeploy.service runs at boot)")
    from_artifacts(common(p, manifest=False))
    p.add_argument("--check", action="store_true", help="plan only; change nothing")
    p.add_argument("--verbose", "-v", action="store_true", help="list unchanged resources too")
    p.add_argument("--lock-timeout", type=float, default=60, metavar="SECONDS",
                   help="how long to wait for another apply or destroy of the deployment (0: fail at once)")
    p = common(sub.add_parser("destroy", help="remove everything the deployment owns"), manifest=False)
    p.add_argument("manifest", type=Path, help="the manifest file, or the deployment's name")
    p.add_argument("--lock-timeout", type=float, default=60, metavar="SECONDS",
                   help="how long to wait for another apply or destroy of the deployment (0: fail at once)")

    p = sub.add_parser("status", help="deployments on this host, or one deployment in detail")
    p.add_argument("manifest", type=Path, nargs="?", help="a deployment's manifest or name (omit: list every "
                                                          "deployment)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--state-dir", type=Path, help="where deployment records live")
    p.add_argument("--stats", nargs="?", type=float, const=1.0, metavar="SECONDS",
                   help="measure run counts and run time over a window (default 1 s) with kernel.bpf_stats_enabled")
    p.add_argument("--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
                   help="refresh a live table every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--wide", action="store_true", help="keep every table cell on one line, however wide "
                                                       "(the default when the output is not a terminal)")
    from_artifacts(p)
    p = sub.add_parser("dump", help="a deployment map's entries, formatted through BTF")
    p.add_argument("deployment", help="deployment name or manifest file")
    p.add_argument("map", help="map name, or .bss, .data or .rodata for its programs' globals "
                               "(PROGRAM:.bss when they come from several objects)")
    p.add_argument("--key-decode", action="append", default=[], metavar="[FIELD=]KIND",
                   help="show the key (or a field of a key struct) as ipv4, ipv6, port, string, hex or integer; "
                        "repeatable (default: as the manifest's metrics labels decode it)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--wide", action="store_true", help="keep every table cell on one line, however wide")
    p.add_argument("--state-dir", type=Path, help="where deployment records live")
    p = common(sub.add_parser("metrics", help="Prometheus metrics from deployments' maps and programs, on one port"),
               manifest=False)
    p.add_argument("manifest", type=Path, nargs="*",
                   help="manifests to export (omit: every deployment recorded in the state dir)")
    p.add_argument("--all", type=Path, metavar="DIR", dest="all_dir",
                   help="export every manifest (*.yaml) in DIR; one that fails is reported as bpfdeploy_scrape_error")
    p.add_argument("--listen", default=None, metavar="ADDR:PORT",
                   help="serve /metrics over HTTP here (default 127.0.0.1:19435: 9435 is ebpf_exporter's)")
    p.add_argument("--textfile", type=Path, metavar="PATH",
                   help="write a node_exporter textfile (atomically) instead of serving; with --interval, repeatedly")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="with --textfile: rewrite every SECONDS")
    p.add_argument("--once", action="store_true",
                   help="write the exposition once and exit: to the --textfile if one is given, else to stdout")

    p = sub.add_parser("graph", help="the deployment as a Graphviz DOT graph: objects -> programs -> maps and hooks")
    p.add_argument("manifest", type=Path, help="the manifest file, or a deployment's name")
    p.add_argument("--state-dir", type=Path, help="where deployment records live (to find a deployment by name)")
    from_artifacts(p)

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
    p = from_artifacts(common(probe_sub.add_parser("check", help="does this manifest fit this host? exit 0 yes, 1 no")))
    p.add_argument("--refresh", action="store_true", help="probe again even if this boot's probe is cached")
    p.add_argument("--cache-dir", type=Path, help="where probes are cached")
    return parser



_GRAMMAR: _Spec | None = None


def grammar() -> _Spec:
    global _GRAMMAR
    if _GRAMMAR is None:
        _GRAMMAR = _grammar()
    return _GRAMMAR


def parse(argv: list[str] | None = None):
    """The arguments as argparse would return them (argparse itself when the command line is not plain)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return fast_parse(argv) or parser().parse_args(argv)


# -- argparse, from the grammar ----------------------------------------------------------------

def parser():
    """The argparse parser of the whole grammar (help, usage errors, man page, completion)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse, but a usage error exits ExitCode.USAGE: 2 means "changes pending" to plan's callers."""

        def error(self, message: str):
            self.print_usage(sys.stderr)
            self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")

    class VersionReport(argparse.Action):
        """--version: the versions are read only when asked (bpftool and clang each start a process)."""

        def __call__(self, parser, namespace, values, option_string=None):
            _print_versions()
            parser.exit(ExitCode.OK)

    def replay(spec: _Spec, into) -> None:
        for flags, kwargs in spec.arguments:
            if kwargs.get("action") == "version-report":
                kwargs = {**kwargs, "action": VersionReport}
            into.add_argument(*flags, **kwargs)
        if spec.subcommands is not None:
            sub = into.add_subparsers(**spec.subcommands.kwargs)
            for name, child in spec.subcommands.specs.items():
                replay(child, sub.add_parser(name, **child.kwargs))

    top = grammar()
    real = Parser(**top.kwargs)
    replay(top, real)
    return real


def _print_versions() -> None:
    import platform

    from bpfdeploy import __version__
    from bpfdeploy.probe import tool_versions

    v = tool_versions()
    missing = "not found"
    print(f"bpfdeploy {__version__} (Python {platform.python_version()})\n"
          f"kernel    {platform.release()}\n"
          f"bpftool   {v.bpftool or missing}" + (f" (built with libbpf {v.bpftool_libbpf})" if v.bpftool_libbpf else "")
          + f"\nlibbpf    {v.libbpf or missing} (the libbpf.so.1 bpfdeploy loads)\n"
          f"clang     {v.clang or missing}\n"
          f"iproute2  {v.iproute2 or missing}")


# -- the plain command lines, without argparse ---------------------------------------------------

class _NotPlain(Exception):
    """This command line is argparse's to read (help, an error, or a form the fast reader leaves alone)."""


def fast_parse(argv: list[str]) -> SimpleNamespace | None:
    """What argparse would return for a plain command line, or None to let argparse read it.

    Plain: sub-command names first; every option spelled in full, known to that sub-command,
    as ``--opt value`` or ``--opt=value``, with a value that converts (type and choices);
    the positionals next to each other, fitting the sub-command's (all single, or the last
    one optional or repeated); every required option given."""
    try:
        values: dict = {}
        spec = grammar()
        while True:
            _defaults(spec, values)
            if spec.subcommands is None:
                break
            if not argv or argv[0] not in spec.subcommands.specs:
                raise _NotPlain
            values[spec.subcommands.kwargs["dest"]] = argv[0]
            spec, argv = spec.subcommands.specs[argv[0]], argv[1:]
        _read(spec, argv, values)
    except _NotPlain:
        return None
    return SimpleNamespace(**values)


def _dest(flags: tuple[str, ...], kwargs: dict) -> str:
    if "dest" in kwargs:
        return kwargs["dest"]
    if not flags[0].startswith("-"):
        return flags[0]
    long = next((f for f in flags if f.startswith("--")), flags[0])
    return long.lstrip("-").replace("-", "_")


def _defaults(spec: _Spec, values: dict) -> None:
    for flags, kwargs in spec.arguments:
        action = kwargs.get("action")
        if action == "store_true":
            default = kwargs.get("default", False)
        elif action == "append":
            default = kwargs.get("default")
            default = list(default) if default is not None else None  # argparse copies it before appending
        else:
            default = kwargs.get("default")
        if isinstance(default, str) and "type" in kwargs:
            default = _convert(kwargs, default)  # argparse converts a string default through its type
        values[_dest(flags, kwargs)] = default


def _convert(kwargs: dict, text: str):
    convert = kwargs.get("type")
    try:
        value = convert(text) if convert is not None else text
    except (TypeError, ValueError):
        raise _NotPlain from None
    if "choices" in kwargs and value not in kwargs["choices"]:
        raise _NotPlain
    return value


def _is_option(token: str) -> bool:
    return token.startswith("-") and token != "-"


def _read(spec: _Spec, argv: list[str], values: dict) -> None:
    options = {flag: (flags, kwargs) for flags, kwargs in spec.arguments if flags[0].startswith("-") for flag in flags}
    positionals = [(flags, kwargs) for flags, kwargs in spec.arguments if not flags[0].startswith("-")]
    given: set[str] = set()
    tokens: list[str] = []
    ended = False  # the run of positionals has ended (an option came after one)
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if not _is_option(token):
            if ended:
                raise _NotPlain
            tokens.append(token)
            continue
        ended = bool(tokens)
        flag, eq, inline = token.partition("=")
        if flag not in options or (eq and not flag.startswith("--")):
            raise _NotPlain  # -h, --help, an abbreviation, -vx, --, a negative number
        flags, kwargs = options[flag]
        dest, action = _dest(flags, kwargs), kwargs.get("action")
        given.add(dest)
        if action == "store_true":
            if eq:
                raise _NotPlain
            values[dest] = True
            continue
        if kwargs.get("nargs") == "?":
            if eq:
                values[dest] = _convert(kwargs, inline)
            elif i < len(argv) and not _is_option(argv[i]):
                values[dest] = _convert(kwargs, argv[i])
                i += 1
            else:
                values[dest] = kwargs.get("const")
            continue
        if kwargs.get("nargs") is not None or action not in (None, "store", "append"):
            raise _NotPlain
        if eq:
            text = inline
        elif i < len(argv) and not _is_option(argv[i]):
            text = argv[i]
            i += 1
        else:
            raise _NotPlain
        value = _convert(kwargs, text)
        if action == "append":
            values[dest] = (values[dest] or []) + [value]
        else:
            values[dest] = value
    for flags, kwargs in spec.arguments:
        if kwargs.get("required") and _dest(flags, kwargs) not in given:
            raise _NotPlain
    _place(positionals, tokens, values)


def _place(positionals: list, tokens: list[str], values: dict) -> None:
    """Give the run of positional tokens to the positionals: each single one takes one token,
    and the last may be optional (?), repeated (+) or either (*)."""
    *fixed, last = positionals or [((), {})]
    if any(kwargs.get("nargs") is not None for _, kwargs in fixed):
        raise _NotPlain
    nargs = last[1].get("nargs") if positionals else None
    if not positionals:
        if tokens:
            raise _NotPlain
        return
    counts = {None: (1, 1), "?": (0, 1), "+": (1, None), "*": (0, None)}
    if nargs not in counts:
        raise _NotPlain
    low, high = counts[nargs]
    rest = len(tokens) - len(fixed)
    if rest < low or (high is not None and rest > high):
        raise _NotPlain
    for (flags, kwargs), token in zip(fixed, tokens):
        values[_dest(flags, kwargs)] = _convert(kwargs, token)
    flags, kwargs = last
    mine = tokens[len(fixed):]
    if nargs is None:
        values[_dest(flags, kwargs)] = _convert(kwargs, mine[0])
    elif nargs == "?":
        if mine:
            values[_dest(flags, kwargs)] = _convert(kwargs, mine[0])
    elif mine:
        values[_dest(flags, kwargs)] = [_convert(kwargs, t) for t in mine]
    elif nargs == "*" and kwargs.get("default") is None:
        values[_dest(flags, kwargs)] = []
