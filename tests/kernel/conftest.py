"""Kernel tests: real loads, attaches and effects, each in its own pin root, cgroup and netns.

Everything a test creates is registered in its Sandbox and removed afterwards, also when the
test fails. Nothing else is touched: cleanup removes only the sandbox's own pin root,
cgroups and namespaces. When BPFDEPLOY_REQUIRE_KERNEL=1 (CI), a host without BPF fails
these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
TEST_PIN_BASE = Path("/sys/fs/bpf/bpfdeploy-test")


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("bpftool", "clang"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no kernel BTF"
    from bpfdeploy.host import read_mounts
    from bpfdeploy.kernel.apply import ensure_bpffs

    try:
        ensure_bpffs()
    except Exception as exc:
        return f"bpffs: {exc}"
    if read_mounts().cgroup2 is None:
        return "no cgroup v2 mount"
    return None


@pytest.fixture(scope="session")
def kernel_ready():
    require(_kernel_problem(), "kernel tests are required here but BPF is unavailable", "kernel tests need root and BPF")


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory):
    # One build cache for the session: the same sources are built once.
    return tmp_path_factory.mktemp("build-cache")


class Sandbox:
    """A test's own deployment names, pin roots, cgroups and netns, and a CLI runner."""

    def __init__(self, tmp: Path, cache: Path):
        from bpfdeploy.host import cgroup2_root

        self.id = "bdt" + uuid.uuid4().hex[:8]
        self.tmp = tmp
        self.cgroup_root = cgroup2_root()
        self.env = dict(os.environ, BPFDEPLOY_STATE_DIR=str(tmp / "state"), BPFDEPLOY_CACHE_DIR=str(cache),
                        NO_COLOR="1", COLUMNS="200")
        self.manifests: list[Path] = []
        self.pin_roots: list[Path] = []
        self.cgroups: list[Path] = []
        self.netns_names: list[str] = []

    # -- resources
    def pin_root(self, name: str) -> Path:
        root = TEST_PIN_BASE / name
        self.pin_roots.append(root)
        return root

    def cgroup(self, suffix: str = "cg", create: bool = True) -> Path:
        path = self.cgroup_root / f"{self.id}-{suffix}"
        if create:
            path.mkdir()
        self.cgroups.append(path)
        return path

    def netns(self, suffix: str = "ns") -> str:
        name = f"{self.id}-{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns_names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    # -- manifests
    def write(self, text: str, filename: str = "manifest.yaml") -> Path:
        path = self.tmp / filename
        path.write_text(textwrap.dedent(text))
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "pin_root" in data:
            self.pin_roots.append(Path(data["pin_root"]))
        self.manifests.append(path)
        return path

    def example(self, filename: str, netns: str | None = None) -> Path:
        """A bundled example with this sandbox's names: deployment, pin root, cgroups, netns."""
        src = REPO / "manifests" / filename
        data = yaml.safe_load(src.read_text())
        data["name"] = f"{self.id}-{data['name']}"[:63]
        data["pin_root"] = str(self.pin_root(data["name"]))
        for obj in data["objects"].values():
            for key in ("source", "file"):
                if key in obj:
                    obj[key] = str((src.parent / obj[key]).resolve())
        for att in data.get("attachments", ()):
            if "cgroup" in att:
                spec = att["cgroup"]
                rel = spec if isinstance(spec, str) else spec["path"]
                path = self.cgroup_root / f"{self.id}-{Path(rel).name}"
                if path not in self.cgroups:
                    self.cgroups.append(path)
                att["cgroup"] = {"path": str(path), "create": True}
            if "netns" in att:
                att["netns"] = netns
        out = self.tmp / filename
        out.write_text(yaml.safe_dump(data, sort_keys=False))
        self.manifests.append(out)
        return out

    # -- running things
    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", *map(str, args)], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"bpfdeploy {' '.join(map(str, args))} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def cli_json(self, *args: str, check: bool = True) -> dict:
        proc = self.cli(*args, "--json", check=check)
        return json.loads(proc.stdout)

    def run_in(self, code: str, cgroup: Path | None = None, netns: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
        """Run Python code in a new process inside a cgroup and/or netns (bpffs stays visible)."""
        argv = [sys.executable, "-c", textwrap.dedent(code)]
        if netns:
            argv = ["nsenter", f"--net=/var/run/netns/{netns}", *argv]
        if cgroup:
            argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"process failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def cleanup(self) -> list[str]:
        problems = []
        for manifest in reversed(self.manifests):
            if manifest.exists():
                proc = self.cli("destroy", manifest, check=False)
                if proc.returncode != 0:
                    problems.append(f"destroy {manifest.name}: {proc.stderr.strip()[-300:]}")
        for root in self.pin_roots:
            if root.exists():
                problems.append(f"pin root {root} was left behind; removed")
                shutil.rmtree(root, ignore_errors=True)
        for cg in reversed(self.cgroups):
            if cg.exists():
                for child in sorted(cg.rglob("*"), reverse=True):
                    if child.is_dir():
                        _rmdir_quiet(child)
                _rmdir_quiet(cg)
        for name in self.netns_names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        try:
            TEST_PIN_BASE.rmdir()
        except OSError:
            pass
        return problems


def _rmdir_quiet(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


@pytest.fixture
def sandbox(kernel_ready, tmp_path, build_cache):
    box = Sandbox(tmp_path, build_cache)
    yield box
    box.cleanup()


def map_values(pin: Path) -> dict:
    """A pinned map's entries as {key: value}, formatted through BTF by bpftool."""
    proc = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin)], capture_output=True, text=True, check=True)
    out = {}
    for entry in json.loads(proc.stdout or "[]"):
        formatted = entry.get("formatted", entry)
        out[formatted["key"] if not isinstance(formatted["key"], list) else tuple(formatted["key"])] = formatted["value"]
    return out


def prog_ids_under(root: Path) -> dict[str, int]:
    proc = subprocess.run(["bpftool", "-j", "-f", "prog", "show"], capture_output=True, text=True, check=True)
    out = {}
    for p in json.loads(proc.stdout or "[]"):
        for pin in p.get("pinned", ()):
            if pin.startswith(str(root) + "/"):
                out[pin] = p["id"]
    return out


def scrape_metrics(sandbox: Sandbox, args: list[str], timeout: float = 30) -> str:
    """Start `bpfdeploy metrics ARGS` on a free loopback port, read /metrics once, stop it."""
    import socket
    import time
    import urllib.request

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = subprocess.Popen([sys.executable, "-m", "bpfdeploy.cli", "metrics", *map(str, args), "--listen",
                               f"127.0.0.1:{port}"], env=sandbox.env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"metrics server did not come up: {server.stderr.read()}")
                time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=10)


def metric_samples(text: str) -> dict:
    """A Prometheus exposition as {(sample name, sorted labels): value}, through the client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
