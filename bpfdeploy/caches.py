"""Where bpfdeploy keeps its caches (builds, object info, prepared manifests, probes).

Its own module because every command asks, and most of them build nothing.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("BPFDEPLOY_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/bpfdeploy")
    return _user_cache_dir(os.geteuid(), os.environ.get("XDG_CACHE_HOME") or os.environ.get("HOME") or "")


@functools.lru_cache(maxsize=4)
def _user_cache_dir(uid: int, base: str) -> Path:
    """An unprivileged user's cache: under XDG_CACHE_HOME or ~/.cache when that can be written.

    A user without a usable home (nobody's /nonexistent, HOME=/root kept by sudo, a root-owned
    ~/.cache left by `sudo bpfdeploy`) gets a private directory in the temporary directory instead
    (mode 0700, checked to be theirs), so `validate` works for anyone who can read the manifest.
    """
    import tempfile

    if base:
        home_cache = Path(base) if os.environ.get("XDG_CACHE_HOME") else Path(base) / ".cache"
        candidate = home_cache / "bpfdeploy"
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            if os.access(candidate, os.W_OK | os.X_OK):
                return candidate
        except OSError:
            pass
    private = Path(tempfile.gettempdir()) / f"bpfdeploy-{uid}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(private)
        if st.st_uid == uid and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077:
            return private
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix=f"bpfdeploy-{uid}-"))  # someone else holds that name: this run only
