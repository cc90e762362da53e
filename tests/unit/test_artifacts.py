"""Artifact directories: the index, digest checks, signatures, and the digest a local build agrees with.

No clang and no kernel: the "objects" are files of bytes (verify never opens them; libbpf
does, later, in workflow.prepare), and their build digests are computed as build.py does.
Signatures are real ssh-keygen ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bpfdeploy import artifacts as arts
from bpfdeploy.artifacts import ArtifactError, SignatureState
from bpfdeploy.build import BuiltObject, ObjectOrigin, file_digest, inputs_digest, object_digest
from bpfdeploy.manifest import load_manifest

HEADER = "#define VALUE 7\n"
SOURCE = '#include "common.h"\n#include <linux/bpf.h>\nint x = VALUE;\n'


def _tree(root: Path, header: str = HEADER) -> Path:
    """A manifest with a source object (with a local header in an include dir) and a prebuilt file object."""
    (root / "src").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "src" / "prog.bpf.c").write_text(SOURCE)
    (root / "include" / "common.h").write_text(header)
    (root / "prebuilt.o").write_bytes(b"\x7fELF prebuilt bytes")
    manifest = root / "deploy.yaml"
    manifest.write_text(textwrap.dedent("""\
        version: 1
        name: art-test
        objects:
          prog:
            source: src/prog.bpf.c
            include_dirs: [include]
            defines: {MODE: 2}
          pre:
            file: prebuilt.o
        """))
    return manifest


def _load(manifest: Path, **kw):
    m, _warnings = load_manifest(manifest, cgroup_root=manifest.parent, **kw)
    return m


def _built(manifest) -> dict[str, BuiltObject]:
    """What build_all would return, without clang: the source's "object" is a stand-in file."""
    out = {}
    for obj in manifest.objects:
        if obj.file is not None:
            out[obj.name] = BuiltObject(obj.name, obj.file, object_digest(obj), False)
        else:
            fake = manifest.file.parent / f"{obj.name}.built.o"
            fake.write_bytes(b"\x7fELF built from " + obj.source.read_bytes())
            out[obj.name] = BuiltObject(obj.name, fake, object_digest(obj), True)
    return out


@pytest.fixture
def built_dir(tmp_path):
    """(manifest path, artifact directory) written by write_artifacts."""
    manifest_path = _tree(tmp_path / "controller")
    manifest = _load(manifest_path)
    out = tmp_path / "out"
    arts.write_artifacts(manifest, _built(manifest), out)
    return manifest_path, out


def _ssh_key(tmp_path: Path, name: str, principal: str) -> tuple[Path, Path]:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    signers = tmp_path / f"{name}.allowed"
    kind, blob = (tmp_path / f"{name}.pub").read_text().split()[:2]
    signers.write_text(f"{principal} {kind} {blob}\n")
    return key, signers


needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) missing")


# -- the digest -------------------------------------------------------------------------------

def test_the_build_digest_does_not_depend_on_where_the_tree_is(tmp_path):
    a = _load(_tree(tmp_path / "a"))
    b = _load(_tree(tmp_path / "elsewhere" / "b"))
    assert [object_digest(o) for o in a.objects] == [object_digest(o) for o in b.objects]
    changed = _load(_tree(tmp_path / "c", header="#define VALUE 8\n"))
    assert object_digest(changed.objects[0]) != object_digest(a.objects[0])  # a header's bytes count
    assert object_digest(changed.objects[1]) == object_digest(a.objects[1])


def test_the_digest_still_sees_a_define_and_the_include_layout(tmp_path):
    base = _tree(tmp_path / "a")
    a = _load(base)
    text = base.read_text()
    base.write_text(text.replace("MODE: 2", "MODE: 3"))
    assert inputs_digest(_load(base).objects[0]) != inputs_digest(a.objects[0])
    base.write_text(text)
    (base.parent / "include2").mkdir()
    shutil.copy(base.parent / "include" / "common.h", base.parent / "include2" / "common.h")
    base.write_text(text.replace("include_dirs: [include]", "include_dirs: [include2]"))
    assert inputs_digest(_load(base).objects[0]) != inputs_digest(a.objects[0])


# -- writing and reading ----------------------------------------------------------------------

def test_the_index_records_every_object_with_its_digests(built_dir):
    manifest_path, out = built_dir
    index = json.loads((out / "artifacts.json").read_text())
    assert index["format"] == arts.FORMAT and index["deployment"] == "art-test"
    assert index["bpfdeploy_version"]
    assert index["manifest"]["sha256"] == arts.sha256_file(manifest_path)
    assert set(index["objects"]) == {"prog", "pre"}
    prog = index["objects"]["prog"]
    assert prog["kind"] == "source" and prog["file"] == "objects/prog.o"
    assert prog["sha256"] == arts.sha256_file(out / "objects" / "prog.o")
    assert prog["build_digest"] == object_digest(_load(manifest_path).objects[0])
    assert index["objects"]["pre"]["kind"] == "file"
    assert (out / "objects" / "pre.o").read_bytes() == (manifest_path.parent / "prebuilt.o").read_bytes()


