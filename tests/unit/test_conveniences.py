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


def test_version_names_the_kernel_and_every_tool():
    import platform

    proc = _cli("--version")
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert lines["bpfdeploy"].startswith("0.1.0") and lines["kernel"] == platform.release()
    for tool in ("bpftool", "libbpf", "clang", "iproute2"):
        assert tool in lines and lines[tool] != "not found", proc.stdout


def test_building_the_parser_reads_no_version():
    """--version's tools run only when asked: the parser every command builds starts no process."""
    from bpfdeploy.cli import _parser
    from bpfdeploy.kernel import runner

    before = len(runner.calls)
    _parser().parse_args(["status"])
    assert len(runner.calls) == before


def test_several_manifests_are_validated_each_and_the_worst_exit_code_wins():
    good = REPO / "manifests" / "cgroup-counters.yaml"
    proc = _cli("validate", good, BAD / "unknown-attach-type.yaml", "--json")
    assert proc.returncode == 1
    reply = json.loads(proc.stdout)
    from tests.reply_schemas import check_reply

    check_reply("validate-many", reply)
    assert [(r["exit_code"], r.get("valid")) for r in reply["results"]] == [(0, True), (1, None)]
    assert "unknown attach type" in reply["results"][1]["diagnostics"][0]["message"]
    human = _cli("validate", good, BAD / "unknown-attach-type.yaml")
    assert "valid: " in human.stdout and "unknown attach type 'ingres'" in human.stderr


def test_a_manifest_on_standard_input_resolves_paths_from_the_current_directory():
    text = (REPO / "manifests" / "cgroup-counters.yaml").read_text()
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "validate", "-", "--json"], input=text,
                          capture_output=True, text=True, cwd=REPO / "manifests", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deployment"] == "cgroup-counters"
    elsewhere = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "validate", "-"], input=text,
                               capture_output=True, text=True, cwd="/", timeout=120)
    assert elsewhere.returncode == 1 and "not found" in elsewhere.stderr


def test_graph_draws_objects_programs_maps_and_hooks_as_dot():
    import re

    proc = _cli("graph", REPO / "manifests" / "sockmap-redirect.yaml")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith('digraph "sockmap-redirect" {') and text.rstrip().endswith("}")
    nodes = dict(re.findall(r'^  ("[^"]+") \[shape=(\w+)', text, re.M))
    edges = re.findall(r'^  ("[^"]+") -> ("[^"]+")(?: \[([^\]]*)\])?;', text, re.M)
    assert nodes['"object:sockops"'] == "folder" and nodes['"prog:sockredir"'] == "ellipse"
    assert nodes['"map:sock_ops_map"'] == "cylinder"
    cgroup = '"hook:cgroup:/sys/fs/cgroup/unified/bpfdeploy-sockmap-demo"'
    assert nodes[cgroup] == "hexagon"
    labelled = {(a, b): attrs for a, b, attrs in edges}
    assert 'label="sock_ops"' in labelled[('"prog:sockops"', cgroup)]
    assert ('"object:sockredir"', '"prog:sockredir"') in labelled
    assert any(a == '"prog:sockredir"' and b == '"map:sock_ops_map"' and "msg_verdict" in attrs
               for a, b, attrs in edges)  # a sockmap verdict's hook is its map
    assert all(a in nodes and b in nodes for a, b, _ in edges)  # every edge joins declared nodes


def test_man_page_and_bash_completion_are_generated_from_the_parser(tmp_path):
    import os

    subprocess.run([sys.executable, str(REPO / "scripts" / "make-cli-docs.py"), str(tmp_path)], check=True,
                   capture_output=True)
    page = subprocess.run(["man", "-l", str(tmp_path / "man" / "bpfdeploy.1")], capture_output=True, text=True,
                          env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    assert page.returncode == 0, page.stderr
    for command in ("validate", "plan", "apply", "destroy", "status", "dump", "metrics", "graph", "probe check"):
        assert f"bpfdeploy {command}" in page.stdout
    assert "64 (USAGE)" in page.stdout and "--detailed-exitcode" in page.stdout.replace("‐", "-")
    script = tmp_path / "completion" / "bpfdeploy.bash"
    probe = f"""
source {script}
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}}-1)); COMPREPLY=(); _bpfdeploy; echo "${{COMPREPLY[*]}}"; }}
t bpfdeploy gr
t bpfdeploy plan --detailed
t bpfdeploy probe ''
t bpfdeploy status cgroup-co
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=REPO / "manifests").stdout
    assert out.splitlines() == ["graph", "--detailed-exitcode", "features check", "cgroup-counters.yaml"]


def test_status_tables_fold_long_cells_and_never_crop_at_80_columns():
    # In a process of its own: render.human binds its streams at import, which pytest's capture
    # would otherwise hand to every later test.
    code = """
import io
from rich.console import Console
from bpfdeploy.render import status as view
from bpfdeploy.status import AttachmentStatus, DeploymentStatus, MapStatus, ProgramStatus
long_name, cgroup = "p" * 40, "/sys/fs/cgroup/unified/" + "c" * 60
s = DeploymentStatus("d" * 63, "/sys/fs/bpf/bpfdeploy/" + "d" * 63,
                     programs=[ProgramStatus(long_name, 413726, "cgroup_sock_addr", (f"connect4 on {cgroup}",),
                                             "in sync", "", 0, None, None)],
                     maps=[MapStatus("m" * 30, 7, "hash key 4B value 4B max_entries 64 flags 0x0", 1, "in sync", "")],
                     attachments=[AttachmentStatus("a" * 70, long_name, f"connect4 on cgroup {cgroup}", "in sync", "")])
view.out = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None, soft_wrap=False)
view.out.print(view.status_table(s))
print(view.out.file.getvalue(), end="")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text, long_name = proc.stdout, "p" * 40
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in text
    columns: dict[tuple[int, int], str] = {}  # (table, column) -> the column's text, lines joined
    table = 0
    for line in lines:
        if line.startswith("┏"):
            table += 1
        if line.startswith("│"):
            for i, cell in enumerate(line.strip("│").split("│")):
                columns[(table, i)] = columns.get((table, i), "") + cell.strip()
    for ident in (long_name, "c" * 60, "m" * 30, "a" * 70, "cgroup_sock_addr"):
        assert any(ident in col for col in columns.values()), ident  # whole, folded over lines
    assert sum(line.count("┃") for line in lines if "program" in line) >= 7  # all six columns kept


def test_usage_errors_of_several_manifests_and_stdin_exit_64(tmp_path):
    good = REPO / "manifests" / "cgroup-counters.yaml"
    assert _cli("plan", good, good, "--out", tmp_path / "p.json").returncode == 64
    assert _cli("plan", "-", "--out", tmp_path / "p.json", input="").returncode == 64
    assert _cli("validate", "-", "-", input="").returncode == 64
    assert _cli("metrics", "--all", tmp_path, good).returncode == 64
