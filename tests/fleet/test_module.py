"""The modules themselves, fast: run in this process (like Ansible runs them on a host) or with
ansible_connection=local, against the real kernel in a sandbox (own pin root and cgroup)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet.fleet import REPO
from tests.kernel.conftest import Sandbox, build_cache, kernel_ready, sandbox  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.fleet, pytest.mark.kernel]

COLLECTIONS = REPO / "ansible/collections"
SOURCE = REPO / "tests/fleet/data/bpf/fleet_count.bpf.c"


@pytest.fixture
def modules(monkeypatch):
    pytest.importorskip("ansible")
    monkeypatch.syspath_prepend(str(COLLECTIONS))
    from ansible_collections.bpfdeploy.ebpf.plugins.modules import deployment, probe

    return {"deployment": deployment, "probe": probe}


def run_module(module, monkeypatch, args: dict, check: bool = False, diff: bool = False) -> dict:
    """One module run in this process, as AnsiballZ would run it on the target; its JSON result."""
    from ansible.module_utils import basic

    payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check, "_ansible_diff": diff}}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps(payload).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        module.main()
    return json.loads(out.getvalue())


def manifest(sandbox, version: int = 1, extra: str = "") -> Path:
    name = f"{sandbox.id}-fleet"
    cg = sandbox.cgroup("app", create=False)
    return sandbox.write(f"""\
        version: 1
        name: {name}
        pin_root: {sandbox.pin_root(name)}
        objects:
          counters:
            source: {SOURCE}
            defines: {{FLEET_VERSION: {version}}}
        attachments:
          - program: fleet_egress
            type: egress
            cgroup: {{path: {cg}, create: true}}
        {extra}
        """, f"fleet-v{version}.yaml")


def bundle_args(path: Path, **kw) -> dict:
    from ansible_collections.bpfdeploy.ebpf.plugins.module_utils.bundle import collect

    return {"manifest": str(path), "_bundle": collect(str(path)), **kw}


def kernel_view(sandbox, root: Path) -> tuple:
    pins = sorted(str(p) for p in root.rglob("*")) if root.exists() else []
    progs = subprocess.run(["bpftool", "-j", "-f", "prog", "show"], capture_output=True, text=True).stdout
    ours = sorted((p["id"], tuple(p.get("pinned", ()))) for p in json.loads(progs)
                  if any(x.startswith(str(root)) for x in p.get("pinned", ())))
    return pins, ours


def test_check_mode_makes_no_mutating_call(sandbox, modules, monkeypatch, tmp_path):
    """Check mode is the plan: changed is truthful, the kernel applier is never entered, every
    external command is a read, and the kernel and the state directory are as before."""
    v1 = manifest(sandbox, 1)
    state = tmp_path / "mstate"
    first = run_module(modules["deployment"], monkeypatch, bundle_args(v1, state_dir=str(state)))
    assert first["changed"] and first["mutations"] > 0 and first["status"]["healthy"], first
    from bpfdeploy.plan import PLAN_FORMAT

    assert first["plan"]["format_version"] == PLAN_FORMAT  # the same reply as plan --json

    import bpfdeploy.kernel.apply as kernel_apply
    import bpfdeploy.workflow as workflow
    from bpfdeploy.kernel import runner

    def refuse(*_a, **_k):
        raise AssertionError("a mutating path was entered in check mode")

    monkeypatch.setattr(kernel_apply, "apply", refuse)
    monkeypatch.setattr(kernel_apply, "ensure_bpffs", refuse)
    monkeypatch.setattr(workflow, "apply_deployment", refuse)
    calls_before = len(runner.calls)
    v2 = manifest(sandbox, 2)
    before = kernel_view(sandbox, Path(first["plan"]["pin_root"]))
    state_before = sorted((str(p), p.stat().st_mtime_ns) for p in state.rglob("*"))
    checked = run_module(modules["deployment"], monkeypatch, bundle_args(v2, state_dir=str(state)), check=True)
    assert checked["changed"] is True and checked["mutations"] == 0 and checked["actions"] == []
    assert {a["action"] for a in checked["plan"]["actions"]} >= {"replace", "update"}
    commands = [c for c in runner.calls[calls_before:]]
    reads = {"show", "feature", "version", "lookup", "dump", "list"}
    for argv in commands:
        if argv[0] == "bpftool":
            assert reads & set(argv), f"not a read: {argv}"
        else:
            assert argv[0] in ("clang", "llvm-strip", "uname"), f"unexpected command in check mode: {argv}"
    assert kernel_view(sandbox, Path(first["plan"]["pin_root"])) == before
    assert sorted((str(p), p.stat().st_mtime_ns) for p in state.rglob("*")) == state_before
    # and the same release again in check mode: nothing would change
    again = run_module(modules["deployment"], monkeypatch, bundle_args(v1, state_dir=str(state)), check=True)
    assert again["changed"] is False, again["plan"]


def test_diff_mode_shows_programs_maps_attachments_with_build_digests(sandbox, modules, monkeypatch, tmp_path):
    v1 = manifest(sandbox, 1)
    args = dict(state_dir=str(tmp_path / "mstate"))
    run_module(modules["deployment"], monkeypatch, bundle_args(v1, **args))
    out = run_module(modules["deployment"], monkeypatch, bundle_args(manifest(sandbox, 2), **args),
                     check=True, diff=True)
    before, after = out["diff"]["before"], out["diff"]["after"]
    assert set(before) == set(after) == {"programs", "maps", "attachments"}
    assert before["programs"]["fleet_egress"]["build"] != after["programs"]["fleet_egress"]["build"]
    assert len(after["programs"]["fleet_egress"]["build"]) == 12
    assert before["maps"] == after["maps"] == {"fleet_traffic": {
        "geometry": "array key 4B value 16B max_entries 3 flags 0x0"}}
    name = next(iter(after["attachments"]))
    assert after["attachments"][name]["program"] == "fleet_egress"
    assert "egress on cgroup" in after["attachments"][name]["hook"]


def test_errors_are_reported_with_file_line_and_path_and_a_failed_apply_is_rolled_back(
        sandbox, modules, monkeypatch, tmp_path):
    bad = sandbox.write(f"""\
        version: 1
        name: {sandbox.id}-bad
        pin_root: {sandbox.pin_root(sandbox.id + '-bad')}
        objects:
          counters: {{source: {SOURCE}}}
        attachments:
          - program: fleet_egress
            type: egres
            cgroup: {{path: {sandbox.cgroup('bad', create=False)}, create: true}}
        """, "bad.yaml")
    out = run_module(modules["deployment"], monkeypatch, bundle_args(bad, state_dir=str(tmp_path / "s")))
    assert out["failed"] and "exception" not in out
    diag = next(d for d in out["diagnostics"] if d["path"] == "attachments[0].type")
    assert diag["line"] == 8 and "egres" in diag["message"]
    assert diag["file"] == str(bad)  # the file as the operator knows it, not the release copy on the host
    assert "attachments[0].type" in out["msg"] and f"{bad}:8" in out["msg"] and "releases/" not in out["msg"]

    v1 = manifest(sandbox, 1)
    monkeypatch.setenv("BPFDEPLOY_FAIL_AT", "attach/" + "fleet_egress-egress-" + f"{sandbox.id}-app")
    failed = run_module(modules["deployment"], monkeypatch, bundle_args(v1, state_dir=str(tmp_path / "s")))
    assert failed["failed"] and failed["rolled_back"] is True, failed
    assert "injected failure" in failed["msg"] and failed["failed_step"].startswith("create attach/")
    assert not Path(failed["plan"]["pin_root"]).exists() or not any(Path(failed["plan"]["pin_root"]).rglob("*"))
    # the failed release did not become the host's current one
    assert not (tmp_path / "s/ansible/deployments").exists() or not any((tmp_path / "s/ansible/deployments").iterdir())


def test_rollback_goes_to_the_previous_release_with_map_contents(sandbox, modules, monkeypatch, tmp_path):
    args = dict(state_dir=str(tmp_path / "mstate"))
    v1, v2 = manifest(sandbox, 1), manifest(sandbox, 2)
    first = run_module(modules["deployment"], monkeypatch, bundle_args(v1, **args))
    cg = Path(sandbox.cgroups[-1])
    send = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" \
           "[s.sendto(b'x', ('127.0.0.1', 9)) for _ in range(10)]"
    sandbox.run_in(send, cgroup=cg)
    from tests.kernel.conftest import map_values

    maps = Path(first["plan"]["pin_root"]) / "maps/fleet_traffic"
    counted = map_values(maps)[1]["packets"]
    assert counted >= 10
    second = run_module(modules["deployment"], monkeypatch, bundle_args(v2, **args))
    assert second["changed"] and second["release"]["previous"] == first["release"]["current"]
    back = run_module(modules["deployment"], monkeypatch, bundle_args(v2, rollback=True, **args))
    assert back["changed"] and back["release"]["current"] == first["release"]["current"]
    assert back["release"]["last_failed"] == second["release"]["current"] and back["release"]["previous"] is None
    sandbox.run_in(send, cgroup=cg)
    values = map_values(maps)
    assert values[1]["packets"] >= counted + 10 and values[2]["packets"] == 1  # release 1 counts, contents kept
    none_left = run_module(modules["deployment"], monkeypatch, bundle_args(v2, rollback=True, **args))
    assert none_left["failed"] and "no previous release" in none_left["msg"]
    gone = run_module(modules["deployment"], monkeypatch, bundle_args(v1, state="absent", **args))
    assert gone["changed"] and not Path(first["plan"]["pin_root"]).exists()


def test_a_host_without_the_library_gets_a_clear_error_naming_it(fleet_ready, tmp_path):
    """ansible_connection=local with a python that has no bpfdeploy: a message, not a traceback."""
    python = "/usr/bin/python3"
    if subprocess.run([python, "-c", "import bpfdeploy"], capture_output=True, cwd=tmp_path).returncode == 0:
        pytest.skip(f"{python} can import bpfdeploy here")
    env = {"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "PATH": f"{REPO / '.venv/bin'}:/usr/bin:/bin"}
    out = subprocess.run([str(REPO / ".venv/bin/ansible"), "localhost", "-c", "local", "-i", "localhost,",
                          "-e", f"ansible_python_interpreter={python}", "-e", f"ansible_remote_tmp={tmp_path / 'remote'}",
                          "-m", "bpfdeploy.ebpf.probe"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    import socket

    assert f"bpfdeploy is not installed for the Python that runs this module on host {socket.gethostname()}" \
        in out.stdout
    assert "Traceback" not in out.stdout + out.stderr and '"missing_library": true' in out.stdout


def test_probe_gates_a_manifest_the_host_cannot_run(sandbox, modules, monkeypatch):
    facts = run_module(modules["probe"], monkeypatch, {})
    assert facts["ansible_facts"]["bpfdeploy_features"]["kernel"]
    fits = run_module(modules["probe"], monkeypatch, {"check": "manifest", **bundle_args(manifest(sandbox, 1))})
    assert fits["fits"] is True and not fits.get("failed")
    too_new = manifest(sandbox, 3, extra='requires: {kernel: "99.0"}')
    refused = run_module(modules["probe"], monkeypatch, {"check": "manifest", **bundle_args(too_new)})
    assert refused["failed"] and refused["fits"] is False
    assert any(d["path"] == "requires.kernel" and d["file"] == str(too_new) for d in refused["diagnostics"])
    assert "99.0" in refused["msg"] and "bpfdeploy-release-" not in refused["msg"]


def test_ansible_doc_renders_both_modules_and_the_collection_builds(fleet_ready, tmp_path):
    env = {"ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_HOME": str(tmp_path), "ANSIBLE_NOCOLOR": "1",
           "PATH": f"{REPO / '.venv/bin'}:/usr/bin:/bin"}
    for module, option in (("deployment", "allow_map_recreate"), ("probe", "check")):
        out = subprocess.run([str(REPO / ".venv/bin/ansible-doc"), f"bpfdeploy.ebpf.{module}"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "ERROR" not in out.stderr, out.stderr
        assert f"MODULE bpfdeploy.ebpf.{module}" in out.stdout and option in out.stdout
        assert "ATTRIBUTES" in out.stdout and "check_mode" in out.stdout and "RETURN VALUES" in out.stdout
    built = subprocess.run([str(REPO / ".venv/bin/ansible-galaxy"), "collection", "build", "--output-path",
                            str(tmp_path), str(COLLECTIONS / "ansible_collections/bpfdeploy/ebpf")], env=env,
                           capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    import tarfile

    with tarfile.open(tmp_path / "bpfdeploy-ebpf-0.1.0.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"plugins/modules/deployment.py", "plugins/action/deployment.py", "plugins/module_utils/engine.py",
            "roles/install/tasks/main.yml", "meta/runtime.yml"} <= names
    assert not [n for n in names if "__pycache__" in n]
