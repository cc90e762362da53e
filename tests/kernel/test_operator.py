"""What an operator meets (issue 18): plans that show values, and their effect on the kernel."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values, metric_samples, scrape_metrics
from tests.kernel.traffic import CONNECT


def test_plan_shows_each_changed_map_entry_old_to_new_and_apply_makes_it_so(sandbox):
    manifest = sandbox.example("connect-policy.yaml")
    root = Path(yaml.safe_load(manifest.read_text())["pin_root"])
    sandbox.cli("apply", manifest)
    data = yaml.safe_load(manifest.read_text())
    data["maps"]["port_rewrites"]["entries"] = [{"key": 7777, "value": 7779}]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))

    human = sandbox.cli("plan", manifest).stdout
    assert "key 7777: 7778 -> 7779" in human
    action = next(a for a in sandbox.cli_json("plan", manifest)["actions"] if a["address"] == "map/port_rewrites")
    assert action["action"] == "update"
    assert action["entries"] == [{"key": "0x611e0000", "old": "0x621e0000", "new": "0x631e0000",
                                  "key_uint": 7777, "old_uint": 7778, "new_uint": 7779}]
    assert action["before"] == {"entries": [{"key": "0x611e0000", "value": "0x621e0000"}]}
    assert action["after"] == {"entries": [{"key": "0x611e0000", "value": "0x631e0000"}]}

    sandbox.cli("apply", manifest)
    assert map_values(root / "maps" / "port_rewrites") == {7777: 7779}
    got = json.loads(sandbox.run_in(CONNECT.format(listen=[7779], ports=[7777]), cgroup=sandbox.cgroups[0],
                                    netns=sandbox.netns()).stdout)
    assert got["7777"] == ["connected", 7779]  # the rewrite now goes to the new port
    assert not [a for a in sandbox.cli_json("plan", manifest)["actions"] if a["action"] != "no-op"]


# -- the host-wide exporter ---------------------------------------------------------------------

def _second_counters(sandbox, directory: Path, tag: str) -> tuple[Path, str, Path]:
    """A copy of the cgroup-counters example with its own name, pin root and cgroup, in DIRECTORY."""
    src = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(src.read_text())
    data["name"] = f"{sandbox.id}-{tag}"
    data["pin_root"] = str(sandbox.pin_root(data["name"]))
    cgroup = sandbox.cgroup_root / f"{sandbox.id}-{tag}"
    sandbox.cgroups.append(cgroup)
    for att in data["attachments"]:
        att["cgroup"] = {"path": str(cgroup), "create": True}
    out = directory / f"{tag}.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    sandbox.manifests.remove(src)
    src.unlink()
    sandbox.manifests.append(out)
    return out, data["name"], Path(data["pin_root"])


def test_one_exporter_serves_every_deployment_of_a_directory_and_says_what_it_cannot_read(sandbox):
    from tests.kernel.traffic import ECHO

    directory = sandbox.tmp / "manifests"
    directory.mkdir()
    a, name_a, root_a = _second_counters(sandbox, directory, "expa")
    b, name_b, root_b = _second_counters(sandbox, directory, "expb")
    (directory / "broken.yaml").write_text("version: 1\nname: [not, a, name]\n")
    sandbox.cli("apply", a)
    sandbox.cli("apply", b)
    sandbox.run_in(ECHO.format(n=3), cgroup=sandbox.cgroups[-2], netns=sandbox.netns())  # traffic in A only

    samples = metric_samples(scrape_metrics(sandbox, ["--all", str(directory)]))
    ingress = lambda name: samples[("bpfdeploy_cgroup_packets_total", (("deployment", name), ("direction", "ingress")))]
    assert ingress(name_a) == map_values(root_a / "maps/traffic")[0]["packets"] > 0
    assert ingress(name_b) == 0
    assert samples[("bpfdeploy_deployment_healthy", (("deployment", name_a),))] == 1
    assert samples[("bpfdeploy_deployment_healthy", (("deployment", name_b),))] == 1
    build = [k for k in samples if k[0] == "bpfdeploy_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"]
    error = lambda name, source: samples[("bpfdeploy_scrape_error", (("deployment", name), ("source", source)))]
    assert error(str(directory / "broken.yaml"), "manifest") == 1  # reported, and the others still served
    assert error(name_b, "bpfdeploy_cgroup_packets_total") == 0

    # A map that cannot be read is a scrape error, not an empty metric.
    (root_b / "maps" / "traffic").unlink()
    samples = metric_samples(scrape_metrics(sandbox, ["--all", str(directory)]))
    assert error(name_b, "bpfdeploy_cgroup_packets_total") == 1
    assert error(name_a, "bpfdeploy_cgroup_packets_total") == 0
    assert samples[("bpfdeploy_deployment_healthy", (("deployment", name_b),))] == 0


def test_metrics_json_is_one_scrape_without_a_server_over_the_recorded_deployments(sandbox):
    import subprocess
    import sys

    from tests.reply_schemas import check_reply

    directory = sandbox.tmp / "manifests"
    directory.mkdir()
    a, name_a, _root = _second_counters(sandbox, directory, "jsa")
    b, name_b, _root = _second_counters(sandbox, directory, "jsb")
    sandbox.cli("apply", a)
    sandbox.cli("apply", b)
    # No manifest named: every deployment whose record is in the state dir. It returns (no server).
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "metrics", "--json"], env=sandbox.env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    check_reply("metrics", reply)
    assert sorted(reply["deployments"]) == sorted([name_a, name_b])
    healthy = next(f for f in reply["families"] if f["name"] == "bpfdeploy_deployment_healthy")
    assert {s["labels"]["deployment"]: s["value"] for s in healthy["samples"]} == {name_a: 1, name_b: 1}
    assert "Serving" not in proc.stderr and "serving" not in proc.stderr


# -- tables that fit ----------------------------------------------------------------------------

def _on_a_terminal(sandbox, args: list[str], columns: int = 80) -> str:
    """bpfdeploy's output when its stdout is an 80-column terminal (a pty), ANSI codes removed."""
    import os
    import pty
    import re
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = dict(sandbox.env, COLUMNS=str(columns), LINES="50")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "bpfdeploy.cli", *args], env=env, stdout=follower,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    proc.wait(timeout=60)
    text = b"".join(chunks).decode()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")


