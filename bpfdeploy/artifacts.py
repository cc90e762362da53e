"""Build once, deploy everywhere: a directory of built objects with their content digests.

``bpfdeploy build MANIFEST --out DIR`` (``workflow.build_artifacts``) writes::

    DIR/artifacts.json         the index: format, bpfdeploy version, deployment name, the manifest's
                               sha256, and per object its file, the sha256 of its bytes, its build digest
                               and the parts that digest is made of
    DIR/objects/<object>.o     every object of the manifest (built by clang, or the prebuilt file)
    DIR/artifacts.json.sig     with --sign-key: ``ssh-keygen -Y sign -n bpfdeploy`` over the index

A host given the directory (``plan/apply --artifacts DIR``, ``workflow.prepare(artifacts=DIR)``)
loads those files instead of building, so no clang runs there. Before any object is opened
(libbpf parses it) or anything changes, ``verify`` checks: the manifest's bytes against the
index, every object's sha256, each build digest against its recorded parts (and against the
host's own sources or prebuilt files when they are there), and the signature when the
manifest or the caller requires one. Every problem is collected and names the file, the
object and the expected and found digests.

The build digest an artifact brings is the one a local build of the same inputs records
(``build.py`` hashes no absolute path), so a host that built locally and a host that got
artifacts agree on "no changes".
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from bpfdeploy import __version__
from bpfdeploy.build import (BuiltObject, InputRefused, ObjectOrigin, hash_input, inputs_digest, prebuilt_digest,
                             read_input, source_digest)
from bpfdeploy.diagnostics import BpfdeployError, Diagnostic, HostError
from bpfdeploy.manifest.model import Manifest
from bpfdeploy.model.frozen import frozen

FORMAT = "bpfdeploy-artifacts-1"
INDEX_NAME = "artifacts.json"
SIGNATURE_NAME = INDEX_NAME + ".sig"
OBJECTS_DIR = "objects"
NAMESPACE = "bpfdeploy"  # ssh-keygen -Y sign/verify -n: a signature made for another purpose does not count
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BUILD_HINT = "build the artifacts again from this manifest: bpfdeploy build MANIFEST --out DIR"


class ArtifactError(BpfdeployError):
    """Artifacts that cannot be used: missing, changed, built from another manifest, or badly signed."""


class ObjectKind(enum.Enum):
    SOURCE = "source"  # built by clang from C
    FILE = "file"  # a prebuilt ELF object of the manifest, copied


class SignatureState(enum.Enum):
    GOOD = "good"  # verified with an allowed_signers file
    UNSIGNED = "unsigned"  # no signature, and none was required
    NOT_CHECKED = "not checked"  # signed, but no allowed_signers file was given to check it with


@frozen
class ArtifactObject:
    """One object of an artifact directory, as its index records it."""

    name: str  # object name in the manifest
    path: Path  # the ELF file (absolute, inside the directory)
    sha256: str  # of the file's bytes
    digest: str  # the build digest, as a local build of the same inputs records it
    kind: ObjectKind
    inputs: str | None = None  # SOURCE: build.inputs_digest of the source tree
    clang: str | None = None  # SOURCE: build.clang_identity() on the building host
    btf: str | None = None  # SOURCE with vmlinux_h: build.btf_identity() on the building host


@frozen
class ArtifactSet:
    """An artifact directory's index, read but not yet verified."""

    directory: Path
    index: Path
    index_bytes: bytes  # exactly what the signature covers
    deployment: str
    manifest_sha256: str
    manifest_name: str  # the manifest's file name on the building host (for messages)
    bpfdeploy_version: str
    objects: tuple[ArtifactObject, ...]

    @property
    def signature(self) -> Path:
        return self.directory / SIGNATURE_NAME

    def object(self, name: str) -> ArtifactObject | None:
        return next((o for o in self.objects if o.name == name), None)

    def fingerprint(self) -> bytes:
        """Tells artifact sets apart (the prepared-manifest cache keys on it); not a check."""
        return hashlib.sha256(str(self.directory).encode() + b"\0" + self.index_bytes).hexdigest().encode()