def test_artifacts_give_the_digests_a_local_build_records(built_dir, tmp_path):
    manifest_path, out = built_dir
    # The target has the manifest only, somewhere else: no sources, no prebuilt file.
    target = tmp_path / "target"
    target.mkdir()
    shutil.copy(manifest_path, target / "deploy.yaml")
    manifest = _load(target / "deploy.yaml", objects_must_exist=False)
    found = arts.read_artifacts(out)
    provenance = arts.verify(found, manifest)
    assert provenance.signature is SignatureState.UNSIGNED
    objects = arts.built_objects(found, manifest, tmp_path / "store")
    local = _load(manifest_path)
    assert {n: b.digest for n, b in objects.items()} == {o.name: object_digest(o) for o in local.objects}
    assert all(b.origin is ObjectOrigin.ARTIFACTS for b in objects.values())
    # What is loaded is a private copy of the checked bytes, named by their sha256.
    for name, b in objects.items():
        assert b.path.parent == tmp_path / "store" and b.path.read_bytes() == (out / "objects" / f"{name}.o").read_bytes()
        assert b.path.name == arts.sha256_file(b.path) + ".o"


def test_an_object_swapped_after_the_check_is_not_loaded(built_dir, tmp_path):
    manifest_path, out = built_dir
    manifest = _load(manifest_path)
    found = arts.read_artifacts(out)
    arts.verify(found, manifest)
    (out / "objects" / "prog.o").write_bytes(b"\x7fELF swapped in after verify")
    with pytest.raises(ArtifactError) as err:
        arts.built_objects(found, manifest, tmp_path / "store")
    assert "changed while it was checked" in err.value.diagnostics[0].message
    assert not list((tmp_path / "store").glob("*.o")) or all(
        p.read_bytes() != b"\x7fELF swapped in after verify" for p in (tmp_path / "store").glob("*.o"))


def test_a_changed_object_is_refused_naming_file_object_and_both_digests(built_dir):
    manifest_path, out = built_dir
    obj = out / "objects" / "prog.o"
    expected = arts.sha256_file(obj)
    data = bytearray(obj.read_bytes())
    data[5] ^= 1  # one byte
    obj.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    (d,) = err.value.diagnostics
    assert d.file == str(obj) and d.path == "objects.prog"
    assert "'prog'" in d.message and expected in d.message and arts.sha256_file(obj) in d.message
    assert "nothing was changed" in err.value.message


def test_a_missing_object_file_is_refused(built_dir):
    manifest_path, out = built_dir
    (out / "objects" / "pre.o").unlink()
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    assert err.value.diagnostics[0].path == "objects.pre"
    assert "cannot be read" in err.value.diagnostics[0].message


def test_an_object_that_is_not_a_regular_file_is_refused_without_blocking(built_dir):
    import os

    manifest_path, out = built_dir
    obj = out / "objects" / "prog.o"
    obj.unlink()
    os.mkfifo(obj)  # reading it would wait for a writer forever
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    (d,) = err.value.diagnostics
    assert d.file == str(obj) and "not a regular file" in d.message


def test_artifacts_of_another_manifest_are_refused(built_dir):
    manifest_path, out = built_dir
    manifest_path.write_text(manifest_path.read_text() + "description: edited after the build\n")
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    (d,) = err.value.diagnostics
    assert d.path == "manifest.sha256" and d.file == str(out / "artifacts.json")
    assert "another manifest" in d.message and arts.sha256_file(manifest_path) in d.message


def test_a_source_on_the_host_that_differs_from_the_built_one_is_refused(built_dir):
    manifest_path, out = built_dir
    header = manifest_path.parent / "include" / "common.h"
    header.write_text("#define VALUE 9\n")  # edited, artifacts not rebuilt
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    (d,) = err.value.diagnostics
    assert d.file.endswith("prog.bpf.c") and "differs from the one the artifacts were built from" in d.message
    # Without the sources on the host, the artifacts are what is deployed.
    shutil.rmtree(manifest_path.parent / "src")
    shutil.rmtree(manifest_path.parent / "include")
    arts.verify(arts.read_artifacts(out), _load(manifest_path, objects_must_exist=False))