def test_status_tables_fit_80_columns_without_cutting_names_and_grep_finds_the_name(sandbox):
    import subprocess

    manifest = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(manifest.read_text())
    # The longest deployment name there can be: the pin root path is then longer than 80 columns.
    data["name"] = (data["name"] + "-" + "x" * 63)[:63]
    data["pin_root"] = str(sandbox.pin_root(data["name"]))
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    name = data["name"]
    sandbox.cli("apply", manifest)

    for args in (["status", str(manifest)], ["status"]):
        shown = _on_a_terminal(sandbox, args)
        assert name[:20] in shown, shown
        assert "…" not in shown and "..." not in shown, shown  # nothing cut short
        assert max(len(line) for line in shown.splitlines()) <= 80, shown
        # Piped (not a terminal): each name and path stays on one line, so grep finds it.
        piped = sandbox.cli(*args, check=False).stdout
        grep = subprocess.run(["grep", "-F", name], input=piped, capture_output=True, text=True)
        assert grep.returncode == 0, piped
        assert data["pin_root"] in piped or args == ["status", str(manifest)] and name in piped
        # --wide on a terminal: the same, one line per cell.
        wide = _on_a_terminal(sandbox, [*args, "--wide"])
        assert name in wide and "…" not in wide


# -- conveniences -------------------------------------------------------------------------------