@frozen
class Provenance:
    """Where a deployment's objects came from, once verified; plans show it."""

    directory: Path
    signature: SignatureState
    principal: str | None  # who signed (from allowed_signers), when the signature is good
    allowed_signers: Path | None
    bpfdeploy_version: str  # the version that built the artifacts
    objects: tuple[tuple[str, str, str], ...]  # (object, sha256 of the file, build digest)

    def to_json(self) -> dict:
        return {"directory": str(self.directory), "signature": self.signature.value, "principal": self.principal,
                "allowed_signers": str(self.allowed_signers) if self.allowed_signers else None,
                "built_by": f"bpfdeploy {self.bpfdeploy_version}",
                "objects": [{"object": n, "sha256": s, "build_digest": d} for n, s, d in self.objects]}


@frozen
class BuildOutput:
    """What ``write_artifacts`` (and ``sign_artifacts``) made."""

    artifacts: ArtifactSet
    built: tuple[str, ...]  # objects clang built in this run (the rest came from the build cache or are prebuilt)
    signed: bool


def sha256_file(path: Path) -> str:
    """sha256 of a regular file within the input limit (build.InputRefused otherwise; a FIFO never blocks)."""
    h = hashlib.sha256()
    hash_input(h, path)
    return h.hexdigest()


# -- writing (the controller) -------------------------------------------------------------------

def write_artifacts(manifest: Manifest, built: dict[str, BuiltObject], out: Path) -> ArtifactSet:
    """Copy every built object into ``out`` and write the index. A signature left from before is removed.

    ``out`` may be new, empty or an artifact directory written before (its objects are replaced);
    anything else is refused rather than written into.
    """
    from bpfdeploy.build import btf_identity, clang_identity

    out = out.absolute()
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / INDEX_NAME).is_file():
        raise ArtifactError(f"--out {out} is not empty and holds no {INDEX_NAME}: refusing to write into it",
                            (Diagnostic("choose a new or empty directory, or one written by bpfdeploy build before",
                                        str(out)),))
    objects_dir = out / OBJECTS_DIR
    objects_dir.mkdir(parents=True, exist_ok=True)
    (out / SIGNATURE_NAME).unlink(missing_ok=True)  # it signed the index about to be replaced
    entries = {}
    keep = set()
    clang_id = clang_identity()
    for obj in manifest.objects:
        b = built[obj.name]
        target = objects_dir / f"{obj.name}.o"
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        shutil.copyfile(b.path, tmp)
        tmp.replace(target)
        keep.add(target.name)
        entry = {"file": f"{OBJECTS_DIR}/{target.name}", "sha256": sha256_file(target), "build_digest": b.digest}
        if obj.file is not None:
            entry["kind"] = ObjectKind.FILE.value
        else:
            entry.update(kind=ObjectKind.SOURCE.value, inputs=inputs_digest(obj), clang=clang_id,
                         btf=btf_identity() if obj.vmlinux_h else None)
            if source_digest(entry["inputs"], clang_id, entry["btf"]) != b.digest:
                # The source changed between the build and now: an index made from it would lie.
                raise ArtifactError(f"object {obj.name!r}: {obj.source} changed while it was built; run the build again")
        entries[obj.name] = entry
    for stale in objects_dir.glob("*.o"):  # objects of an earlier manifest in the same directory
        if stale.name not in keep:
            stale.unlink()
    index = {"format": FORMAT, "bpfdeploy_version": __version__, "deployment": manifest.name,
             "manifest": {"file": manifest.file.name, "sha256": sha256_file(manifest.file)},
             "objects": dict(sorted(entries.items()))}
    data = (json.dumps(index, indent=2, sort_keys=False) + "\n").encode()  # ASCII: json escapes the rest
    tmp = out / f".{INDEX_NAME}.tmp{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(out / INDEX_NAME)
    return read_artifacts(out)


