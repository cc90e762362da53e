"""A built object as the rest of bpfdeploy sees it: which ELF file, and the digest that names its build.

Kept apart from build.py (clang, hashing, include scanning) because every prepared manifest
holds these: a no-op plan that reads a prepared manifest from the cache needs the class, not
the builder.
"""

from __future__ import annotations

import enum
from pathlib import Path

from bpfdeploy.model.frozen import frozen


class ObjectOrigin(enum.Enum):
    """Where the ELF file that is loaded came from."""

    LOCAL = "build"  # built here (or found in the build cache), or a prebuilt `file`
    ARTIFACTS = "artifacts"  # taken from a `bpfdeploy build --out` directory, digests checked


@frozen
class BuiltObject:
    name: str  # object name in the manifest
    path: Path  # the ELF file to load
    digest: str  # sha256 hex of everything that decides its bytes (the same for a local build and an artifact)
    built: bool  # clang ran for it in this call (False: cache hit, prebuilt or artifact)
    origin: ObjectOrigin = ObjectOrigin.LOCAL
