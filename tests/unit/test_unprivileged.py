"""validate needs no privilege: an unprivileged user whose home cannot hold a cache (nobody's
/nonexistent, HOME=/root kept by sudo) still gets a verdict, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the user nobody needs root")


@pytest.fixture
def shared_tmp():
    """A temporary directory nobody can write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="bdt-unpriv-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("home", ["/root", "/nonexistent", None], ids=["home-unreadable", "home-missing", "no-home"])
def test_validate_as_nobody_works_whatever_home_is(shared_tmp, home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BPFDEPLOY_", "XDG_"))}
    env.pop("HOME", None)
    if home:
        env["HOME"] = home
    env["TMPDIR"] = str(shared_tmp)  # the private fallback cache lands here and is removed with it
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "validate", "--json",
                           str(REPO / "manifests" / "cgroup-counters.yaml")], capture_output=True, text=True,
                          env=env, user="nobody", group="nogroup", extra_groups=[], cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["valid"] is True
    import pwd

    cache = shared_tmp / f"bpfdeploy-{pwd.getpwnam('nobody').pw_uid}"
    assert cache.is_dir() and (cache.stat().st_mode & 0o777) == 0o700  # private to the user