def sign_artifacts(artifacts: ArtifactSet, key: Path) -> Path:
    """``ssh-keygen -Y sign -n bpfdeploy -f KEY`` over the index; returns the signature file."""
    from bpfdeploy.kernel import runner

    _need_ssh_keygen()
    if not key.is_file():
        raise ArtifactError(f"signing key {key} not found", (Diagnostic("expected an ssh private key file "
                                                                         "(ssh-keygen -t ed25519 -f KEY)", str(key)),))
    artifacts.signature.unlink(missing_ok=True)
    result = runner.run(["ssh-keygen", "-q", "-Y", "sign", "-n", NAMESPACE, "-f", str(key), str(artifacts.index)])
    if result.returncode != 0 or not artifacts.signature.is_file():
        artifacts.signature.unlink(missing_ok=True)
        raise ArtifactError(f"ssh-keygen could not sign {artifacts.index} with {key}: "
                            f"{result.error_text() or f'exit {result.returncode}'}",
                            (Diagnostic("expected an ssh private key without a passphrase (ssh-keygen gets no "
                                        "terminal to ask for one)", str(key)),))
    return artifacts.signature


def _need_ssh_keygen() -> None:
    if shutil.which("ssh-keygen") is None:
        raise HostError("ssh-keygen is not installed: signatures need it (Debian package openssh-client)")


# -- reading and verifying (the target) ---------------------------------------------------------

def read_artifacts(directory: Path) -> ArtifactSet:
    """Parse an artifact directory's index. Raises ArtifactError naming every malformed field."""
    directory = directory.absolute()
    index = directory / INDEX_NAME
    if not directory.is_dir():
        raise ArtifactError(f"artifacts directory {directory} not found",
                            (Diagnostic("expected a directory made by bpfdeploy build MANIFEST --out DIR",
                                        str(directory)),))
    try:
        data_bytes = read_input(index)
        data = json.loads(data_bytes.decode("ascii"))
    except FileNotFoundError:
        raise ArtifactError(f"{index} not found: {directory} is not an artifact directory",
                            (Diagnostic("expected a directory made by bpfdeploy build MANIFEST --out DIR",
                                        str(index)),)) from None
    except (OSError, InputRefused, UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{index} cannot be read: {exc}",
                            (Diagnostic(f"not a bpfdeploy artifact index: {exc}", str(index)),)) from None
    problems: list[Diagnostic] = []

    def bad(path: str, message: str) -> None:
        problems.append(Diagnostic(message, str(index), path))

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ArtifactError(f"{index} is not a bpfdeploy artifact index",
                            (Diagnostic(f"expected format {FORMAT!r}, found {found!r}", str(index), "format"),))
    manifest = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
    if not _HEX64.match(str(manifest.get("sha256", ""))):
        bad("manifest.sha256", "expected the manifest's sha256 (64 hex digits)")
    if not isinstance(data.get("deployment"), str):
        bad("deployment", "expected the deployment's name")
    objects = []
    raw_objects = data.get("objects")
    if not isinstance(raw_objects, dict) or not raw_objects:
        bad("objects", "expected a mapping of object name to object")
        raw_objects = {}
    for name, entry in raw_objects.items():
        where = f"objects.{name}"
        if not isinstance(entry, dict):
            bad(where, "expected a mapping with file, sha256, build_digest and kind")
            continue
        rel = entry.get("file")
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts or "\0" in rel:
            bad(where + ".file", f"expected a path inside {directory}, found {rel!r}")
            continue
        try:
            kind = ObjectKind(entry.get("kind"))
        except ValueError:
            bad(where + ".kind", f"expected 'source' or 'file', found {entry.get('kind')!r}")
            continue
        for key in ("sha256", "build_digest") + (("inputs",) if kind is ObjectKind.SOURCE else ()):
            if not _HEX64.match(str(entry.get(key, ""))):
                bad(f"{where}.{key}", f"expected a sha256 (64 hex digits), found {entry.get(key)!r}")
        if kind is ObjectKind.SOURCE and not isinstance(entry.get("clang"), str):
            bad(where + ".clang", "expected the identity of the clang that built it")
        objects.append(ArtifactObject(name=str(name), path=directory / rel, sha256=str(entry.get("sha256")),
                                      digest=str(entry.get("build_digest")), kind=kind, inputs=entry.get("inputs"),
                                      clang=entry.get("clang"), btf=entry.get("btf")))
    if problems:
        raise ArtifactError(f"{index}: {len(problems)} problem(s)", tuple(problems))
    return ArtifactSet(directory=directory, index=index, index_bytes=data_bytes, deployment=data["deployment"],
                       manifest_sha256=manifest["sha256"], manifest_name=str(manifest.get("file", "")),
                       bpfdeploy_version=str(data.get("bpfdeploy_version", "?")), objects=tuple(objects))


