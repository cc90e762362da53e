"""The manifest: loading (YAML with line marks), the desired-state model, and semantic checks."""

from __future__ import annotations

from pathlib import Path

from bpfdeploy.diagnostics import Diagnostic, ManifestError
from bpfdeploy.manifest.model import Manifest


def _resolve_shadows(problems: list[Diagnostic], schema_problems: list[Diagnostic]) -> list[Diagnostic]:
    """An item the checks could not use is an error unless the schema already said why."""
    from bpfdeploy.model.frozen import replace

    from bpfdeploy.manifest.checks import SHADOW

    out = []
    for d in problems:
        if d.severity != SHADOW:
            out.append(d)
        elif not any(s.path == d.path or s.path.startswith(d.path + ".") or s.path.startswith(d.path + "[")
                     for s in schema_problems):
            out.append(replace(d, severity="error"))
    return out


def load_manifest(path: Path, cgroup_root: Path | None = None, files_must_exist: bool = True,
                  objects_must_exist: bool | None = None) -> tuple[Manifest, list[Diagnostic]]:
    """Parse, schema-check and semantically check a manifest.

    Returns the manifest and any warnings; raises ManifestError carrying every error found.
    objects_must_exist: see ``checks.build_manifest`` (sources and object files only).
    """
    from bpfdeploy.host import cgroup2_root
    from bpfdeploy.manifest.checks import build_manifest
    from bpfdeploy.manifest.load import load_raw, schema_diagnostics

    raw = load_raw(path)
    schema_problems = schema_diagnostics(raw)
    # The semantic checks run even on a document the schema refused (malformed items are
    # skipped), so that every problem is reported at once.
    manifest, problems = build_manifest(raw, cgroup_root or cgroup2_root(), files_must_exist, objects_must_exist)
    problems = _resolve_shadows(problems, schema_problems)
    if schema_problems:
        seen = {(d.path, d.message) for d in schema_problems}
        merged = list(schema_problems) + [d for d in problems if (d.path, d.message) not in seen]
        merged.sort(key=lambda d: (d.line or 0, d.path))
        raise ManifestError(f"{path}: {len(merged)} problem(s)", tuple(merged))
    problems = list(raw.warnings) + problems
    # Checks made after the manifest is assembled (metrics) can fail it too.
    if manifest is None or any(d.severity == "error" for d in problems):
        errors = tuple(d for d in problems if d.severity == "error")
        raise ManifestError(f"{path}: {len(errors)} problem(s)", tuple(problems))
    return manifest, problems