def test_an_index_that_lies_about_a_build_digest_is_refused(built_dir):
    manifest_path, out = built_dir
    index = json.loads((out / "artifacts.json").read_text())
    index["objects"]["prog"]["build_digest"] = "0" * 64
    (out / "artifacts.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path))
    assert err.value.diagnostics[0].path == "objects.prog.build_digest"


@pytest.mark.parametrize("edit, path", [
    (lambda i: i.update(format="something-else"), "format"),
    (lambda i: i["objects"]["prog"].update(sha256="xyz"), "objects.prog.sha256"),
    (lambda i: i["objects"]["prog"].update(file="../../etc/passwd"), "objects.prog.file"),
    (lambda i: i["objects"]["pre"].update(kind="weird"), "objects.pre.kind"),
    (lambda i: i.update(objects={}), "objects"),
])
def test_a_malformed_index_is_refused_with_the_field(built_dir, edit, path):
    _manifest, out = built_dir
    index = json.loads((out / "artifacts.json").read_text())
    edit(index)
    (out / "artifacts.json").write_text(json.dumps(index))
    with pytest.raises(ArtifactError) as err:
        arts.read_artifacts(out)
    assert path in [d.path for d in err.value.diagnostics]
    assert all(d.file == str(out / "artifacts.json") for d in err.value.diagnostics)


def test_a_directory_without_an_index_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        arts.read_artifacts(tmp_path / "nothing")
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        arts.read_artifacts(tmp_path)


def test_writing_refuses_a_foreign_directory_and_replaces_its_own(built_dir, tmp_path):
    manifest_path, out = built_dir
    manifest = _load(manifest_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(ArtifactError, match="not empty"):
        arts.write_artifacts(manifest, _built(manifest), foreign)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    # Our own directory is written again; objects the manifest no longer has and an old signature go.
    (out / "objects" / "gone.o").write_bytes(b"old")
    (out / "artifacts.json.sig").write_text("old signature")
    arts.write_artifacts(manifest, _built(manifest), out)
    assert sorted(p.name for p in (out / "objects").iterdir()) == ["pre.o", "prog.o"]
    assert not (out / "artifacts.json.sig").exists()


# -- signatures -------------------------------------------------------------------------------

@needs_ssh_keygen
def test_a_good_signature_names_its_principal(built_dir, tmp_path):
    manifest_path, out = built_dir
    key, signers = _ssh_key(tmp_path, "ci", "ci@example.org")
    found = arts.read_artifacts(out)
    arts.sign_artifacts(found, key)
    provenance = arts.verify(found, _load(manifest_path), signers)
    assert provenance.signature is SignatureState.GOOD and provenance.principal == "ci@example.org"
    # Signed, but nobody asked to check: said so, not claimed good.
    assert arts.verify(found, _load(manifest_path)).signature is SignatureState.NOT_CHECKED


@needs_ssh_keygen
def test_a_signature_by_another_key_or_over_a_changed_index_is_refused(built_dir, tmp_path):
    manifest_path, out = built_dir
    key, signers = _ssh_key(tmp_path, "ci", "ci@example.org")
    _other_key, other_signers = _ssh_key(tmp_path, "other", "ci@example.org")
    arts.sign_artifacts(arts.read_artifacts(out), key)
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), _load(manifest_path), other_signers)
    (d,) = err.value.diagnostics
    assert d.file == str(out / "artifacts.json.sig") and "bad signature" in d.message
    # Object and index changed together (digests consistent): only the signature can tell.
    obj = out / "objects" / "pre.o"
    obj.write_bytes(obj.read_bytes() + b"evil")
    index = json.loads((out / "artifacts.json").read_text())
    index["objects"]["pre"]["sha256"] = arts.sha256_file(obj)
    index["objects"]["pre"]["build_digest"] = file_digest(obj.read_bytes())
    (out / "artifacts.json").write_text(json.dumps(index, indent=2) + "\n")
    (manifest_path.parent / "prebuilt.o").unlink()  # so the host's own copy cannot tell either
    manifest = _load(manifest_path, objects_must_exist=False)
    arts.verify(arts.read_artifacts(out), manifest)  # unsigned policy: accepted, as documented
    with pytest.raises(ArtifactError) as err:
        arts.verify(arts.read_artifacts(out), manifest, signers)
    assert "bad signature" in err.value.diagnostics[0].message


