"""Loading and validating manifests: the diagnostics a user sees for each kind of mistake.

Every file in ``tests/fixtures/manifests/bad/`` is one case (one JSON case per file, as pyinfra
keeps its fact tests). Its first lines say what loading it must report:

    # expect: <manifest path> | <part of the message> | <line> [| <part of the hint>]
    # xfail: BUG: <why the code does not do this yet>

``<manifest path>`` is ``-`` for the document itself and ``<line>`` is ``-`` when no line is
known. Every expectation must appear among the diagnostics of the ManifestError. Cgroup paths
resolve under a temporary cgroup root that holds one cgroup, ``existing``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpfdeploy.diagnostics import ManifestError
from bpfdeploy.manifest import load_manifest
from bpfdeploy.manifest.model import DEFAULT_PIN_BASE, AttachMode

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "fixtures" / "manifests" / "bad"
GOOD = sorted((REPO / "manifests").glob("*.yaml"))
COUNTERS_SRC = REPO / "bpf" / "cgroup-counters" / "counters.bpf.c"


@dataclass(frozen=True)
class Expect:
    path: str
    message: str
    line: int | None
    hint: str = ""

    def matches(self, d) -> bool:
        return (d.path == self.path and self.message in d.message and d.line == self.line
                and self.hint in d.hint)


def read_case(file: Path) -> tuple[list[Expect], str]:
    expects, xfail = [], ""
    for text in file.read_text().splitlines():
        if text.startswith("# expect:"):
            fields = [f.strip() for f in text.removeprefix("# expect:").split("|")]
            assert len(fields) in (3, 4), f"{file.name}: bad expect line {text!r}"
            path, message, line = fields[:3]
            expects.append(Expect("" if path == "-" else path, message, None if line == "-" else int(line),
                                  fields[3] if len(fields) == 4 else ""))
        elif text.startswith("# xfail:"):
            xfail = text.removeprefix("# xfail:").strip()
    return expects, xfail


def _cases():
    out = []
    for file in sorted(BAD.glob("*.yaml")):
        _, xfail = read_case(file)
        marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
        out.append(pytest.param(file, id=file.stem, marks=marks))
    return out


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    (root / "existing").mkdir(parents=True)
    return root


def load_errors(path: Path, cgroup_root: Path) -> tuple:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=cgroup_root)
    return info.value.diagnostics


def _show(diagnostics) -> str:
    return "\n".join(f"  {d.path or '-'} | {d.message} | {d.line} | {d.hint}" for d in diagnostics)


def test_there_are_bad_manifest_cases():
    assert len(list(BAD.glob("*.yaml"))) >= 25


@pytest.mark.parametrize("file", _cases())
def test_bad_manifest(file: Path, cgroup_root: Path):
    expects, _ = read_case(file)
    assert expects, f"{file.name} has no '# expect:' line"
    diagnostics = load_errors(file, cgroup_root)
    assert all(d.file == str(file) for d in diagnostics)
    missing = [e for e in expects if not any(e.matches(d) for d in diagnostics)]
    assert not missing, f"{file.name}: expected {missing}\nfound:\n{_show(diagnostics)}"


# ---------------------------------------------------------------- every problem at once


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_schema_and_semantic_problems_are_reported_together(tmp_path, cgroup_root):
    path = write(tmp_path, f"""
        version: 2
        name: "not a name"
        pin_root: /tmp/pins
        objects:
          counters:
            source: {COUNTERS_SRC}
            cflag: []
          gone: {{source: missing.bpf.c}}
        atachments: []
        maps:
          traffic:
            entries:
              - {{key: true, value: 1}}
    """)
    diagnostics = load_errors(path, cgroup_root)
    # pin_root is refused twice (schema pattern, then the semantic check); every problem is there.
    assert {(d.path, d.line) for d in diagnostics} == {
        ("version", 1), ("name", 2), ("pin_root", 3), ("objects.counters.cflag", 7), ("objects.gone.source", 8),
        ("atachments", 9), ("maps.traffic.entries[0].key", 13),
    }, _show(diagnostics)
    assert [d.line for d in diagnostics] == sorted(d.line for d in diagnostics)  # in file order


def test_all_semantic_problems_are_reported_together(tmp_path, cgroup_root):
    path = write(tmp_path, f"""
        version: 1
        name: several
        pin_root: /sys/fs/bpf//
        objects:
          counters: {{source: {COUNTERS_SRC}, programs: {{count_ingress: {{pin: c}}}}}}
          again: {{source: {COUNTERS_SRC}, programs: {{count_egress: {{pin: c}}}}}}
          gone: {{source: missing.bpf.c}}
        attachments:
          - {{program: c, type: ingres, cgroup: existing}}
          - {{program: c, type: ingress, cgroup: not-there}}
          - {{program: c, type: egress, cgroup: existing, name: twice}}
          - {{program: c, type: egress, cgroup: existing, name: twice}}
    """)
    diagnostics = load_errors(path, cgroup_root)
    assert sorted((d.path, d.line) for d in diagnostics) == [
        ("attachments[0].type", 9), ("attachments[1].cgroup", 10), ("attachments[3]", 12),
        ("objects.again.programs.count_egress", 6), ("objects.gone.source", 7), ("pin_root", 3),
    ], _show(diagnostics)


def test_a_rejected_cgroup_path_causes_no_follow_up_errors(tmp_path, cgroup_root):
    path = write(tmp_path, f"""
        version: 1
        name: cascade
        objects:
          counters: {{source: {COUNTERS_SRC}}}
        attachments:
          - {{program: count_ingress, type: ingress, cgroup: ../up}}
          - {{program: count_ingress, type: ingress, cgroup: /elsewhere}}
    """)
    diagnostics = load_errors(path, cgroup_root)
    assert [d.path for d in diagnostics] == ["attachments[0].cgroup", "attachments[1].cgroup"], _show(diagnostics)


def test_cgroup_symlink_leading_outside_the_root_is_refused(tmp_path, cgroup_root):
    outside = tmp_path / "outside"
    outside.mkdir()
    (cgroup_root / "sneaky").symlink_to(outside)
    path = write(tmp_path, f"""
        version: 1
        name: symlink
        objects:
          counters: {{source: {COUNTERS_SRC}}}
        attachments:
          - {{program: count_ingress, type: ingress, cgroup: sneaky}}
    """)
    (d,) = load_errors(path, cgroup_root)
    assert (d.path, d.line) == ("attachments[0].cgroup", 6)
    assert "leads outside the cgroup v2 mount" in d.message


def test_missing_manifest_file(tmp_path, cgroup_root):
    (d,) = load_errors(tmp_path / "nope.yaml", cgroup_root)
    assert d.message == "manifest file not found" and d.file == str(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- manifests that load


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_example_manifests_load(path: Path, cgroup_root: Path, tmp_path: Path):
    text = path.read_text()
    if "../build/" in text:
        # The uprobe examples trace programs the set-up builds; the unit tier must not need them, so
        # a copy of the manifest names stand-ins (an ELF file each) and the repository's sources.
        stand_in = tmp_path / "build"
        stand_in.mkdir()
        for line in text.splitlines():
            if "binary: ../build/" in line:
                (stand_in / line.split("../build/", 1)[1].strip()).write_bytes(Path("/bin/true").read_bytes())
        text = text.replace("../build/", f"{stand_in}/").replace("../bpf/", f"{REPO / 'bpf'}/")
        path = tmp_path / path.name
        path.write_text(text)
    manifest, warnings = load_manifest(path, cgroup_root=cgroup_root)
    assert warnings == []
    assert manifest.pin_root == Path(DEFAULT_PIN_BASE) / manifest.name
    assert manifest.objects and all(o.source is not None and o.source.is_file() for o in manifest.objects)
    for att in manifest.attachments:
        if att.cgroup is not None:  # create: true, so the missing cgroup is fine
            assert att.cgroup.create and cgroup_root in att.cgroup.path.parents


def test_sockmap_example_model(cgroup_root):
    manifest, _ = load_manifest(REPO / "manifests" / "sockmap-redirect.yaml", cgroup_root=cgroup_root)
    assert [(o.name, [p.pin for p in o.programs]) for o in manifest.objects] == [
        ("sockops", ["sockops"]), ("sockredir", ["sockredir"])]
    by_name = {a.name: a for a in manifest.attachments}
    assert set(by_name) == {"sockops-on-cgroup", "redirect-verdict"}
    assert by_name["sockops-on-cgroup"].cgroup.path == cgroup_root / "bpfdeploy-sockmap-demo"
    assert by_name["redirect-verdict"].map == "sock_ops_map"
    assert all(a.mode is AttachMode.LINK for a in manifest.attachments)
    # Lines are kept for diagnostics found after loading (in desired.py).
    assert manifest.line_of(by_name["redirect-verdict"].where) == 25


def test_default_attachment_name_and_existing_cgroup(tmp_path, cgroup_root):
    path = write(tmp_path, f"""
        version: 1
        name: defaults
        pin_root: /sys/fs/bpf/custom/defaults
        objects:
          counters: {{source: {COUNTERS_SRC}}}
        attachments:
          - {{program: count_ingress, type: cgroup_inet_ingress, cgroup: existing, mode: multi}}
    """)
    manifest, warnings = load_manifest(path, cgroup_root=cgroup_root)
    assert warnings == [] and manifest.pin_root == Path("/sys/fs/bpf/custom/defaults")
    (att,) = manifest.attachments
    assert att.name == "count_ingress-ingress-existing"  # long type names are shown by their short name
    assert att.cgroup.path == cgroup_root / "existing" and not att.cgroup.create
    assert att.mode is AttachMode.MULTI and att.attach_type.name == "cgroup_inet_ingress"


def test_build_options_on_a_prebuilt_object_are_a_warning(tmp_path, cgroup_root):
    (tmp_path / "prebuilt.bpf.o").write_bytes(b"\x7fELF")
    path = write(tmp_path, """
        version: 1
        name: prebuilt
        objects:
          counters:
            file: prebuilt.bpf.o
            cflags: [-DDEBUG]
    """)
    manifest, warnings = load_manifest(path, cgroup_root=cgroup_root)
    assert manifest.objects[0].file == tmp_path / "prebuilt.bpf.o"
    assert [(w.severity, w.path, w.line) for w in warnings] == [("warning", "objects.counters.cflags", 6)]
