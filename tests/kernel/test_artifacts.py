"""Build once, deploy everywhere: artifacts deploy with clang hidden, agree with local builds, and
a changed object or a bad signature is refused with nothing changed on the kernel.

"Without clang" is a mount namespace of the bpfdeploy process where clang's binary is
masked by /dev/null (so it is neither found on PATH nor executable), and the process runs
under strace, whose log of every execve must name no clang.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.traffic import ECHO
from tests.reply_schemas import check_reply

# Run argv[2:] in a new mount namespace in which each path of argv[1] (':'-separated) is masked.
_MASKED = r"""
import ctypes, os, subprocess, sys
CLONE_NEWNS = 0x00020000
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(CLONE_NEWNS) != 0:
    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
for path in sys.argv[1].split(":"):
    subprocess.run(["mount", "--bind", "/dev/null", path], check=True)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _clang_binary() -> str:
    return os.path.realpath(shutil.which("clang"))


def cli_without_clang(sandbox, *args: str, check: bool = True) -> tuple[subprocess.CompletedProcess, list[str]]:
    """bpfdeploy with clang masked, under strace; returns the process and every execve it made."""
    log = sandbox.tmp / f"execve-{len(list(sandbox.tmp.glob('execve-*')))}.log"
    argv = [sys.executable, "-c", _MASKED, _clang_binary(),
            "strace", "-f", "-qq", "-e", "trace=execve", "-o", str(log),
            sys.executable, "-m", "bpfdeploy.cli", *map(str, args)]
    proc = subprocess.run(argv, env=sandbox.env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"bpfdeploy {' '.join(map(str, args))} (no clang) exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    execs = [ln for ln in log.read_text().splitlines() if "execve(" in ln]
    return proc, execs


@pytest.fixture(autouse=True)
def _tools(kernel_ready):
    for tool in ("strace", "ssh-keygen", "unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed by the artifact tests (scripts/bootstrap.sh installs it)", pytrace=False)


def _root(manifest: Path) -> Path:
    return Path(yaml.safe_load(manifest.read_text())["pin_root"])


def _cgroup(manifest: Path) -> Path:
    return Path(yaml.safe_load(manifest.read_text())["attachments"][0]["cgroup"]["path"])


def _snapshot(root: Path) -> dict:
    links = json.loads(subprocess.run(["bpftool", "-j", "-f", "link", "show"], capture_output=True,
                                      text=True).stdout or "[]")
    return {"progs": prog_ids_under(root),
            "links": sorted((ln["id"], ln["prog_id"]) for ln in links
                            if any(p.startswith(str(root) + "/") for p in ln.get("pinned", ()))),
            "pins": sorted(str(p) for p in root.rglob("*")) if root.exists() else None}


def _packets(root: Path) -> int:
    values = map_values(root / "maps" / "traffic")
    return values[0]["packets"] + values[1]["packets"]


def test_artifacts_deploy_without_clang_and_agree_with_a_local_build(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root, out = _root(manifest), sandbox.tmp / "artifacts"
    built = sandbox.cli_json("build", manifest, "--out", out)
    check_reply("build", built)
    assert {o["object"] for o in built["objects"]} == {"counters"}

    # A host without clang: the objects come from the artifacts; clang is never started.
    proc, execs = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--json")
    reply = json.loads(proc.stdout)
    check_reply("apply", reply)
    assert reply["applied"] and reply["mutations"] > 0
    assert reply["plan"]["artifacts"]["directory"] == str(out)
    assert reply["plan"]["artifacts"]["signature"] == "unsigned"
    assert [o["object"] for o in reply["plan"]["artifacts"]["objects"]] == ["counters"]
    assert not [c for c in reply["commands"] if "clang" in " ".join(c)], reply["commands"]
    assert execs and not [e for e in execs if "clang" in e], [e for e in execs if "clang" in e]
    assert any("bpftool" in e for e in execs)  # the log does see the children it should
    netns = sandbox.netns()
    sandbox.run_in(ECHO.format(n=3), cgroup=_cgroup(manifest), netns=netns)
    assert _packets(root) > 0  # the deployed programs count the cgroup's traffic

    # A host that builds locally records the same digests: nothing to change, either way round.
    local = sandbox.cli_json("plan", manifest)
    assert local["changes"] is False and local["artifacts"] is None, local["actions"]
    proc, _ = cli_without_clang(sandbox, "plan", manifest, "--artifacts", out, "--detailed-exitcode")
    assert "No changes." in proc.stdout and "objects from artifacts" in proc.stdout

    # The reverse: deployed from a local build, then planned from the artifacts without clang.
    sandbox.cli("destroy", manifest)
    assert not root.exists()
    sandbox.cli("apply", manifest)
    before = _snapshot(root)
    proc, execs = cli_without_clang(sandbox, "plan", manifest, "--artifacts", out, "--json")
    planned = json.loads(proc.stdout)
    assert planned["changes"] is False, [a for a in planned["actions"] if a["action"] != "no-op"]
    assert not [e for e in execs if "clang" in e]
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--json")
    assert json.loads(proc.stdout)["mutations"] == 0
    assert _snapshot(root) == before


def test_a_changed_object_is_refused_and_nothing_changes(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root, cgroup = _root(manifest), _cgroup(manifest)
    out, bad = sandbox.tmp / "artifacts", sandbox.tmp / "tampered"
    sandbox.cli("build", manifest, "--out", out)
    shutil.copytree(out, bad)
    obj = bad / "objects" / "counters.o"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte
    obj.write_bytes(bytes(data))
    expected = json.loads((out / "artifacts.json").read_text())["objects"]["counters"]["sha256"]

    # A fresh host: refused before anything is made (no pin root, no cgroup).
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", bad, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert str(obj) in proc.stderr and "'counters'" in proc.stderr and expected in proc.stderr
    assert not root.exists() and not cgroup.exists()

    # A deployed host: refused, and the kernel is as it was.
    cli_without_clang(sandbox, "apply", manifest, "--artifacts", out)
    before = _snapshot(root)
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", bad, "--json", check=False)
    reply = json.loads(proc.stdout)
    check_reply("error", reply)
    assert proc.returncode == 1 and reply["diagnostics"][0]["file"] == str(obj)
    assert expected in reply["diagnostics"][0]["message"]
    assert _snapshot(root) == before
    proc, _ = cli_without_clang(sandbox, "plan", manifest, "--artifacts", bad, check=False)
    assert proc.returncode == 1


def _keypair(tmp: Path, name: str, principal: str) -> tuple[Path, Path]:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(key)], check=True,
                   stdin=subprocess.DEVNULL)
    kind, blob = (tmp / f"{name}.pub").read_text().split()[:2]
    signers = tmp / f"{name}.allowed_signers"
    signers.write_text(f"{principal} {kind} {blob}\n")
    return key, signers


def test_a_manifest_that_requires_a_signature_refuses_unsigned_and_badly_signed_artifacts(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    data = yaml.safe_load(manifest.read_text())
    data["artifacts"] = {"require_signature": True}
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    root, cgroup = _root(manifest), _cgroup(manifest)
    key, signers = _keypair(sandbox.tmp, "release", "release@example.org")
    intruder, _ = _keypair(sandbox.tmp, "intruder", "release@example.org")
    out = sandbox.tmp / "artifacts"

    sandbox.cli("build", manifest, "--out", out)  # unsigned
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, check=False)
    assert proc.returncode == 1 and "artifacts.require_signature" in proc.stderr  # no allowed_signers at all
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--allowed-signers", signers,
                                check=False)
    assert proc.returncode == 1 and "not signed" in proc.stderr
    assert not root.exists() and not cgroup.exists()

    sandbox.cli("build", manifest, "--out", out, "--sign-key", intruder)  # signed by a key not allowed
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--allowed-signers", signers,
                                check=False)
    assert proc.returncode == 1 and "bad signature" in proc.stderr and str(out / "artifacts.json.sig") in proc.stderr
    assert not root.exists() and not cgroup.exists()

    sandbox.cli("build", manifest, "--out", out, "--sign-key", key)
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--allowed-signers", signers, "--json")
    reply = json.loads(proc.stdout)
    check_reply("apply", reply)
    arts = reply["plan"]["artifacts"]
    assert arts["signature"] == "good" and arts["principal"] == "release@example.org"
    before = _snapshot(root)
    netns = sandbox.netns()
    sandbox.run_in(ECHO.format(n=2), cgroup=cgroup, netns=netns)
    assert _packets(root) > 0

    # The signed index changed afterwards (one byte of its text): refused, nothing changes.
    index = out / "artifacts.json"
    index.write_text(index.read_text().replace('"bpfdeploy_version": "', '"bpfdeploy_version": "9', 1))
    proc, _ = cli_without_clang(sandbox, "apply", manifest, "--artifacts", out, "--allowed-signers", signers,
                                check=False)
    assert proc.returncode == 1 and "bad signature" in proc.stderr
    assert _snapshot(root) == before


def test_a_plan_saved_from_artifacts_is_carried_out_from_them_and_checked_again(sandbox):
    manifest = sandbox.example("cgroup-counters.yaml")
    root = _root(manifest)
    key, signers = _keypair(sandbox.tmp, "release", "release@example.org")
    out, saved = sandbox.tmp / "artifacts", sandbox.tmp / "plan.json"
    sandbox.cli("build", manifest, "--out", out, "--sign-key", key)
    cli_without_clang(sandbox, "plan", manifest, "--artifacts", out, "--allowed-signers", signers, "--out", saved)
    assert json.loads(saved.read_text())["artifacts"] == str(out)

    obj = out / "objects" / "counters.o"
    good = obj.read_bytes()
    obj.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # changed after the plan was saved
    proc, _ = cli_without_clang(sandbox, "apply", saved, check=False)
    assert proc.returncode == 1 and str(obj) in proc.stderr
    assert not root.exists()

    obj.write_bytes(good)
    proc, execs = cli_without_clang(sandbox, "apply", saved, "--json")
    reply = json.loads(proc.stdout)
    assert reply["applied"] and reply["plan"]["artifacts"]["signature"] == "good"
    assert not [e for e in execs if "clang" in e]
    assert prog_ids_under(root)
