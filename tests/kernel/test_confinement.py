"""Confinement (issue 17, items 1, 2 and 9): nothing outside the pin root is pinned or removed,
pins bpfdeploy did not make are refused and kept, and destroy keeps directories it did not make.

Every case compares the kernel (program ids, the bpffs tree under the test's directories) before
and after a refused command: "refused" means exit 1 with an error naming the path, and nothing
changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.kernel.conftest import TEST_PIN_BASE, map_values
from tests.kernel.traffic import ECHO

DEFAULT_PIN_BASE = Path("/sys/fs/bpf/bpfdeploy")


def _applied(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    sandbox.cli("apply", manifest)
    return manifest, root


def _outside(sandbox, suffix: str = "outside") -> Path:
    """A bpffs directory of this test outside the deployment's pin root."""
    path = TEST_PIN_BASE / f"{sandbox.id}-{suffix}"
    path.mkdir(parents=True)
    sandbox.pin_roots.append(path)  # removed by the sandbox, also when the test fails
    return path


def _tree(*tops: Path) -> dict[str, str]:
    """Every entry under tops, by lstat: what it is, and for a pin the id of its object."""
    out = {}
    for top in tops:
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                out[path] = "link -> " + os.readlink(path) if os.path.islink(path) else \
                    "dir" if os.path.isdir(path) else "pin"
    return out


def _kernel(*tops: Path) -> tuple:
    """What the kernel holds at the test's directories: objects pinned there (by id), and the tree.

    Other engineers load programs on this host at the same time, so only pins under tops count.
    """
    prefixes = tuple(str(t) + "/" for t in tops)
    held = []
    for kind in ("prog", "map", "link"):
        shown = json.loads(subprocess.run(["bpftool", "-j", "-f", kind, "show"], capture_output=True, text=True,
                                          check=True).stdout or "[]")
        held += sorted((kind, x["id"], x.get("prog_id"), pin) for x in shown for pin in x.get("pinned", ())
                       if pin.startswith(prefixes))
    return held, _tree(*tops)