def verify(artifacts: ArtifactSet, manifest: Manifest, allowed_signers: Path | None = None) -> Provenance:
    """Check the artifacts against the manifest (and the signature, when required) before any use.

    ``allowed_signers`` (the caller's, e.g. --allowed-signers) takes the place of the manifest's
    ``artifacts.allowed_signers``; with either, a good signature is required, and also when the
    manifest sets ``artifacts.require_signature``. Raises ArtifactError with every problem.
    """
    problems: list[Diagnostic] = []
    index = str(artifacts.index)
    found_manifest = sha256_file(manifest.file)
    if found_manifest != artifacts.manifest_sha256:
        problems.append(Diagnostic(
            f"the artifacts were built from another manifest ({artifacts.manifest_name or '?'}): the index records "
            f"manifest sha256 {artifacts.manifest_sha256}, {manifest.file} has {found_manifest}",
            index, "manifest.sha256", hint=_BUILD_HINT))
    for obj in manifest.objects:
        art = artifacts.object(obj.name)
        if art is None:
            problems.append(Diagnostic(f"object {obj.name!r} of {manifest.file} is not in the artifacts",
                                       index, f"objects.{obj.name}", hint=_BUILD_HINT))
            continue
        problems += _check_object(obj, art, artifacts)
    for art in artifacts.objects:
        if not any(o.name == art.name for o in manifest.objects):
            problems.append(Diagnostic(f"object {art.name!r} of the artifacts is not in {manifest.file}",
                                       index, f"objects.{art.name}", hint=_BUILD_HINT))
    state, principal, signers = _check_signature(artifacts, manifest, allowed_signers, problems)
    if problems:
        raise ArtifactError(f"the artifacts in {artifacts.directory} cannot be used; nothing was changed",
                            tuple(problems))
    return Provenance(artifacts.directory, state, principal, signers, artifacts.bpfdeploy_version,
                      tuple((a.name, a.sha256, a.digest) for a in sorted(artifacts.objects, key=lambda a: a.name)))


