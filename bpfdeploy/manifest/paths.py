"""Manifest paths: how a place in the document is written, and the line it came from.

Kept apart from load.py so that code which only reports places does not import the YAML parser.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _schema_path() -> Path:
    # A source tree (editable install) has schemas/ beside the package; a wheel installs the
    # schema as data under <prefix>/share/bpfdeploy/schemas (pyproject.toml, data-files).
    in_tree = Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json"
    if in_tree.is_file():
        return in_tree
    return Path(sys.prefix) / "share" / "bpfdeploy" / "schemas" / "manifest.schema.json"


SCHEMA_PATH = _schema_path()


def line_of(lines: dict, path: tuple) -> int | None:
    """Line of the node at path, or of its nearest ancestor that has one."""
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def format_path(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_path(text: str) -> tuple:
    """format_path undone: ``attachments[2].cgroup`` -> ("attachments", 2, "cgroup")."""
    out: list = []
    for part in text.replace("[", ".[").split("."):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)
