"""Issue 17 (an independent attack run): each finding without a kernel effect, kept as a test.

Items 1, 2 and 9 change the kernel and are tested in tests/kernel/test_confinement.py; their
planner side (symlinks, unowned and nested pins) is in tests/unit/test_plan.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bpfdeploy.diagnostics import ManifestError
from bpfdeploy.manifest import load_manifest
from bpfdeploy.manifest.checks import build_manifest
from bpfdeploy.manifest.load import load_raw

REPO = Path(__file__).resolve().parents[2]
COUNTERS_SRC = REPO / "bpf" / "cgroup-counters" / "counters.bpf.c"


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    (root / "existing").mkdir(parents=True)
    return root


def manifest(tmp_path: Path, **changes) -> Path:
    data = {"version": 1, "name": "hardening", "objects": {"counters": {"source": str(COUNTERS_SRC)}}}
    data.update(changes)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))  # safe_dump escapes control characters: the YAML is valid
    return path


def errors_of(path: Path, cgroup_root: Path) -> list:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=cgroup_root)
    diags = info.value.diagnostics
    assert all(d.file == str(path) and d.message for d in diags)
    return [d for d in diags if d.severity == "error"]


# ---------------------------------------------------------------- item 4: a pin root with a dot


def test_a_pin_root_with_a_dot_is_one_clear_error_not_a_crash(tmp_path, cgroup_root):
    """bpffs answers EPERM to a lookup of a name with a dot; the symlink check asked it anyway."""
    for value in ("/sys/fs/bpf/a.b/c", "/sys/fs/bpf/bpfdeploy/x.y", "/sys/fs/bpf/../etc"):
        path = manifest(tmp_path, pin_root=value)
        errors = errors_of(path, cgroup_root)
        assert any(d.path == "pin_root" and "may not contain '.' or '..'" in d.message for d in errors), errors
        # The checks alone, schema aside: one diagnostic, nothing raised.
        _, problems = build_manifest(load_raw(path), cgroup_root)
        assert [d.message for d in problems if d.path == "pin_root"] == [
            f"pin_root {value!r} may not contain '.' or '..'"]


# ---------------------------------------------------------------- item 5: control characters


CONTROL = ["\n", "\x00", "\t", "\r", "\x1b", "\x7f"]


@pytest.mark.parametrize("char", CONTROL, ids=repr)
def test_control_characters_are_refused_in_the_pin_root(tmp_path, cgroup_root, char):
    path = manifest(tmp_path, pin_root=f"/sys/fs/bpf/bdt-ctl{char}x")
    errors = errors_of(path, cgroup_root)
    assert any(d.path == "pin_root" and f"U+{ord(char):04X}" in d.message and "control characters" in d.message
               for d in errors), errors


@pytest.mark.parametrize("field,value,where", [
    ("name", "ctl\n", "name"),  # the schema's pattern ends in $, which Python lets match before a final newline
    ("objects", {"counters": {"source": f"{COUNTERS_SRC}\n"}}, "objects.counters.source"),
    ("objects", {"counters": {"source": str(COUNTERS_SRC), "include_dirs": ["/usr\x00/include"]}},
     "objects.counters.include_dirs[0]"),
    ("attachments", [{"program": "count_ingress", "type": "ingress", "cgroup": "existing\n"}], "attachments[0].cgroup"),
    ("attachments", [{"program": "count_ingress", "type": "xdp", "device": "lo\tx"}], "attachments[0].device"),
    ("attachments", [{"name": "a\nb", "program": "count_ingress", "type": "ingress", "cgroup": "existing"}],
     "attachments[0].name"),
], ids=["name", "source", "include_dir", "cgroup", "device", "attachment-name"])
def test_control_characters_are_refused_in_every_name_and_path(tmp_path, cgroup_root, field, value, where):
    path = manifest(tmp_path, **{field: value})
    errors = errors_of(path, cgroup_root)
    assert any(d.path == where and "control characters" in d.message for d in errors), errors
    _, problems = build_manifest(load_raw(path), cgroup_root)  # the checks refuse it too, not only the schema
    assert any(d.path == where and "control characters" in d.message for d in problems), problems


def test_control_characters_in_mapping_keys_and_free_text(tmp_path, cgroup_root):
    path = manifest(tmp_path, description="two\nlines\tare fine here",
                    objects={"counters": {"source": str(COUNTERS_SRC), "programs": {"count\ningress": None}}})
    errors = errors_of(path, cgroup_root)
    assert any("control characters" in d.message and d.path.startswith("objects.counters.programs") for d in errors)
    assert not any(d.path == "description" for d in errors)
