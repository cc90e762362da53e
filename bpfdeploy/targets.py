"""What a command's MANIFEST argument names: a manifest file, standard input (``-``), or a
deployment by name, as `dump` has always taken either.

A deployment's record (``<state dir>/<name>.json``) keeps the manifest it was applied from, so
`bpfdeploy status web` and `bpfdeploy destroy web` need no path. Standard input is copied to a
private temporary file (the loader reads files, the prepared cache stamps them); relative paths
in it are resolved against the current directory, as they would be for a manifest there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from bpfdeploy.diagnostics import BpfdeployError

STDIN = "-"


def _looks_like_a_name(arg: str) -> bool:
    return "/" not in arg and not arg.endswith((".yaml", ".yml")) and arg not in (".", "..")


def manifest_for(arg: Path) -> Path:
    """The manifest file ARG stands for (ARG itself unless it is a deployment's name)."""
    text = str(arg)
    if text == STDIN or arg.exists() or not _looks_like_a_name(text):
        return arg
    from bpfdeploy.record import record_path, state_dir

    record = record_path(text)
    try:
        data = json.loads(record.read_text())
    except FileNotFoundError:
        raise BpfdeployError(f"{text}: no such manifest file, and no deployment of that name has a record in "
                             f"{state_dir()} (bpfdeploy status lists the deployments)") from None
    except (OSError, ValueError) as exc:
        raise BpfdeployError(f"deployment {text!r}: cannot read its record {record}: {exc}") from None
    manifest = data.get("manifest") if isinstance(data, dict) else None
    if not manifest:
        raise BpfdeployError(f"deployment {text!r}: its record {record} does not say which manifest it was applied "
                             "from; give the manifest file")
    if not Path(manifest).is_file():
        raise BpfdeployError(f"deployment {text!r} was applied from {manifest}, which is no longer there; give the "
                             "manifest file")
    return Path(manifest)


def stdin_manifest(directory: Path) -> Path:
    """Standard input as a manifest file in DIRECTORY (the caller's private temporary directory)."""
    data = sys.stdin.buffer.read() if sys.stdin is not None else b""
    path = directory / "stdin.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    from bpfdeploy.manifest.load import BASE_DIRS

    BASE_DIRS[str(path.resolve())] = Path.cwd()
    return path
