"""Drift: what was changed by hand is seen by plan and repaired by apply."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values
from tests.kernel.traffic import ECHO


def _applied(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    sandbox.cli("apply", manifest)
    return manifest, root


def _actions(sandbox, manifest) -> dict:
    return {a["address"]: a for a in sandbox.cli_json("plan", manifest)["actions"] if a["action"] != "no-op"}


def _works(sandbox, root: Path) -> None:
    before = map_values(root / "maps/traffic")[0]["packets"]
    sandbox.run_in(ECHO.format(n=1), cgroup=sandbox.cgroups[0], netns=sandbox.netns(f"n{os.urandom(2).hex()}"))
    assert map_values(root / "maps/traffic")[0]["packets"] > before


def test_detached_link_is_reattached(sandbox):
    manifest, root = _applied(sandbox)
    link = next((root / "links").iterdir())
    link.unlink()  # detaches
    changes = _actions(sandbox, manifest)
    assert changes[f"attach/{link.name}"]["action"] == "create"
    sandbox.cli("apply", manifest)
    assert link.exists() and not _actions(sandbox, manifest)
    _works(sandbox, root)


def test_unpinned_program_is_pinned_again_and_its_link_moved(sandbox):
    manifest, root = _applied(sandbox)
    (root / "progs/count_ingress").unlink()  # still running through its link
    changes = _actions(sandbox, manifest)
    assert changes["prog/count_ingress"]["action"] == "create"
    assert changes["attach/count_ingress-ingress-" + sandbox.cgroups[0].name]["action"] == "update"
    sandbox.cli("apply", manifest)
    assert not _actions(sandbox, manifest)
    _works(sandbox, root)


def test_program_replaced_by_hand_is_replaced_back(sandbox):
    manifest, root = _applied(sandbox)
    # Pin another copy of the same program over ours: same code, but not loaded by bpfdeploy.
    pin = root / "progs/count_ingress"
    built = sandbox.tmp / "counters.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c",
                    str(Path(__file__).resolve().parents[2] / "bpf/cgroup-counters/counters.bpf.c"), "-o", str(built)],
                   check=True)
    pin.unlink()
    subprocess.run(["bpftool", "prog", "load", str(built), str(pin)], check=True)
    changes = _actions(sandbox, manifest)
    assert changes["prog/count_ingress"]["action"] == "replace"
    assert "not loaded by this deployment" in changes["prog/count_ingress"]["reason"]
    sandbox.cli("apply", manifest)
    assert not _actions(sandbox, manifest)


def test_unpinned_map_is_created_and_its_programs_replaced(sandbox):
    manifest, root = _applied(sandbox)
    (root / "maps/traffic").unlink()
    changes = _actions(sandbox, manifest)
    assert changes["map/traffic"]["action"] == "create"
    assert changes["prog/count_ingress"]["action"] == "replace"
    assert changes["prog/count_egress"]["action"] == "replace"
    sandbox.cli("apply", manifest)
    assert not _actions(sandbox, manifest)
    _works(sandbox, root)


def test_leftover_staged_pin_is_removed(sandbox):
    """A staged pin of a killed apply is the deployment's (journaled before it was made): removed first.

    (A pin with that name made by hand is not: tests/kernel/test_confinement.py shows it refused and kept.)
    """
    import signal

    from tests.kernel.test_safety import _counter, _start, _wait_for

    sandbox.cgroup("kill")
    sandbox.cgroups.append(sandbox.cgroup_root / f"{sandbox.id}-kill2")
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{sandbox.id}-kill")
    sandbox.cli("apply", _counter(sandbox, 0))
    manifest = _counter(sandbox, 1)  # a changed source: the program is staged beside the old one
    marker = sandbox.tmp / "paused"
    proc = _start(sandbox, "apply", manifest, env_extra={"BPFDEPLOY_PAUSE_AT": "attach/ingress",
                                                          "BPFDEPLOY_PAUSE_FILE": str(marker)})
    _wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    staged = root / "progs/count_packets__bpfdeploy_new"
    assert staged.exists()
    changes = _actions(sandbox, manifest)
    assert changes["pin/progs/count_packets__bpfdeploy_new"]["action"] == "delete"
    assert "interrupted" in changes["pin/progs/count_packets__bpfdeploy_new"]["reason"]
    sandbox.cli("apply", manifest)
    assert not staged.exists()
    assert not _actions(sandbox, manifest)


def test_a_pin_root_holding_someone_elses_pins_is_refused(sandbox):
    manifest, root = _applied(sandbox)
    subprocess.run(["bpftool", "map", "pin", "pinned", str(root / "maps/traffic"), str(root / "theirs")], check=True)
    proc = sandbox.cli("plan", manifest, check=False)
    assert proc.returncode == 1 and "was not made by bpfdeploy" in proc.stdout + proc.stderr
    (root / "theirs").unlink()


def test_overlapping_pin_roots_are_refused(sandbox):
    manifest, root = _applied(sandbox)
    inner = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-inner
        pin_root: {root}/links
        objects:
          counters:
            source: {Path(__file__).resolve().parents[2]}/bpf/cgroup-counters/counters.bpf.c
    """, "inner.yaml")
    proc = sandbox.cli("apply", inner, check=False)
    assert proc.returncode == 1 and "overlaps deployment" in proc.stdout + proc.stderr
    assert not _actions(sandbox, manifest)