def _refused(sandbox, manifest: Path, names: str, *tops: Path) -> None:
    """plan, apply and destroy each exit 1 naming `names`, and change nothing."""
    before = _kernel(*tops)
    for command in ("plan", "apply", "destroy"):
        proc = sandbox.cli(command, manifest, check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode == 1, (command, text)
        assert names in text and "Traceback" not in text, (command, text)
        assert "No changes" not in text, (command, text)
    assert _kernel(*tops) == before


def _pin_map(path: Path) -> None:
    subprocess.run(["bpftool", "map", "create", str(path), "type", "array", "key", "4", "value", "4",
                    "entries", "1", "name", "theirs"], check=True)


# ---------------------------------------------------------------- item 1: symlinks under the pin root


def test_a_symlinked_maps_directory_is_refused_and_nothing_leaves_the_pin_root(sandbox):
    manifest, root = _applied(sandbox)
    sandbox.cli("apply", manifest)
    outside = _outside(sandbox)
    os.rename(root / "maps", outside / "maps")  # the map pins move out; maps/ becomes a symlink to them
    os.symlink(outside / "maps", root / "maps")
    _refused(sandbox, manifest, f"{root / 'maps'} is a symlink", root, outside)
    # Put it back: the deployment is whole again, with the map and its contents.
    (root / "maps").unlink()
    os.rename(outside / "maps", root / "maps")
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    before = map_values(root / "maps/traffic")[0]["packets"]
    sandbox.run_in(ECHO.format(n=1), cgroup=sandbox.cgroups[0], netns=sandbox.netns())
    assert map_values(root / "maps/traffic")[0]["packets"] > before


def test_symlinks_anywhere_under_the_pin_root_are_refused(sandbox):
    manifest, root = _applied(sandbox)
    outside = _outside(sandbox)
    _pin_map(outside / "theirs")
    cases = [
        (root / "progs" / "sub", outside),  # a symlinked directory under progs/ was silently ignored
        (root / "links" / "alias", root / "links" / next(os.listdir(root / "links").__iter__())),  # to our own pin
        (root / "maps" / "theirs", outside / "theirs"),  # to a pin outside
        (root / "elsewhere", outside),
    ]
    for link, target in cases:
        os.symlink(target, link)
        try:
            _refused(sandbox, manifest, f"{link} is a symlink", root, outside)
        finally:
            link.unlink()
    assert (outside / "theirs").exists()
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_a_symlink_above_the_pin_root_is_refused_before_anything_is_created(sandbox):
    outside = _outside(sandbox)
    link = TEST_PIN_BASE / f"{sandbox.id}-via"
    os.symlink(outside, link)
    try:
        manifest = sandbox.example("cgroup-counters.yaml")
        data = yaml.safe_load(manifest.read_text())
        data["pin_root"] = str(link / "dep")
        manifest.write_text(yaml.safe_dump(data))
        before = _kernel(outside)
        proc = sandbox.cli("apply", manifest, check=False)
        assert proc.returncode == 1 and f"goes through the symlink {link}" in proc.stdout + proc.stderr
        assert _kernel(outside) == before and not (outside / "dep").exists()
    finally:
        link.unlink()


# ---------------------------------------------------------------- item 2: pins bpfdeploy did not make


def test_a_fresh_pin_root_holding_someone_elses_pin_is_refused_and_the_pin_kept(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    (root / "maps").mkdir(parents=True)
    _pin_map(root / "maps" / "theirs")  # no deployment record exists yet
    _refused(sandbox, manifest, "maps/theirs", root)
    assert (root / "maps" / "theirs").exists() and not (root / "progs").exists()
    (root / "maps" / "theirs").unlink()
    sandbox.cli("apply", manifest)
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_foreign_pins_in_a_live_deployment_are_refused_and_kept(sandbox):
    manifest, root = _applied(sandbox)
    for place in ("maps/theirs", "progs/theirs", "links/theirs", "maps/traffic__bpfdeploy_new", "theirs"):
        _pin_map(root / place)
        try:
            _refused(sandbox, manifest, place, root)
            assert (root / place).exists()
        finally:
            (root / place).unlink()
    assert sandbox.cli_json("plan", manifest)["changes"] is False


def test_a_pin_put_where_the_manifest_wants_one_is_not_taken_over(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    (root / "maps").mkdir(parents=True)
    _pin_map(root / "maps" / "traffic")  # the deployment's own map name, made by someone else
    _refused(sandbox, manifest, "maps/traffic", root)
    (root / "maps" / "traffic").unlink()


# ---------------------------------------------------------------- item 9: directories destroy keeps


def test_destroy_keeps_directories_it_did_not_create_and_removes_those_it_did(sandbox):
    kept = _outside(sandbox, "kept")  # made by the test, before any apply
    made = TEST_PIN_BASE / f"{sandbox.id}-made"
    assert not made.exists()
    sandbox.pin_roots.append(made)
    for pin_root in (kept / "dep", made / "a" / "dep"):
        manifest = sandbox.example("cgroup-counters.yaml")
        data = yaml.safe_load(manifest.read_text())
        data["pin_root"] = str(pin_root)
        manifest.write_text(yaml.safe_dump(data))
        sandbox.cli("apply", manifest)
        assert (pin_root / "maps" / "traffic").exists()
        sandbox.cli("destroy", manifest)
        assert not pin_root.exists()
    assert kept.is_dir()  # not bpfdeploy's
    assert not made.exists()  # bpfdeploy made made/ and made/a for the pin root: both gone


def test_destroy_of_the_last_deployment_keeps_the_default_pin_base(sandbox):
    """The manifest reference says /sys/fs/bpf/bpfdeploy is kept; destroy used to remove it."""
    ours = not DEFAULT_PIN_BASE.exists()
    if ours:
        DEFAULT_PIN_BASE.mkdir()  # someone made it before bpfdeploy ran (here: this test)
    try:
        manifest = sandbox.example("cgroup-counters.yaml")
        data = yaml.safe_load(manifest.read_text())
        pin_root = DEFAULT_PIN_BASE / data["name"]
        data["pin_root"] = str(pin_root)
        manifest.write_text(yaml.safe_dump(data))
        sandbox.pin_roots.append(pin_root)
        sandbox.cli("apply", manifest)
        record = json.loads((sandbox.tmp / "state" / f"{data['name']}.json").read_text())
        assert str(DEFAULT_PIN_BASE) not in record["created_dirs"]  # it was there before: not bpfdeploy's to remove
        sandbox.cli("destroy", manifest)
        assert not pin_root.exists()
        if ours:
            # Made by this test, so no bpfdeploy may remove it. (When it was there already, another
            # deployment that did create it, the fleet tests' for one, may remove it at any moment.)
            assert DEFAULT_PIN_BASE.is_dir()
    finally:
        if ours:
            try:
                DEFAULT_PIN_BASE.rmdir()  # only if still empty: another deployment may use it now
            except OSError:
                pass
        shutil.rmtree(pin_root, ignore_errors=True) if pin_root.exists() else None


def test_status_says_why_a_pin_root_with_a_foreign_pin_cannot_be_compared(sandbox):
    manifest, root = _applied(sandbox)
    _pin_map(root / "maps" / "theirs")
    try:
        proc = sandbox.cli("status", manifest, check=False)
        assert proc.returncode == 3 and "maps/theirs" in proc.stdout and "was not made by bpfdeploy" in proc.stdout
        reply = json.loads(sandbox.cli("status", manifest, "--json", check=False).stdout)
        assert reply["healthy"] is False and any("maps/theirs" in e for e in reply["errors"])
    finally:
        (root / "maps" / "theirs").unlink()
    reply = sandbox.cli_json("status", manifest)
    assert reply["healthy"] is True and reply["errors"] == []