def test_status_and_destroy_take_a_deployment_name(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(manifest.read_text())
    name, root = data["name"], Path(data["pin_root"])
    sandbox.cli("apply", manifest)
    status = sandbox.cli_json("status", name)
    assert status["deployment"] == name and status["healthy"] is True
    assert name in sandbox.cli("status", name).stdout
    sandbox.cli("destroy", name)
    assert not root.exists()
    gone = sandbox.cli("status", name, check=False)
    assert gone.returncode == 1 and "no deployment of that name" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_plan_takes_several_manifests_and_standard_input(sandbox):
    import subprocess
    import sys

    from tests.reply_schemas import check_reply

    directory = sandbox.tmp / "manifests"
    directory.mkdir()
    a, name_a, _ = _second_counters(sandbox, directory, "pla")
    b, name_b, _ = _second_counters(sandbox, directory, "plb")
    sandbox.cli("apply", a)
    both = sandbox.cli("plan", a, b, "--json", "--detailed-exitcode", check=False)
    assert both.returncode == 2, both.stderr  # b is not applied yet: changes pending
    reply = json.loads(both.stdout)
    check_reply("plan-many", reply)
    assert [(r["deployment"], r["exit_code"], r["changes"]) for r in reply["results"]] == [
        (name_a, 0, False), (name_b, 2, True)]
    human = sandbox.cli("plan", a, b).stdout
    assert f"deployment {name_a}" in human and f"deployment {name_b}" in human

    # '-': the manifest from standard input (relative paths from the current directory)
    proc = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "plan", "-", "--json"], input=a.read_text(),
                          env=sandbox.env, capture_output=True, text=True, cwd=directory, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deployment"] == name_a
    check = subprocess.run([sys.executable, "-m", "bpfdeploy.cli", "validate", "-", "-"], input="", env=sandbox.env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 64 and "once" in check.stderr


# -- odd hosts ----------------------------------------------------------------------------------

def test_without_bpffs_plan_says_it_will_be_mounted_instead_of_reporting_conflicts(sandbox):
    """In a private mount namespace with /sys/fs/bpf unmounted (the machine's bpffs is untouched):
    the deployment's programs are still on their hooks, but no pin can be seen."""
    import subprocess
    import sys

    manifest = sandbox.example("cgroup-counters.yaml")
    sandbox.cli("apply", manifest)
    inner = (f'umount /sys/fs/bpf && [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ] && '
             f'exec {sys.executable} -m bpfdeploy.cli plan "$1" "$2"')
    for extra in ("--json", "--detailed-exitcode"):
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh", str(manifest),
                               extra], env=sandbox.env, capture_output=True, text=True, timeout=120)
        if extra == "--json":
            assert proc.returncode == 0, proc.stderr
            reply = json.loads(proc.stdout)
            assert reply["mounts"] == [{"fstype": "bpf", "target": "/sys/fs/bpf"}] and reply["changes"] is True
            assert not [d for d in reply["diagnostics"] if d["severity"] == "error"], reply["diagnostics"]
            assert not reply["conflicts"]
            (warning,) = [d for d in reply["diagnostics"] if "bpffs is not mounted" in d["message"]]
            assert "2 of the manifest's hooks hold programs" in warning["message"]
        else:
            assert proc.returncode == 2, proc.stderr  # changes pending, not an error
            assert "+ mount   bpffs on /sys/fs/bpf" in proc.stdout and "conflict" not in proc.stdout
    assert subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/bpf"], capture_output=True,
                          text=True).stdout.strip() == "bpf_fs"  # ours was never unmounted
    assert not [a for a in sandbox.cli_json("plan", manifest)["actions"] if a["action"] != "no-op"]


def test_status_of_a_manifest_never_applied_says_not_deployed(sandbox):
    from tests.reply_schemas import check_reply

    manifest = sandbox.example("cgroup-counters.yaml")
    proc = sandbox.cli("status", manifest, check=False)
    assert proc.returncode == 3 and "not deployed" in proc.stdout and "drifted" not in proc.stdout
    reply = json.loads(sandbox.cli("status", manifest, "--json", check=False).stdout)
    check_reply("status", reply)
    assert reply["deployed"] is False and reply["healthy"] is False
    sandbox.cli("apply", manifest)
    reply = sandbox.cli_json("status", manifest)
    check_reply("status", reply)
    assert reply["deployed"] is True and reply["healthy"] is True
    (Path(reply["pin_root"]) / "links").iterdir().__next__().unlink()  # one link gone: drifted, still deployed
    proc = sandbox.cli("status", manifest, check=False)
    assert proc.returncode == 3 and "drifted" in proc.stdout


def test_every_commands_json_reply_matches_its_schema(sandbox):
    from tests.reply_schemas import check_reply

    manifest = sandbox.example("connect-policy.yaml")
    name = yaml.safe_load(manifest.read_text())["name"]
    check_reply("plan", sandbox.cli_json("plan", manifest))
    applied = sandbox.cli_json("apply", manifest)
    check_reply("apply", applied)
    assert applied["applied"] is True and applied["mutations"] > 0
    check_reply("apply", sandbox.cli_json("apply", manifest, "--check"))
    check_reply("status", sandbox.cli_json("status", manifest))
    listing = sandbox.cli_json("status")
    check_reply("status-list", listing)
    assert name in [d["name"] for d in listing["deployments"]]
    dump = sandbox.cli_json("dump", name, "port_rewrites")
    check_reply("dump", dump)
    assert dump["entries"]
    check_reply("probe-features", sandbox.cli_json("probe", "features"))
    check_reply("probe-features", sandbox.cli_json("probe", "features", "--program-types"))
    check_reply("probe-check", sandbox.cli_json("probe", "check", manifest))
    missing = sandbox.cli("dump", name, "no_such_map", "--json", check=False)
    assert missing.returncode == 1
    check_reply("error", json.loads(missing.stdout))
    destroyed = sandbox.cli_json("destroy", manifest)
    check_reply("apply", destroyed)
    assert destroyed["applied"] is True


def test_probe_tables_fit_80_columns_without_an_ellipsis(sandbox):
    shown = _on_a_terminal(sandbox, ["probe", "features"])
    assert "Program types" in shown and "sock_ops" in shown
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
