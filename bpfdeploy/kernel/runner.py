"""The one seam that runs external commands (bpftool, clang, tc).

Arguments are always lists, never a shell string. bpftool in ``-j`` mode prints its errors
as JSON on stdout, so stdout is kept on failure too. Every call is recorded, so tests and
benchmarks can count processes.
"""

from __future__ import annotations

import json
import os
import subprocess

from bpfdeploy.model.frozen import frozen


@frozen
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def error_text(self) -> str:
        """bpftool's JSON error if there is one, else stderr, else stdout."""
        text = self.stdout.strip()
        if text.startswith("{"):
            try:
                return json.loads(text).get("error", text)
            except ValueError:
                pass
        lines = [ln for ln in self.stderr.splitlines() if not ln.startswith("Warning: bpftool is now running in libbpf strict mode")]
        return "\n".join(lines).strip() or text


def which(name: str) -> str | None:
    """Where a command is on PATH, as shutil.which finds it (shutil costs 1.9 ms to import,
    most of it for archive formats, and every command asks where bpftool is)."""
    if os.sep in name:
        candidates = [name]
    else:
        path = os.environ.get("PATH", os.defpath)
        if not path:
            return None
        candidates = [os.path.join(d, name) for d in dict.fromkeys(path.split(os.pathsep))]
    return next((c for c in candidates if os.path.exists(c) and os.access(c, os.X_OK) and not os.path.isdir(c)),
                None)


calls: list[tuple[str, ...]] = []  # every argv run by this process, in order


def run(argv: list[str], *, input: str | None = None, timeout: float = 120) -> Result:
    calls.append(tuple(argv))
    try:
        proc = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return Result(tuple(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(tuple(argv), 124, "", f"{argv[0]}: timed out after {timeout:.0f} s")
    return Result(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def start(argv: list[str]) -> subprocess.Popen:
    """Start a command whose output is read later (several bpftool reads run side by side)."""
    calls.append(tuple(argv))
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(argv: list[str], proc: subprocess.Popen, timeout: float = 60) -> Result:
    out, err = proc.communicate(timeout=timeout)
    return Result(tuple(argv), proc.returncode, out, err)
