"""Every --json reply has a JSON Schema under schemas/replies/; the schemas themselves are valid,
and real replies of the commands that need no root match theirs (the kernel tier checks the rest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reply_schemas import REPLIES, check_reply

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(REPLIES.glob("*.schema.json")), ids=lambda p: p.name)
def test_each_reply_schema_is_a_valid_schema(path):
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads(path.read_text()))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bpfdeploy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def test_validate_reply_matches_its_schema():
    proc = _cli("validate", REPO / "manifests" / "cgroup-counters.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    check_reply("validate", json.loads(proc.stdout))


def test_error_reply_matches_its_schema(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nobjects: {}\nattachments: [{program: p, type: ingres}]\n")
    proc = _cli("validate", bad, "--json")
    assert proc.returncode == 1
    reply = json.loads(proc.stdout)
    check_reply("error", reply)
    assert reply["diagnostics"]


def test_a_reply_that_departs_from_its_schema_is_caught():
    with pytest.raises(AssertionError, match="format_version"):
        check_reply("validate", {"format_version": 1, "valid": True, "deployment": "x", "pin_root": "/",
                                 "programs": 0, "maps": 0, "attachments": 0, "diagnostics": []})


def test_plan_schema_names_every_action_kind_and_resource():
    from bpfdeploy.plan import Kind, Resource

    action = json.loads((REPLIES / "plan.schema.json").read_text())["$defs"]["action"]["properties"]
    assert set(action["action"]["enum"]) == {k.value for k in Kind}
    assert set(action["resource"]["enum"]) == {r.value for r in Resource}


def test_schema_files_are_what_the_script_writes(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-reply-schemas.py"), str(tmp_path)], check=True)
    written = {p.name: p.read_text() for p in tmp_path.glob("*.schema.json")}
    assert written == {p.name: p.read_text() for p in REPLIES.glob("*.schema.json")}


def test_metrics_default_port_is_not_ebpf_exporters():
    from bpfdeploy.exporter import DEFAULT_LISTEN

    assert DEFAULT_LISTEN == "127.0.0.1:19435" and not DEFAULT_LISTEN.endswith(":9435")
