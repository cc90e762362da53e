"""What users expect of a command line (issue 18): YAML errors with a column, a deployment name
where a manifest is asked for, several manifests or stdin, versions, completion, a graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "fixtures" / "manifests" / "bad"


def _cli(*args, input=None, env=None):
    return subprocess.run([sys.executable, "-m", "bpfdeploy.cli", *map(str, args)], capture_output=True, text=True,
                          input=input, timeout=120, env=env)


def test_yaml_syntax_errors_name_line_and_column():
    proc = _cli("validate", BAD / "invalid-yaml.yaml")
    assert proc.returncode == 1
    assert f"{BAD / 'invalid-yaml.yaml'}:5:37: invalid YAML: mapping values are not allowed" in proc.stderr
    reply = json.loads(_cli("validate", BAD / "invalid-yaml-tab.yaml", "--json").stdout)
    (diag,) = reply["diagnostics"]
    assert (diag["line"], diag["column"]) == (4, 1) and "tab" in diag["hint"]
