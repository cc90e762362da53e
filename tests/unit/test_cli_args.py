"""cli_args: the fast reader of plain command lines agrees with argparse on every line it reads.

Command lines are generated from the grammar itself (every sub-command, option and
positional, with good and bad values, in any order), so a new option is covered without a
new test. For each, either the fast reader declines (argparse reads it) or both return the
same values; where argparse refuses a line, the fast reader must have declined it.
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfdeploy import cli_args

PARSER = cli_args.parser()
VALUES = ["m.yaml", "-", "5", "2.5", "-1", "x=y", "ipv4", "saddr=ipv4", "", "a b", "--json", "/tmp/dir"]


def _argparse(argv: list[str]):
    """argparse's reading, or None when it exits (usage error, --help)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(PARSER.parse_args(argv))
        except SystemExit:
            return None


def _leaves(spec=None, path=()):
    spec = spec or cli_args.grammar()
    if spec.subcommands is None:
        yield path, spec
        return
    for name, child in spec.subcommands.specs.items():
        yield from _leaves(child, path + (name,))


LEAVES = list(_leaves())


def _good(kwargs: dict) -> list[str]:
    """Values this argument takes (the generator mixes them with VALUES, most of which it refuses)."""
    if kwargs.get("type") in (int, float):
        return ["5", "2.5", "0"]
    return ["m.yaml", "ipv4", "127.0.0.1:9", "-"]


@st.composite
def command_lines(draw):
    path, spec = draw(st.sampled_from(LEAVES))
    tokens = []
    for _ in range(draw(st.integers(0, 6))):
        flags, kwargs = draw(st.sampled_from(spec.arguments + [(("-h",), {}), (("--",), {}), (("--js",), {})]))
        flag = draw(st.sampled_from(flags))
        if not flag.startswith("-"):
            tokens.append(draw(st.sampled_from(VALUES)))
            continue
        value = draw(st.sampled_from(_good(kwargs) if draw(st.integers(0, 3)) else VALUES))
        fitting = ["bare"] if kwargs.get("action") == "store_true" else ["space", "equals"]
        form = draw(st.sampled_from(fitting if draw(st.integers(0, 3)) else ["bare", "space", "equals"]))
        tokens += {"bare": [flag], "space": [flag, value], "equals": [f"{flag}={value}"]}[form]
    return list(path) + tokens


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_the_fast_reader_agrees_with_argparse_or_declines(argv):
    fast = cli_args.fast_parse(argv)
    if fast is None:
        return
    assert _argparse(argv) == vars(fast), argv


@pytest.mark.parametrize("argv", [
    ["plan", "m.yaml"], ["plan", "--json", "--detailed-exitcode", "a.yaml", "b.yaml"], ["plan", "m.yaml", "--out=p"],
    ["apply", "m.yaml", "--lock-timeout", "5"], ["apply", "--all", "/etc/bpfdeploy"], ["apply", "saved.plan", "-v"],
    ["destroy", "m.yaml", "--json"], ["status"], ["status", "m", "--stats"], ["status", "--watch", "3", "m"],
    ["validate", "a.yaml"], ["probe", "features"], ["probe", "check", "m.yaml", "--refresh"],
    ["dump", "dep", "traffic", "--key-decode", "ipv4", "--key-decode", "port"], ["metrics", "--once"],
    ["build", "m.yaml", "--out", "dist"], ["graph", "m.yaml"],
])
def test_the_command_lines_scripts_run_are_read_without_argparse(argv):
    fast = cli_args.fast_parse(argv)
    assert fast is not None, argv
    assert vars(fast) == _argparse(argv)


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["plan", "-h"], ["plan"], ["plan", "m.yaml", "--detailed"], ["apply", "--lock-timeout", "soon"],
    ["build", "m.yaml"], ["probe"], ["dump", "dep", "--json", "traffic"], ["--version"], ["nope"],
])
def test_help_errors_and_unusual_lines_are_left_to_argparse(argv):
    assert cli_args.fast_parse(argv) is None


def test_plain_plan_imports_no_argparse():
    import subprocess
    import sys

    code = ("import sys; from bpfdeploy.cli_args import parse; parse(['plan', 'm.yaml', '--json']); "
            "print('argparse' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
