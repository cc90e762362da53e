"""The reference's complete examples still load: docs and code stay in step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bpfdeploy.manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "manifest.md"
EXAMPLES = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if re.search(r"^version: 1", b, re.M) and re.search(r"^objects:", b, re.M)]


def test_the_reference_has_complete_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("text", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_a_complete_example_in_the_reference_loads(tmp_path, text):
    # Paths in the examples are relative to manifests/; the files they name need not exist here.
    path = tmp_path / "manifests" / "example.yaml"
    path.parent.mkdir()
    path.write_text(text)
    manifest, warnings = load_manifest(path, cgroup_root=tmp_path / "cgroup", files_must_exist=False)
    assert manifest.objects
    assert not [w for w in warnings if w.severity == "error"]
