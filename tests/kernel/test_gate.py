"""Capability gating: a manifest that the host cannot run is refused before anything changes."""

from __future__ import annotations

from pathlib import Path

from tests.kernel.conftest import REPO


def _manifest(sandbox, requires: str) -> tuple[Path, Path]:
    root = sandbox.pin_root(f"{sandbox.id}-gate")
    cgroup = sandbox.cgroup("gate")
    return sandbox.write(f"""
        version: 1
        name: {sandbox.id}-gate
        pin_root: {root}
        requires:
{requires}
        objects:
          counters:
            source: {REPO}/bpf/cgroup-counters/counters.bpf.c
        attachments:
          - {{program: count_ingress, type: ingress, cgroup: {cgroup}}}
    """), root


def test_a_host_that_lacks_a_requirement_is_refused_before_any_change(sandbox):
    manifest, root = _manifest(sandbox, """          kernel: "99.1"
          config: [CONFIG_KPROBES]
          map_types: [hash]""")
    for command in ("plan", "apply"):
        proc = sandbox.cli(command, manifest, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, text
        assert "requires.kernel" in text and "99.1" in text
        assert "CONFIG_KPROBES" in text
        assert "Traceback" not in text
    assert not root.exists()  # nothing was loaded
    check = sandbox.cli("probe", "check", manifest, check=False)
    assert check.returncode == 1 and "does not fit" in check.stdout + check.stderr


def test_a_host_that_fits_passes_the_check(sandbox):
    manifest, root = _manifest(sandbox, """          kernel: "5.10"
          btf: true
          program_types: [cgroup_skb]
          attach_types: [ingress]""")
    assert sandbox.cli("probe", "check", manifest).returncode == 0
    sandbox.cli("apply", manifest)
    assert root.exists()


def test_probe_features_json_is_cached_per_boot(sandbox):
    cache = sandbox.tmp / "probe-cache"
    first = sandbox.cli_json("probe", "features", "--cache-dir", cache)
    assert first["program_types"]["cgroup_skb"] is True and first["map_types"]["sockhash"] is True
    assert first["from_cache"] is False
    second = sandbox.cli_json("probe", "features", "--cache-dir", cache)
    assert second["from_cache"] is True and second["probed_at"] == first["probed_at"]
    third = sandbox.cli_json("probe", "features", "--cache-dir", cache, "--refresh")
    assert third["from_cache"] is False
