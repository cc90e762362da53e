"""Locking, saved plans and crash safety (SIGKILL in the middle of an apply)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values
from tests.kernel.test_lifecycle import COUNTER_SRC
from tests.kernel.traffic import ECHO


def _start(sandbox, *args, env_extra=None) -> subprocess.Popen:
    env = dict(sandbox.env, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "bpfdeploy.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"apply ended before pausing: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("apply never reached the pause point")
        time.sleep(0.02)


def _staged(root: Path) -> list[Path]:
    return list(root.rglob("*__bpfdeploy_new")) if root.exists() else []


def test_two_applies_at_once_run_one_after_the_other(sandbox):
    manifest = sandbox.example("sockmap-redirect.yaml")
    procs = [_start(sandbox, "apply", manifest, "--json") for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o[0]) for o in outs]
    assert sorted(r["applied"] for r in results) == [False, True]  # the second found nothing left to do
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_lock_timeout_zero_fails_fast_while_another_apply_runs(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    marker = sandbox.tmp / "paused"
    plan = sandbox.cli_json("plan", manifest)
    step = next(a["address"] for a in plan["actions"] if a["resource"] == "prog")
    holder = _start(sandbox, "apply", manifest, env_extra={
        "BPFDEPLOY_PAUSE_AT": step, "BPFDEPLOY_PAUSE_FILE": str(marker), "BPFDEPLOY_PAUSE_SECONDS": "3"})
    try:
        _wait_for(marker, holder)
        t0 = time.monotonic()
        proc = sandbox.cli("apply", manifest, "--lock-timeout", "0", check=False)
        assert proc.returncode == 4 and "locked by another bpfdeploy process" in proc.stderr  # ExitCode.LOCKED
        assert time.monotonic() - t0 < 2.5
        assert sandbox.cli("plan", manifest).returncode == 0  # plans do not take the lock
    finally:
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_saved_plan_is_applied_exactly_or_refused_when_stale(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    saved = sandbox.tmp / "plan.json"
    sandbox.cli("plan", manifest, "--out", saved)
    out = sandbox.cli_json("apply", saved)
    assert out["applied"] and out["plan"]["summary"]["create"] == 6

    # A change of the live state after the plan was saved makes it stale.
    sandbox.cli("destroy", manifest)
    sandbox.cli("plan", manifest, "--out", saved)
    sandbox.cli("apply", manifest)
    proc = sandbox.cli("apply", saved, check=False)
    assert proc.returncode == 1 and "stale" in proc.stderr and "live state changed" in proc.stderr

    # So does a change of the manifest.
    sandbox.cli("plan", manifest, "--out", saved)
    data = yaml.safe_load(manifest.read_text())
    data["attachments"] = data["attachments"][:1]
    manifest.write_text(yaml.safe_dump(data))
    proc = sandbox.cli("apply", saved, check=False)
    assert proc.returncode == 1 and "manifest or its objects changed" in proc.stderr
    assert len(list((root / "links").iterdir())) == 2  # nothing was changed


def _counter(sandbox, key: int) -> Path:
    src = sandbox.tmp / "counter.bpf.c"
    src.write_text(COUNTER_SRC.replace("KEY", str(key)))
    cgroup = sandbox.cgroups[0] if sandbox.cgroups else sandbox.cgroup("kill")
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-kill")
    if root not in sandbox.pin_roots:
        sandbox.pin_roots.append(root)
    return sandbox.write(f"""
        version: 1
        name: {sandbox.id}-kill
        pin_root: {root}
        objects:
          counter:
            source: {src}
        maps:
          counts:
            entries: [{{key: 6, value: {key + 100}}}]
        attachments:
          - name: ingress
            program: count_packets
            type: ingress
            cgroup: {cgroup}
          - name: multi
            program: count_packets
            type: egress
            cgroup: {{path: {sandbox.cgroup_root}/{sandbox.id}-kill2, create: true}}
            mode: multi
    """)


def test_sigkill_at_any_step_then_plan_and_apply_converge(sandbox):
    """Kill apply at every step of a first deployment and of an upgrade; the next apply converges."""
    sandbox.cgroup("kill")
    sandbox.cgroups.append(sandbox.cgroup_root / f"{sandbox.id}-kill2")
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-kill")
    kills = 0
    for key in (0, 1):
        manifest = _counter(sandbox, key)
        plan = sandbox.cli_json("plan", manifest)
        steps = [a["address"] for a in plan["actions"] if a["action"] not in ("no-op", "delete")]
        for step in steps:
            marker = sandbox.tmp / f"paused-{kills}"
            proc = _start(sandbox, "apply", manifest, env_extra={
                "BPFDEPLOY_PAUSE_AT": step, "BPFDEPLOY_PAUSE_FILE": str(marker)})
            _wait_for(marker, proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
            kills += 1
            # The next plan tells the truth (no traceback) and the next apply converges.
            replan = sandbox.cli_json("plan", manifest)
            assert replan["diagnostics"] == [], replan
            sandbox.cli("apply", manifest)
            assert sandbox.cli_json("plan", manifest)["changes"] is False, f"no convergence after a kill at {step}"
            assert not _staged(root), f"staged pins left after a kill at {step}"
            # Undo this round for the next kill point (first deployment: destroy; upgrade: back to v0).
            if key == 0:
                sandbox.cli("destroy", manifest)
            else:
                _counter(sandbox, 0)
                sandbox.cli("apply", manifest)
                _counter(sandbox, 1)
        if key == 0:
            sandbox.cli("apply", manifest)
    manifest = _counter(sandbox, 1)
    sandbox.cli("apply", manifest)
    assert map_values(root / "maps/counts")[6] == 101
    sandbox.run_in(ECHO.format(n=1), cgroup=sandbox.cgroups[0], netns=sandbox.netns())
    assert map_values(root / "maps/counts")[1] > 0
    # Exactly one program is attached on each hook: no orphan of a killed apply stayed behind.
    for cg, kind in ((sandbox.cgroups[0], "ingress"), (sandbox.cgroup_root / f"{sandbox.id}-kill2", "egress")):
        shown = json.loads(subprocess.run(["bpftool", "-j", "cgroup", "show", str(cg)], capture_output=True,
                                          text=True).stdout or "[]")
        assert len(shown) == 1, (kind, shown)
    assert kills >= 8