def _check_object(obj, art: ArtifactObject, artifacts: ArtifactSet) -> list[Diagnostic]:
    where = f"objects.{obj.name}"
    out: list[Diagnostic] = []
    try:
        found = sha256_file(art.path)
    except (OSError, InputRefused) as exc:
        why = exc.reason if isinstance(exc, InputRefused) else exc.strerror or exc
        return [Diagnostic(f"object {obj.name!r}: artifact file {art.path} cannot be read: {why}",
                           str(art.path), where, hint=_BUILD_HINT)]
    if found != art.sha256:
        out.append(Diagnostic(f"object {obj.name!r}: artifact file {art.path} has sha256 {found}, "
                              f"expected {art.sha256} (recorded in {artifacts.index})", str(art.path), where,
                              hint="the file was changed after bpfdeploy build; " + _BUILD_HINT))
        return out
    expected_kind = ObjectKind.FILE if obj.file is not None else ObjectKind.SOURCE
    if art.kind is not expected_kind:
        out.append(Diagnostic(f"object {obj.name!r} is a {expected_kind.value} object in the manifest, a "
                              f"{art.kind.value} object in the artifacts", str(artifacts.index), where,
                              hint=_BUILD_HINT))
        return out
    if art.kind is ObjectKind.FILE:
        expected = prebuilt_digest(art.path)  # a regular file within the limit: its sha256 was just read
        if expected != art.digest:
            out.append(Diagnostic(f"object {obj.name!r}: the index records build digest {art.digest}, the file's "
                                  f"bytes give {expected}", str(artifacts.index), where + ".build_digest",
                                  hint=_version_hint(artifacts)))
        else:
            here = _host_digest(lambda: prebuilt_digest(obj.file))
            if here is not None and here != art.digest:
                out.append(Diagnostic(f"object {obj.name!r}: the prebuilt file {obj.file} on this host differs from "
                                      f"the artifact {art.path} (build digest {here}, expected {art.digest})",
                                      str(obj.file), where, hint=_BUILD_HINT))
        return out
    expected = source_digest(art.inputs, art.clang, art.btf)
    if expected != art.digest:
        out.append(Diagnostic(f"object {obj.name!r}: the index records build digest {art.digest}, its recorded "
                              f"inputs, clang and BTF give {expected}", str(artifacts.index), where + ".build_digest",
                              hint=_version_hint(artifacts)))
    elif obj.source.is_file():
        # The sources are on this host too (shipped with the manifest): they must be the ones built.
        here = _host_digest(lambda: inputs_digest(obj))
        if here is not None and here != art.inputs:
            out.append(Diagnostic(f"object {obj.name!r}: the source {obj.source} (or a header it includes) on this "
                                  f"host differs from the one the artifacts were built from (inputs digest {here}, "
                                  f"expected {art.inputs})", str(obj.source), where, hint=_BUILD_HINT))
    return out


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.is_file() and path.stat().st_size == len(data) and read_input(path) == data
    except (OSError, InputRefused):
        return False


def _host_digest(digest) -> str | None:
    """A digest of the host's own copy of an object's files, or None when there is none to read."""
    try:
        return digest()
    except (OSError, InputRefused):  # absent, unreadable, not a regular file: the artifact is what counts
        return None


def _version_hint(artifacts: ArtifactSet) -> str:
    """A digest that does not follow from its parts: the index was edited, or another bpfdeploy made it."""
    if artifacts.bpfdeploy_version != __version__:
        return (f"the artifacts were built by bpfdeploy {artifacts.bpfdeploy_version}, this is {__version__}: "
                "build them with the version the hosts run")
    return "the index was changed after bpfdeploy build; " + _BUILD_HINT


def _check_signature(artifacts: ArtifactSet, manifest: Manifest, allowed_signers: Path | None,
                     problems: list[Diagnostic]) -> tuple[SignatureState, str | None, Path | None]:
    policy = manifest.artifacts
    signers = allowed_signers or (policy.allowed_signers if policy else None)
    required = signers is not None or bool(policy and policy.require_signature)
    signed = artifacts.signature.is_file()
    if not required:
        return (SignatureState.NOT_CHECKED if signed else SignatureState.UNSIGNED), None, None
    why = ("--allowed-signers was given" if allowed_signers is not None else
           "the manifest sets artifacts.require_signature" if policy and policy.require_signature else
           "the manifest sets artifacts.allowed_signers")
    if signers is None:
        problems.append(Diagnostic("the manifest requires signed artifacts, and no allowed_signers file was given",
                                   str(manifest.file), "artifacts.require_signature",
                                   manifest.line_of(("artifacts", "require_signature")),
                                   hint="pass --allowed-signers FILE, or set artifacts.allowed_signers"))
        return SignatureState.UNSIGNED, None, None
    if not signers.is_file():
        problems.append(Diagnostic(f"allowed_signers file {signers} not found", str(signers),
                                   "" if allowed_signers is not None else "artifacts.allowed_signers",
                                   None if allowed_signers is not None else
                                   manifest.line_of(("artifacts", "allowed_signers")),
                                   hint="expected lines of 'PRINCIPAL KEYTYPE KEY' (ssh-keygen(1), ALLOWED SIGNERS)"))
        return SignatureState.UNSIGNED, None, signers
    if not signed:
        problems.append(Diagnostic(f"the artifacts are not signed ({artifacts.signature} is missing), and a "
                                   f"signature is required: {why}", str(artifacts.signature),
                                   hint="sign them: bpfdeploy build MANIFEST --out DIR --sign-key KEY"))
        return SignatureState.UNSIGNED, None, signers
    principal, error = check_signature(artifacts, signers)
    if principal is None:
        problems.append(Diagnostic(f"bad signature {artifacts.signature} for {artifacts.index}: {error}",
                                   str(artifacts.signature), hint=f"checked with {signers} ({why}); the index or "
                                   "the signature was changed, or another key signed it"))
        return SignatureState.UNSIGNED, None, signers
    return SignatureState.GOOD, principal, signers


