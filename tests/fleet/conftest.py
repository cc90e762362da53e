"""Fleet tests: the Ansible collection over real SSH against simulated hosts on this machine.

The `fleet` session fixture runs scripts/fleet.sh down (whatever a cancelled run left) and up,
yields a Fleet, and runs down again at the end, also when tests fail; it then checks that the
hosts' namespaces, cgroups and processes are gone and that every BPF program a test saw on a
host was freed with the host's bpffs. Marked `fleet` (and needing root): `make unit` never runs
them; `bash scripts/bootstrap.sh test` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require
from tests.fleet.fleet import REPO, Fleet

HOSTS = 6  # 1-3 healthy, 4 made unreachable, 5 without kernel BTF, 6 without clang
NOBTF = "5"
NOCLANG = "6"


def _fleet_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    if not Path("/usr/sbin/sshd").exists():
        return "openssh-server is not installed (bash scripts/bootstrap.sh setup installs it)"
    if not (REPO / ".venv/bin/ansible-playbook").exists():
        return "ansible-core is not installed in .venv (bash scripts/bootstrap.sh setup installs it)"
    for tool in ("bpftool", "clang", "nsenter", "unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="session")
def fleet_ready():
    require(_fleet_problem(), "fleet tests are required here but cannot run", "fleet tests need root, sshd and ansible-core")


@pytest.fixture(scope="session")
def fleet(fleet_ready, tmp_path_factory):
    prefix = "bdf" + uuid.uuid4().hex[:5]
    directory = Path("/tmp") / prefix
    env = dict(os.environ, FLEET_DIR=str(directory), FLEET_NOBTF=NOBTF, FLEET_NOCLANG=NOCLANG,
               FLEET_PYTHON=str(REPO / ".venv/bin/python"))
    script = ["bash", str(REPO / "scripts/fleet.sh")]
    subprocess.run(script + ["down", str(HOSTS), prefix], env=env, check=False, capture_output=True)
    up = subprocess.run(script + ["up", str(HOSTS), prefix], env=env, capture_output=True, text=True)
    f = None
    try:
        assert up.returncode == 0, f"fleet up failed:\n{up.stdout}\n{up.stderr}"
        f = Fleet(prefix, directory, HOSTS, tmp_path_factory.mktemp("fleet"))
        yield f
    finally:
        seen = f.seen_programs if f else set()
        down = subprocess.run(script + ["down", str(HOSTS), prefix], env=env, capture_output=True, text=True)
        assert down.returncode == 0, f"fleet down failed:\n{down.stdout}\n{down.stderr}"
        _check_gone(prefix, seen)


def _check_gone(prefix: str, programs: set[int]) -> None:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in netns, f"namespaces of {prefix} left behind: {netns}"
    from bpfdeploy.host import cgroup2_root

    left = [p.name for p in cgroup2_root().iterdir() if p.name.startswith(prefix)]
    assert not left, f"cgroups left behind: {left}"
    assert not Path("/tmp", prefix).exists()
    # A host's pins live in its own bpffs: once its last process is gone, its programs are freed.
    deadline = time.monotonic() + 10
    alive = set(programs)
    while alive and time.monotonic() < deadline:
        alive = {i for i in alive if subprocess.run(["bpftool", "prog", "show", "id", str(i)],
                                                    capture_output=True).returncode == 0}
        if alive:
            time.sleep(0.2)
    assert not alive, f"programs of the fleet's hosts still loaded after teardown: {sorted(alive)}"
