"""Write the man page and the bash completion of bpfdeploy from its argument parser.

    .venv/bin/python scripts/make-cli-docs.py [OUT_DIR]     # default build/: man/bpfdeploy.1, completion/bpfdeploy.bash
    make cli-docs                                           # the same; scripts/bootstrap.sh setup runs it too

Generated at build time, never at run time, so no command pays for them. Both come from
bpfdeploy.cli's parser (sub-commands, options, help texts) and the exit codes from
bpfdeploy.diagnostics.ExitCode, so they cannot drift from the code.

    man build/man/bpfdeploy.1
    source build/completion/bpfdeploy.bash     # or install it in /usr/share/bash-completion/completions/bpfdeploy
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bpfdeploy import __version__  # noqa: E402
from bpfdeploy.cli import _parser  # noqa: E402
from bpfdeploy.diagnostics import ExitCode  # noqa: E402

EXIT_MEANING = {
    "OK": "success (for plan: no error; for status: in sync)",
    "ERROR": "failed; a failed apply was rolled back",
    "CHANGES": "plan --detailed-exitcode: changes are pending",
    "DRIFTED": "status: the deployment differs from the manifest, or is not deployed",
    "LOCKED": "another apply or destroy held the deployment's lock past --lock-timeout: retry",
    "PARTIAL": "apply done, but an optional attachment failed",
    "USAGE": "the command line is wrong",
    "INTERNAL": "an internal error (the message says where the traceback was written)",
}


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of every sub-command, nested ones as "probe features"."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                nested = _subcommands(sub)
                if nested:
                    out += [(f"{name} {n}", p, h) for n, p, h in nested]
                else:
                    out.append((name, sub, helps.get(name, "")))
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def _roff(text: str) -> str:
    text = (text or "").replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def man_page() -> str:
    parser = _parser()
    date = datetime.date.fromtimestamp(max(p.stat().st_mtime for p in (ROOT / "bpfdeploy").rglob("*.py")))
    out = [f'.TH BPFDEPLOY 1 "{date.isoformat()}" "bpfdeploy {__version__}" "User Commands"',
           ".SH NAME", "bpfdeploy \\- declarative deployment of eBPF programs",
           ".SH SYNOPSIS", ".B bpfdeploy", "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIoptions\\fR]",
           ".SH DESCRIPTION",
           _roff("You describe BPF objects, their maps, pins and attachments in a YAML manifest; "
                 "bpfdeploy plan shows what would change on this host, bpfdeploy apply makes the kernel match "
                 "(idempotently, with rollback), and running it again changes nothing. The manifest format is "
                 "described in docs/manifest.md; every --json reply has a JSON Schema in schemas/replies/."),
           ".SH COMMANDS"]
    for name, sub, help_text in _subcommands(parser):
        usage = " ".join(f"\\fI{a.metavar or a.dest}\\fR" + ("..." if a.nargs in ("+", "*") else "")
                         for a in _positionals(sub))
        out += [".TP", f"\\fBbpfdeploy {name}\\fR {usage}".rstrip(), _roff(help_text or sub.description or "")]
        for a in _positionals(sub):
            out += [".RS", ".TP", f"\\fI{a.metavar or a.dest}\\fR", _roff(a.help or ""), ".RE"]
        for a in _options(sub):
            flags = ", ".join(f"\\fB{_roff(o)}\\fR" for o in a.option_strings)
            meta = f" \\fI{a.metavar or a.dest.upper()}\\fR" if a.nargs != 0 and not isinstance(
                a, (argparse._StoreTrueAction, argparse._StoreFalseAction)) else ""
            out += [".RS", ".TP", flags + meta, _roff(a.help or ""), ".RE"]
    out += [".SH EXIT STATUS", _roff("One table for every command:")]
    for code in ExitCode:
        out += [".TP", f"\\fB{int(code)}\\fR ({code.name})", _roff(EXIT_MEANING.get(code.name, ""))]
    out += [".SH ENVIRONMENT",
            ".TP", "\\fBBPFDEPLOY_STATE_DIR\\fR", _roff("deployment records (default /var/lib/bpfdeploy)"),
            ".TP", "\\fBBPFDEPLOY_CACHE_DIR\\fR", _roff("build cache (default /var/cache/bpfdeploy for root)"),
            ".TP", "\\fBNO_COLOR\\fR", _roff("plain output"),
            ".SH FILES",
            ".TP", "\\fB/sys/fs/bpf/bpfdeploy/\\fINAME\\fR", _roff("a deployment's pins (its default pin root)"),
            ".TP", "\\fB/etc/bpfdeploy/manifests\\fR", _roff("the manifests bpfdeploy.service applies at boot and "
                                                          "bpfdeploy-metrics.service exports"),
            ".SH SEE ALSO", "\\fBbpftool\\fR(8), \\fBtc\\fR(8)"]
    return "\n".join(out) + "\n"


def bash_completion() -> str:
    parser = _parser()
    top = [n for n, _p, _h in _subcommands(parser)]
    words = sorted({n.split()[0] for n in top})
    cases = []
    for name, sub, _h in _subcommands(parser):
        opts = " ".join(o for a in _options(sub) for o in a.option_strings)
        takes_file = any(a.dest in ("manifest",) for a in _positionals(sub))
        nested = name.split()
        pattern = name.replace(" ", ",")
        cases.append(f'        {pattern}) opts="{opts}"; files={1 if takes_file else 0};;')
    nested_parents = sorted({n.split()[0] for n in top if " " in n})
    nested_cases = "\n".join(
        f'        {p}) if [ -z "$sub" ]; then COMPREPLY=($(compgen -W "'
        + " ".join(n.split()[1] for n in top if n.startswith(p + " ")) + '" -- "$cur")); return; fi;;'
        for p in nested_parents)
    return f'''# bash completion for bpfdeploy {__version__} (generated by scripts/make-cli-docs.py from its parser)
_bpfdeploy() {{
    local cur prev cmd sub i opts files
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""; sub=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            -*) ;;
            *) if [ -z "$cmd" ]; then cmd="${{COMP_WORDS[i]}}"
               elif [ -z "$sub" ] && [[ " {" ".join(nested_parents)} " == *" $cmd "* ]]; then sub="${{COMP_WORDS[i]}}"; fi;;
        esac
    done
    if [ -z "$cmd" ]; then
        COMPREPLY=($(compgen -W "{" ".join(words)} --version --help" -- "$cur")); return
    fi
    case "$cmd" in
{nested_cases}
    esac
    case "$prev" in
        --state-dir|--all|--artifacts|--cache-dir) COMPREPLY=($(compgen -d -- "$cur")); return;;
        --out|--textfile|--allowed-signers|--sign-key) COMPREPLY=($(compgen -f -- "$cur")); return;;
    esac
    opts=""; files=0
    case "$cmd${{sub:+,$sub}}" in
{chr(10).join(cases)}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts --help" -- "$cur"))
    elif [ "$files" = 1 ]; then
        COMPREPLY=($(compgen -f -X '!*.y*ml' -- "$cur") $(compgen -d -- "$cur"))
    fi
}}
complete -o filenames -F _bpfdeploy bpfdeploy
'''


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build"
    (out / "man").mkdir(parents=True, exist_ok=True)
    (out / "completion").mkdir(parents=True, exist_ok=True)
    (out / "man" / "bpfdeploy.1").write_text(man_page())
    (out / "completion" / "bpfdeploy.bash").write_text(bash_completion())
    print(f"wrote {out / 'man' / 'bpfdeploy.1'} and {out / 'completion' / 'bpfdeploy.bash'}")


if __name__ == "__main__":
    main()