@needs_ssh_keygen
def test_the_manifest_can_require_a_signature(built_dir, tmp_path):
    manifest_path, out = built_dir
    key, signers = _ssh_key(tmp_path, "ci", "ci@example.org")
    manifest_path.write_text(manifest_path.read_text() + "artifacts:\n  require_signature: true\n")
    manifest = _load(manifest_path)
    arts.write_artifacts(manifest, _built(manifest), out)  # rebuilt for the edited manifest, unsigned
    found = arts.read_artifacts(out)
    with pytest.raises(ArtifactError) as err:  # required, but no allowed_signers anywhere
        arts.verify(found, manifest)
    (d,) = err.value.diagnostics
    assert d.path == "artifacts.require_signature" and d.line == 11 and d.file == str(manifest_path)
    with pytest.raises(ArtifactError) as err:  # an allowed_signers file, but no signature
        arts.verify(found, manifest, signers)
    assert "not signed" in err.value.diagnostics[0].message
    arts.sign_artifacts(found, key)
    assert arts.verify(found, manifest, signers).signature is SignatureState.GOOD


@needs_ssh_keygen
def test_allowed_signers_in_the_manifest_is_relative_to_it(built_dir, tmp_path):
    manifest_path, out = built_dir
    key, signers = _ssh_key(tmp_path, "ci", "ci@example.org")
    shutil.copy(signers, manifest_path.parent / "allowed_signers")
    manifest_path.write_text(manifest_path.read_text() + "artifacts:\n  allowed_signers: allowed_signers\n")
    manifest = _load(manifest_path)
    assert manifest.artifacts.allowed_signers == manifest_path.parent / "allowed_signers"
    found = arts.write_artifacts(manifest, _built(manifest), out)
    with pytest.raises(ArtifactError, match="cannot be used"):
        arts.verify(found, manifest)  # allowed_signers given: a signature is required
    arts.sign_artifacts(found, key)
    assert arts.verify(found, manifest).principal == "ci@example.org"


def test_the_artifacts_section_is_checked_by_the_schema(tmp_path):
    from bpfdeploy.diagnostics import ManifestError

    manifest_path = _tree(tmp_path)
    manifest_path.write_text(manifest_path.read_text() + "artifacts:\n  require_signatures: yes\n")
    with pytest.raises(ManifestError) as err:
        _load(manifest_path)
    assert any(d.path.startswith("artifacts") for d in err.value.diagnostics)


# -- the prepared-manifest cache ----------------------------------------------------------------

def test_the_prepared_cache_keeps_local_builds_and_artifact_sets_apart(tmp_path):
    from bpfdeploy import prepared_cache
    from bpfdeploy.workflow import Prepared

    manifest_path = _tree(tmp_path)
    manifest = _load(manifest_path)
    cache = tmp_path / "cache"
    prepared_cache.store(manifest_path, cache, Prepared(manifest, {}, None, ("local build",)))
    prepared_cache.store(manifest_path, cache, Prepared(manifest, {}, None, ("artifacts A",)), b"A")
    assert prepared_cache.load(manifest_path, cache).warnings == ("local build",)
    assert prepared_cache.load(manifest_path, cache, b"A").warnings == ("artifacts A",)
    assert prepared_cache.load(manifest_path, cache, b"B") is None


# -- the command line ---------------------------------------------------------------------------

def test_allowed_signers_without_artifacts_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "plan", str(_tree(tmp_path)),
                           "--allowed-signers", str(tmp_path / "x")], capture_output=True, text=True)
    assert proc.returncode == 64 and "--allowed-signers needs --artifacts" in proc.stderr


# -- bpfdeploy build (clang, no kernel) -----------------------------------------------------------

COUNTER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("cgroup_skb/ingress")
int count_in(struct __sk_buff *skb) { return 1; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang missing")
def test_build_needs_the_sources_not_the_targets_cgroups_and_refuses_a_misfit_on_the_controller(tmp_path,
                                                                                               monkeypatch):
    from bpfdeploy.diagnostics import ManifestError
    from bpfdeploy.workflow import build_artifacts

    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "count.bpf.c").write_text(COUNTER)
    manifest = tmp_path / "m.yaml"
    text = textwrap.dedent("""\
        version: 1
        name: controller-build
        objects:
          count:
            source: count.bpf.c
        attachments:
          - program: PROGRAM
            type: ingress
            cgroup: /sys/fs/cgroup/unified/only-on-the-target-host
        """)
    manifest.write_text(text.replace("PROGRAM", "count_in"))
    output = build_artifacts(manifest, tmp_path / "out")
    assert output.built == ("count",) and not output.signed
    assert arts.verify(output.artifacts, load_manifest(manifest, files_must_exist=False)[0]).objects[0][0] == "count"

    manifest.write_text(text.replace("PROGRAM", "count_out"))
    with pytest.raises(ManifestError) as err:
        build_artifacts(manifest, tmp_path / "out2")
    assert any("count_out" in d.message and d.line == 7 for d in err.value.diagnostics)
    assert not (tmp_path / "out2" / "artifacts.json").exists()
