"""The steps every command shares: manifest -> build -> desired state -> live state -> plan.

The CLI and the Ansible module call these; neither re-implements the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bpfdeploy.build import BuiltObject, build_all, cache_dir
from bpfdeploy.desired import DesiredState, object_info, resolve
from bpfdeploy.diagnostics import Diagnostic, ManifestError
from bpfdeploy.manifest import load_manifest
from bpfdeploy.manifest.model import Manifest


@dataclass(frozen=True, slots=True)
class Prepared:
    manifest: Manifest
    built: dict[str, BuiltObject]
    desired: DesiredState
    warnings: tuple[Diagnostic, ...]


def prepare(path: Path, on_build: Callable[[str, str], None] | None = None, destroy: bool = False) -> Prepared:
    """Load, build and resolve a manifest. Raises ManifestError/BuildError with every problem.

    A manifest prepared before, whose files have not changed since, comes from the cache.
    """
    if not destroy:
        from bpfdeploy import prepared_cache

        cached = prepared_cache.load(path, cache_dir())
        if cached is not None:
            return cached
        prepared = _prepare(path, on_build)
        prepared_cache.store(path, cache_dir(), prepared)
        return prepared
    return _prepare(path, on_build, destroy=True)


def _prepare(path: Path, on_build: Callable[[str, str], None] | None = None, destroy: bool = False) -> Prepared:
    manifest, warnings = load_manifest(path, files_must_exist=not destroy)
    if destroy:
        # Destroy needs the deployment's name and pin root only: nothing is built.
        empty = DesiredState(manifest.name, manifest.pin_root, (), (), ())
        return Prepared(manifest, {}, empty, tuple(warnings))
    cache = cache_dir()
    built = build_all(manifest, on_build, cache)
    infos = {}
    problems = list(warnings)
    for name, b in built.items():
        try:
            infos[name] = object_info(b, cache)
        except Exception as exc:  # an ELF libbpf cannot parse
            obj = next(o for o in manifest.objects if o.name == name)
            log = getattr(exc, "log", "")
            problems.append(Diagnostic(f"cannot open BPF object {b.path.name}: {getattr(exc, 'message', exc)}"
                                       + (f"\n{log}" if log else ""), str(manifest.file),
                                       f"objects.{name}", manifest.line_of(obj.where)))
    if any(d.severity == "error" for d in problems):
        raise ManifestError(f"{path}: objects could not be opened", tuple(problems))
    desired, problems2 = resolve(manifest, built, infos)
    if desired is None:
        raise ManifestError(f"{path}: {len(problems2)} problem(s)", tuple(warnings) + tuple(problems2))
    return Prepared(manifest, built, desired, tuple(warnings))
