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
