"""The command line's contract with scripts: one exit-code table, versioned JSON replies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bpfdeploy.diagnostics import ExitCode
from bpfdeploy.render.replies import FORMAT_VERSION

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bpfdeploy.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_exit_codes_are_distinct():
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values))
    assert (ExitCode.OK, ExitCode.ERROR, ExitCode.CHANGES) == (0, 1, 2)  # Terraform's, kept


@pytest.mark.parametrize("argv", [["plan", "--detailed-exitcode"], ["nosuch"], ["apply", "--lock-timeout", "x", "m"],
                                  ["probe"], []])
def test_usage_errors_do_not_look_like_changes_pending(argv):
    proc = run(*argv)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "usage:" in proc.stderr


def test_help_lists_the_exit_codes():
    proc = run("--help")
    assert proc.returncode == 0
    assert "64 usage" in proc.stdout and "2 changes pending" in proc.stdout


def test_validate_json_reply_is_versioned():
    proc = run("validate", "manifests/connect-policy.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["format_version"] == FORMAT_VERSION and reply["valid"] is True


def test_error_json_reply_is_versioned(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nobjects: 3\n")
    proc = run("validate", str(bad), "--json")
    assert proc.returncode == ExitCode.ERROR
    reply = json.loads(proc.stdout)
    assert reply["format_version"] == FORMAT_VERSION and reply["exit_code"] == 1
    assert reply["diagnostics"] and all(d["file"] == str(bad) for d in reply["diagnostics"])