def check_signature(artifacts: ArtifactSet, signers: Path) -> tuple[str | None, str]:
    """(principal, "") when the index carries a good signature by a key of ``signers``, else (None, why)."""
    from bpfdeploy.kernel import runner

    _need_ssh_keygen()
    sig = str(artifacts.signature)
    found = runner.run(["ssh-keygen", "-Y", "find-principals", "-s", sig, "-f", str(signers)])
    principals = [ln.strip() for ln in found.stdout.splitlines() if ln.strip()] if found.returncode == 0 else []
    if not principals:
        return None, f"the key that made it is not in {signers}" + (
            f" ({found.error_text()})" if found.error_text() else "")
    text = artifacts.index_bytes.decode("ascii")  # read_artifacts checked it is ASCII
    last = ""
    for principal in principals:
        result = runner.run(["ssh-keygen", "-Y", "verify", "-n", NAMESPACE, "-f", str(signers), "-I", principal,
                             "-s", sig], input=text)
        if result.returncode == 0:
            return principal, ""
        last = result.error_text() or f"ssh-keygen exit {result.returncode}"
    return None, last


def built_objects(artifacts: ArtifactSet, manifest: Manifest, store: Path) -> dict[str, BuiltObject]:
    """The verified artifacts as the objects a build would have produced (same digests, no clang).

    Each object is read once more and written to ``store/<sha256>.o`` (a directory of bpfdeploy's
    own cache) from the very bytes whose sha256 is checked again, and that copy is what libbpf
    loads: a file swapped in the artifact directory after ``verify`` is refused, never loaded.
    """
    store.mkdir(parents=True, exist_ok=True)
    out = {}
    for obj in manifest.objects:
        art = artifacts.object(obj.name)
        try:
            data = read_input(art.path)
        except (OSError, InputRefused) as exc:
            data, why = None, exc.reason if isinstance(exc, InputRefused) else exc.strerror or exc
        found = hashlib.sha256(data).hexdigest() if data is not None else None
        if found != art.sha256:
            raise ArtifactError(f"the artifacts in {artifacts.directory} cannot be used; nothing was changed", (
                Diagnostic(f"object {obj.name!r}: artifact file {art.path} changed while it was checked"
                           + (f" (sha256 {found}, expected {art.sha256})" if found else f": {why}"),
                           str(art.path), f"objects.{obj.name}"),))
        copy = store / f"{art.sha256}.o"
        if not _holds(copy, data):  # kept when it is already these bytes (its stamp keeps the prepared cache)
            tmp = store / f".{art.sha256}.tmp{os.getpid()}"
            tmp.write_bytes(data)
            tmp.replace(copy)
        out[obj.name] = BuiltObject(obj.name, copy, art.digest, False, ObjectOrigin.ARTIFACTS)
    return out
