"""Size limits on what bpfdeploy reads, checked before anything is read.

A manifest, a BPF source, a header or an object is small (a few kB to a few MB); a file far
larger is a mistake (or an attack: a sparse 3 GB file used to be read whole into memory). The
limits are documented in docs/manifest.md ("Limits on input files").
"""

from __future__ import annotations

import os

MAX_MANIFEST_BYTES = 1024 * 1024  # 1 MiB: the largest example is under 4 kB
MAX_SAVED_PLAN_BYTES = 64 * 1024 * 1024  # a saved plan of 200 programs is about 200 kB
DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024  # sources, headers and object files
INPUT_LIMIT_SETTING = "BPFDEPLOY_MAX_INPUT_BYTES"
READ_CHUNK = 1024 * 1024  # files are hashed in pieces of this size, never read whole


def max_input_bytes() -> int:
    """The limit for sources, headers and objects: $BPFDEPLOY_MAX_INPUT_BYTES, or 64 MiB."""
    text = os.environ.get(INPUT_LIMIT_SETTING, "")
    try:
        value = int(text)
    except ValueError:
        return DEFAULT_MAX_INPUT_BYTES
    return value if value > 0 else DEFAULT_MAX_INPUT_BYTES


def size_text(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def too_big(what: str, size: int, limit: int, setting: str | None = INPUT_LIMIT_SETTING) -> str:
    return (f"{what} is {size_text(size)} ({size} bytes), over the limit of {size_text(limit)}"
            + (f" (set {setting} to raise it)" if setting else ""))
