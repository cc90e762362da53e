"""packaging/systemd/bpfdeploy-metrics.service: its command line is one bpfdeploy accepts, on the
documented default port, and it only reads (no apply/destroy)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "bpfdeploy-metrics.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_exporter_unit_runs_a_command_line_bpfdeploy_accepts():
    from bpfdeploy.cli import _parser
    from bpfdeploy.exporter import DEFAULT_LISTEN

    settings = _settings()
    env = dict(item.split("=", 1) for value in settings["Environment"] for item in shlex.split(value))
    assert env["BPFDEPLOY_METRICS_LISTEN"] == DEFAULT_LISTEN
    (exec_start,) = settings["ExecStart"]
    argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start))
    assert argv[0].endswith("/bpfdeploy")
    args = _parser().parse_args(argv[1:])
    assert args.command == "metrics" and args.all_dir == Path("/etc/bpfdeploy/manifests")
    assert args.listen == DEFAULT_LISTEN and not args.json and not args.once and args.textfile is None
    assert settings["Type"] == ["simple"] and settings["Restart"] == ["on-failure"]
    assert settings["ConditionPathIsDirectory"] == ["/etc/bpfdeploy/manifests"]


def test_make_install_lays_out_the_exporter_unit_man_page_and_completion_and_systemd_accepts_the_unit(tmp_path):
    import shutil
    import subprocess

    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"PREFIX={prefix}", f"SYSCONFDIR={etc}"],
                   check=True, capture_output=True, text=True)
    unit = etc / "systemd" / "system" / "bpfdeploy-metrics.service"
    text = unit.read_text()
    assert f"ExecStart={prefix}/bin/bpfdeploy metrics --all ${{BPFDEPLOY_MANIFEST_DIR}}" in text
    assert f"EnvironmentFile=-{etc}/bpfdeploy/bpfdeploy.conf" in text
    assert (prefix / "share" / "man" / "man1" / "bpfdeploy.1").read_text().startswith(".TH BPFDEPLOY 1")
    assert "complete -o filenames -F _bpfdeploy bpfdeploy" in (
        prefix / "share" / "bash-completion" / "completions" / "bpfdeploy").read_text()
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/bootstrap.sh installs the systemd package"
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr
