"""status, dump and metrics against a real deployment."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bpfdeploy.render.replies import FORMAT_VERSION
from tests.kernel.conftest import map_values, metric_samples, scrape_metrics
from tests.kernel.traffic import ECHO


def test_metrics_endpoint_matches_the_map(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(manifest.read_text())
    root, name = Path(data["pin_root"]), data["name"]
    sandbox.cli("apply", manifest)
    sandbox.run_in(ECHO.format(n=3), cgroup=sandbox.cgroups[0], netns=sandbox.netns())
    text = scrape_metrics(sandbox, [manifest], timeout=20)
    samples = metric_samples(text)
    traffic = map_values(root / "maps/traffic")
    for direction, slot in (("ingress", 0), ("egress", 1)):
        labels = (("deployment", name), ("direction", direction))
        assert samples[("bpfdeploy_cgroup_packets_total", labels)] == traffic[slot]["packets"] > 0
        assert samples[("bpfdeploy_cgroup_bytes_total", labels)] == traffic[slot]["bytes"] > 0
    assert samples[("bpfdeploy_deployment_healthy", (("deployment", name),))] == 1
    assert samples[("bpfdeploy_deployment_programs_loaded", (("deployment", name),))] == 2


def test_textfile_is_replaced_atomically(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    sandbox.cli("apply", manifest)
    path = sandbox.tmp / "bpfdeploy.prom"
    writer = subprocess.Popen([sys.executable, "-m", "bpfdeploy.cli", "metrics", str(manifest), "--textfile", str(path),
                               "--interval", "0.02"], env=sandbox.env, stderr=subprocess.PIPE, text=True)
    reads = 0
    try:
        deadline = time.monotonic() + 30
        while reads < 200 and time.monotonic() < deadline:
            if path.exists():
                text = path.read_text()
                assert text.rstrip().endswith("} 1.0"), text[-200:]  # the last line (healthy) is always there
                metric_samples(text)
                reads += 1
            assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.terminate()
        writer.wait(timeout=10)
    assert reads == 200
    assert not list(sandbox.tmp.glob("bpfdeploy.prom.*"))  # no temporary files left visible next to it


def test_status_sees_each_kind_of_drift(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(manifest.read_text())
    root, name = Path(data["pin_root"]), data["name"]
    sandbox.cli("apply", manifest)
    status = sandbox.cli_json("status", manifest)
    assert status["healthy"] is True and status["summary"]["drifted"] == 0
    listing = sandbox.cli_json("status")
    assert listing["format_version"] == FORMAT_VERSION
    assert any(d["name"] == name and d["programs"] == 2 for d in listing["deployments"])

    link = next((root / "links").iterdir())
    link.unlink()  # detached by hand
    (root / "progs/count_egress").unlink()  # unpinned by hand
    drifted = sandbox.cli("status", manifest, "--json", check=False)
    assert drifted.returncode == 3  # ExitCode.DRIFTED: wrappers can tell drift from failure
    status = json.loads(drifted.stdout)
    states = {a["name"]: a["state"] for a in status["attachments"]}
    assert states[link.name] == "missing"
    progs = {p["name"]: p["state"] for p in status["programs"]}
    assert progs["count_egress"] == "missing" and progs["count_ingress"] == "in sync"
    assert status["healthy"] is False and status["summary"]["drifted"] >= 2

    sandbox.cli("apply", manifest)
    (root / "maps/traffic").unlink()
    status = sandbox.cli_json("status", manifest, check=False)
    assert {m["name"]: m["state"] for m in status["maps"]}["traffic"] == "missing"
    assert all(p["state"] == "drifted" for p in status["programs"])


def test_status_stats_window_counts_runs_and_restores_the_sysctl(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    sandbox.cli("apply", manifest)
    before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text()
    cgroup, netns = sandbox.cgroups[0], sandbox.netns()
    script = sandbox.tmp / "traffic.py"
    script.write_text("import time\nfor _ in range(40):\n    exec(%r)\n    time.sleep(0.05)\n" % ECHO.format(n=2))
    traffic = subprocess.Popen(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", "nsenter",
                                f"--net=/var/run/netns/{netns}", sys.executable, str(script)], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        status = sandbox.cli_json("status", manifest, "--stats", "1")
    finally:
        traffic.wait(timeout=60)
    assert Path("/proc/sys/kernel/bpf_stats_enabled").read_text() == before
    runs = {p["name"]: p["run_cnt"] for p in status["programs"]}
    assert runs["count_ingress"] > 0 and runs["count_egress"] > 0
    assert status["stats_window_seconds"] == 1


def test_dump_shows_btf_formatted_entries(sandbox):
    manifest = sandbox.example("connect-policy.yaml")
    sandbox.cli("apply", manifest)
    reply = json.loads(sandbox.cli("dump", manifest, "port_rewrites", "--json").stdout)
    assert reply["format_version"] == FORMAT_VERSION and reply["map"] == "port_rewrites"
    assert reply["entries"] == [{"key": 7777, "value": 7778}]
    proc = sandbox.cli("dump", manifest, "nosuch", check=False)
    assert proc.returncode == 1 and "has no map 'nosuch'" in proc.stderr and "port_rewrites" in proc.stderr
