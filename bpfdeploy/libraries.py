"""Shared libraries by name, for uprobes: `binary: libc` is found as the dynamic linker finds it.

The names are the ones `ldconfig -p` lists from /etc/ld.so.cache (what ld.so searches). A
name matches a library's soname exactly (`libc.so.6`) or as its stem (`libc` matches
`libc.so.6`); of several matches, one built for this machine's ABI and with a versioned
soname (`.so.6` over a development `.so` link) is taken, as a program linked against it
would load it.
"""

from __future__ import annotations

import platform
import re
from functools import lru_cache
from pathlib import Path

_LINE = re.compile(r"^\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)\s*$")
_ABI = {"x86_64": "x86-64", "aarch64": "AArch64", "arm64": "AArch64"}


def parse_ldconfig(text: str) -> list[tuple[str, str, str]]:
    """(soname, flags, path) of each library `ldconfig -p` printed."""
    return [m.groups() for m in map(_LINE.match, text.splitlines()) if m]


def find_library(name: str, entries: list[tuple[str, str, str]], machine: str | None = None) -> Path | None:
    """The library a program on this machine would load for `name`, or None."""
    abi = _ABI.get(machine or platform.machine(), "")
    matches = [(soname, flags, path) for soname, flags, path in entries
               if soname == name or soname.startswith(name + ".so")]
    if abi:  # never another ABI's copy (/lib32/libc.so.6 for an x86-64 program)
        matches = [m for m in matches if abi in m[1]]
    if not matches:
        return None
    # A versioned soname first (what programs link against), then the shortest (libz.so.1 over libz.so.1.2).
    matches.sort(key=lambda m: (m[0] == name, bool(re.search(r"\.so\.\d", m[0])), -len(m[0])), reverse=True)
    return Path(matches[0][2])


@lru_cache(maxsize=1)
def _ldconfig_entries() -> tuple[tuple[str, str, str], ...]:
    import shutil
    import subprocess

    ldconfig = shutil.which("ldconfig") or next((p for p in ("/usr/sbin/ldconfig", "/sbin/ldconfig")
                                                 if Path(p).exists()), None)
    if ldconfig is None:
        return ()
    try:
        proc = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(parse_ldconfig(proc.stdout))


def resolve_library(name: str) -> Path | None:
    """`name` (libc, libc.so.6, libssl) as the dynamic linker's cache has it; None if it does not."""
    return find_library(name, list(_ldconfig_entries()))


def looks_like_library_name(text: str) -> bool:
    """A bare library name (no directory part), as opposed to a path."""
    return "/" not in text and text.startswith("lib")
