"""The boot-time unit: `make install` lays it out, `systemd-analyze verify` accepts it, and it
says what "surviving a reboot" needs (oneshot, after bpffs and cgroup2, before the network).

This machine's PID 1 is not systemd, so the unit cannot be started here: tests/kernel/test_reboot.py
runs its ExecStart command instead.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "systemd" / "bpfdeploy.service"
CONF = REPO / "packaging" / "bpfdeploy.conf"


def unit_directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> values, in order (a key may repeat)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def _install(tmp_path: Path) -> Path:
    prefix, etc = tmp_path / "usr", tmp_path / "etc"
    subprocess.run(["make", "-s", "-C", str(REPO), "install", f"PREFIX={prefix}", f"SYSCONFDIR={etc}"],
                   check=True, capture_output=True, text=True)
    return tmp_path


def test_make_install_lays_out_unit_conf_manifest_dir_and_command(tmp_path):
    root = _install(tmp_path)
    unit = root / "etc" / "systemd" / "system" / "bpfdeploy.service"
    conf = root / "etc" / "bpfdeploy" / "bpfdeploy.conf"
    assert unit.is_file() and conf.is_file() and (root / "etc" / "bpfdeploy" / "manifests").is_dir()
    command = root / "usr" / "bin" / "bpfdeploy"
    assert command.resolve() == (REPO / ".venv" / "bin" / "bpfdeploy").resolve()
    text = unit.read_text()
    assert f"ExecStart={command} apply --all" in text
    assert f"EnvironmentFile=-{root}/etc/bpfdeploy/bpfdeploy.conf" in text
    assert f"ConditionPathIsDirectory={root}/etc/bpfdeploy/manifests" in text
    assert f"BPFDEPLOY_MANIFEST_DIR={root}/etc/bpfdeploy/manifests" in conf.read_text()
    # Installing again keeps a conf the administrator edited.
    conf.write_text("BPFDEPLOY_MANIFEST_DIR=/srv/bpf\n")
    _install(tmp_path)
    assert conf.read_text() == "BPFDEPLOY_MANIFEST_DIR=/srv/bpf\n"


def test_systemd_analyze_verify_accepts_the_installed_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/bootstrap.sh installs the systemd package"
    unit = _install(tmp_path) / "etc" / "systemd" / "system" / "bpfdeploy.service"
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # verify exits 0 even for many problems it only warns about: any output is a failure here.
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stderr

    # ... and the check can fail: a broken copy is reported.
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=oneshot", "Type=one-shot"))
    proc = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert "Failed to parse service type" in proc.stderr


def test_the_unit_runs_once_at_boot_after_bpffs_and_cgroup2_and_before_the_network():
    d = unit_directives(UNIT.read_text())
    assert d[("Service", "Type")] == ["oneshot"]
    assert d[("Service", "RemainAfterExit")] == ["yes"]
    assert "sys-fs-bpf.mount" in " ".join(d[("Unit", "After")])
    mounts = " ".join(d[("Unit", "RequiresMountsFor")]).split()
    assert "/sys/fs/bpf" in mounts and "/sys/fs/cgroup" in mounts  # cgroup2 (and bpffs) mounted first
    assert "network-pre.target" in " ".join(d[("Unit", "Before")])
    assert d[("Unit", "Wants")] == ["network-pre.target"]
    assert d[("Unit", "DefaultDependencies")] == ["no"]  # else After=basic.target: too late for network-pre
    assert d[("Unit", "ConditionPathIsDirectory")] == ["/etc/bpfdeploy/manifests"]
    assert d[("Service", "ExecStart")] == [
        "/usr/local/bin/bpfdeploy apply --all ${BPFDEPLOY_MANIFEST_DIR} --lock-timeout ${BPFDEPLOY_LOCK_TIMEOUT}"]
    assert d[("Service", "SuccessExitStatus")] == ["5"]  # PARTIAL: only optional attachments missing
    assert not any(k == "ExecStop" for _s, k in d)  # stopping the unit leaves the programs running
    conf = dict(line.split("=", 1) for line in CONF.read_text().splitlines() if line and not line.startswith("#"))
    assert conf["BPFDEPLOY_MANIFEST_DIR"] == "/etc/bpfdeploy/manifests"
    assert float(conf["BPFDEPLOY_LOCK_TIMEOUT"]) > 0
