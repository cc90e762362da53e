"""Issue 17 (an independent attack run): each finding without a kernel effect, kept as a test.

Items 1, 2 and 9 change the kernel and are tested in tests/kernel/test_confinement.py; their
planner side (symlinks, unowned and nested pins) is in tests/unit/test_plan.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bpfdeploy.diagnostics import ManifestError
from bpfdeploy.manifest import load_manifest
from bpfdeploy.manifest.checks import build_manifest
from bpfdeploy.manifest.load import load_raw

REPO = Path(__file__).resolve().parents[2]
COUNTERS_SRC = REPO / "bpf" / "cgroup-counters" / "counters.bpf.c"


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    (root / "existing").mkdir(parents=True)
    return root


def manifest(tmp_path: Path, **changes) -> Path:
    data = {"version": 1, "name": "hardening", "objects": {"counters": {"source": str(COUNTERS_SRC)}}}
    data.update(changes)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))  # safe_dump escapes control characters: the YAML is valid
    return path


def errors_of(path: Path, cgroup_root: Path) -> list:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=cgroup_root)
    diags = info.value.diagnostics
    assert all(d.file == str(path) and d.message for d in diags)
    return [d for d in diags if d.severity == "error"]


# ---------------------------------------------------------------- item 4: a pin root with a dot


def test_a_pin_root_with_a_dot_is_one_clear_error_not_a_crash(tmp_path, cgroup_root):
    """bpffs answers EPERM to a lookup of a name with a dot; the symlink check asked it anyway."""
    for value in ("/sys/fs/bpf/a.b/c", "/sys/fs/bpf/bpfdeploy/x.y", "/sys/fs/bpf/../etc"):
        path = manifest(tmp_path, pin_root=value)
        errors = errors_of(path, cgroup_root)
        assert any(d.path == "pin_root" and "may not contain '.' or '..'" in d.message for d in errors), errors
        # The checks alone, schema aside: one diagnostic, nothing raised.
        _, problems = build_manifest(load_raw(path), cgroup_root)
        assert [d.message for d in problems if d.path == "pin_root"] == [
            f"pin_root {value!r} may not contain '.' or '..'"]


# ---------------------------------------------------------------- item 5: control characters


CONTROL = ["\n", "\x00", "\t", "\r", "\x1b", "\x7f"]


@pytest.mark.parametrize("char", CONTROL, ids=repr)
def test_control_characters_are_refused_in_the_pin_root(tmp_path, cgroup_root, char):
    path = manifest(tmp_path, pin_root=f"/sys/fs/bpf/bdt-ctl{char}x")
    errors = errors_of(path, cgroup_root)
    assert any(d.path == "pin_root" and f"U+{ord(char):04X}" in d.message and "control characters" in d.message
               for d in errors), errors


@pytest.mark.parametrize("field,value,where", [
    ("name", "ctl\n", "name"),  # the schema's pattern ends in $, which Python lets match before a final newline
    ("objects", {"counters": {"source": f"{COUNTERS_SRC}\n"}}, "objects.counters.source"),
    ("objects", {"counters": {"source": str(COUNTERS_SRC), "include_dirs": ["/usr\x00/include"]}},
     "objects.counters.include_dirs[0]"),
    ("attachments", [{"program": "count_ingress", "type": "ingress", "cgroup": "existing\n"}], "attachments[0].cgroup"),
    ("attachments", [{"program": "count_ingress", "type": "xdp", "device": "lo\tx"}], "attachments[0].device"),
    ("attachments", [{"name": "a\nb", "program": "count_ingress", "type": "ingress", "cgroup": "existing"}],
     "attachments[0].name"),
], ids=["name", "source", "include_dir", "cgroup", "device", "attachment-name"])
def test_control_characters_are_refused_in_every_name_and_path(tmp_path, cgroup_root, field, value, where):
    path = manifest(tmp_path, **{field: value})
    errors = errors_of(path, cgroup_root)
    assert any(d.path == where and "control characters" in d.message for d in errors), errors
    _, problems = build_manifest(load_raw(path), cgroup_root)  # the checks refuse it too, not only the schema
    assert any(d.path == where and "control characters" in d.message for d in problems), problems


def test_control_characters_in_mapping_keys_and_free_text(tmp_path, cgroup_root):
    path = manifest(tmp_path, description="two\nlines\tare fine here",
                    objects={"counters": {"source": str(COUNTERS_SRC), "programs": {"count\ningress": None}}})
    errors = errors_of(path, cgroup_root)
    assert any("control characters" in d.message and d.path.startswith("objects.counters.programs") for d in errors)
    assert not any(d.path == "description" for d in errors)


# ---------------------------------------------------------------- item 6: huge sources and objects


@pytest.mark.parametrize("key", ["source", "file"])
def test_a_file_over_the_input_limit_is_refused_before_it_is_read(tmp_path, cgroup_root, key, monkeypatch):
    huge = tmp_path / ("huge.bpf.c" if key == "source" else "huge.o")
    with open(huge, "wb") as fh:
        fh.truncate(3 * 1024 ** 3)  # 3 GB, sparse: reading it whole was a MemoryError after 18 s
    path = manifest(tmp_path, objects={"huge": {key: str(huge)}})
    errors = errors_of(path, cgroup_root)
    assert any(d.path == f"objects.huge.{key}" and "3.0 GiB" in d.message and "over the limit of 64.0 MiB" in d.message
               and "BPFDEPLOY_MAX_INPUT_BYTES" in d.message and d.line for d in errors), errors
    # The limit is a setting.
    monkeypatch.setenv("BPFDEPLOY_MAX_INPUT_BYTES", str(4 * 1024 ** 3))
    from bpfdeploy.manifest.checks import build_manifest as checks_only

    _, problems = checks_only(load_raw(path), cgroup_root)
    assert not any("over the limit" in d.message for d in problems)


def test_the_build_hashes_in_chunks_and_refuses_a_header_over_the_limit(tmp_path, monkeypatch):
    import hashlib

    from bpfdeploy import build
    from bpfdeploy.manifest.model import ObjectSpec

    source = tmp_path / "prog.bpf.c"
    header = tmp_path / "big.h"
    source.write_text('#include "big.h"\n')
    header.write_bytes(b"/* */\n" * 2000)
    reads = []
    real_read = build.os.fdopen

    def counting_fdopen(fd, mode="r", *a, **kw):
        fh = real_read(fd, mode, *a, **kw)
        original = fh.read
        fh.read = lambda n=-1: (reads.append(n), original(n))[1]
        return fh

    monkeypatch.setattr(build.os, "fdopen", counting_fdopen)
    h = hashlib.sha256()
    build.hash_input(h, header)
    assert h.hexdigest() == hashlib.sha256(header.read_bytes()).hexdigest()
    assert reads and all(0 < n <= build_limits().READ_CHUNK for n in reads)  # never read(-1): never whole
    monkeypatch.setenv("BPFDEPLOY_MAX_INPUT_BYTES", "1000")
    obj = ObjectSpec(name="prog", source=source, file=None, cflags=(), include_dirs=(), defines=(), vmlinux_h=False,
                     programs=None, map_renames=(), where=("objects", "prog"))
    with pytest.raises(build.InputRefused, match="over the limit"):
        build.object_digest(obj)
    monkeypatch.undo()
    fifo = tmp_path / "fifo.h"
    os.mkfifo(fifo)
    with pytest.raises(build.InputRefused, match="not a regular file"):
        build.hash_input(hashlib.sha256(), fifo)  # and it did not wait for a writer


def build_limits():
    from bpfdeploy import limits

    return limits


# ---------------------------------------------------------------- item 7: huge manifests


def test_a_manifest_over_the_size_limit_is_refused_with_a_clear_message(tmp_path, cgroup_root):
    path = tmp_path / "big.yaml"
    path.write_text("version: 1\nname: big\nobjects: {}\n" + "# padding\n" * 1_100_000)  # about 11 MB: it used to apply
    with pytest.raises(ManifestError) as info:
        load_manifest(path, cgroup_root=cgroup_root)
    (d,) = info.value.diagnostics
    assert d.file == str(path) and "the manifest is 10.5 MiB" in d.message and "over the limit of 1.0 MiB" in d.message


def test_the_node_limit_says_what_it_counted(tmp_path, cgroup_root, monkeypatch):
    from bpfdeploy.manifest import load as load_module

    monkeypatch.setattr(load_module, "MAX_NODES", 500)
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\nname: plain\nobjects: {}\nmaps:\n" + "".join(f"  k{i}: {{}}\n" for i in range(600)))
    with pytest.raises(ManifestError) as info:
        load_raw(plain)
    (d,) = info.value.diagnostics
    assert "has more than 500 nodes (keys, values and list items)" in d.message and "alias" not in d.message
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n")
    with pytest.raises(ManifestError) as info:
        load_raw(bomb)
    (d,) = info.value.diagnostics
    assert "through its aliases" in d.message


def test_a_manifest_that_is_a_fifo_or_a_device_is_not_read_forever(tmp_path, cgroup_root):
    with pytest.raises(ManifestError) as info:
        load_manifest(Path("/dev/zero"), cgroup_root=cgroup_root)
    assert "over the limit" in info.value.diagnostics[0].message


# ---------------------------------------------------------------- item 8: "No changes" after errors


def test_a_plan_with_errors_never_says_no_changes(capsys):
    from bpfdeploy.diagnostics import Diagnostic
    from bpfdeploy.plan import Plan
    from bpfdeploy.render import human

    errors = (Diagnostic("attach/x: a foreign program is attached there", "m.yaml", "attachments[0]", 9),)
    human.plan(Plan("dep", "/sys/fs/bpf/x", (), errors))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "No changes" not in text and "kernel matches" not in text
    assert "1 error(s); nothing would be changed" in text
    human.plan(Plan("dep", "/sys/fs/bpf/x", ()))
    assert "No changes." in capsys.readouterr().out


# ---------------------------------------------------------------- item 10: the smaller findings


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_source_that_is_not_a_regular_file_says_what_it_is(tmp_path, cgroup_root, kind):
    target = tmp_path / "thing"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    else:
        target = Path("/dev/null")
    expected = {"fifo": "is a FIFO (named pipe), not a regular file", "directory": "is a directory, not a regular file",
                "device": "is a character device, not a regular file"}[kind]
    for key in ("source", "file"):
        path = manifest(tmp_path, objects={"o": {key: str(target)}})
        errors = errors_of(path, cgroup_root)
        assert any(d.path == f"objects.o.{key}" and expected in d.message for d in errors), errors
        assert not any("not found" in d.message for d in errors)
    path = manifest(tmp_path, objects={"o": {"source": str(COUNTERS_SRC), "include_dirs": [str(COUNTERS_SRC)]}})
    assert any(d.path == "objects.o.include_dirs[0]" and "is a regular file, not a directory" in d.message
               for d in errors_of(path, cgroup_root))


def test_the_lock_message_never_says_pid_question_mark(tmp_path):
    import fcntl

    from bpfdeploy.lock import LockTimeout, deployment_lock

    lock_file = tmp_path / "dep.lock"
    for content, expected in ((b"", "its pid is not written yet"), (b"999999999\n", "its pid is not written yet"),
                              (f"{os.getpid()}\n".encode(), f"pid {os.getpid()}")):
        lock_file.write_bytes(content)
        holder = os.open(lock_file, os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)  # another holder that has not written its pid (or an old one's)
        try:
            with pytest.raises(LockTimeout) as info:
                with deployment_lock("dep", 0, directory=tmp_path):
                    pass
            assert "pid ?" not in str(info.value) and expected in str(info.value), str(info.value)
        finally:
            os.close(holder)
    with deployment_lock("dep", 0, directory=tmp_path):
        assert lock_file.read_text() == f"{os.getpid()}\n"


def test_metrics_once_with_a_textfile_writes_the_textfile_not_stdout(tmp_path, monkeypatch, capsys):
    from prometheus_client.core import GaugeMetricFamily

    from bpfdeploy import cli, metrics, workflow

    class OneGauge:
        def __init__(self, prepared, status):
            pass

        def collect(self):
            yield GaugeMetricFamily("bpfdeploy_test_gauge", "a test gauge", value=7)

    monkeypatch.setattr(workflow, "require_root", lambda: None)
    monkeypatch.setattr(workflow, "prepare", lambda *a, **kw: None)
    monkeypatch.setattr(workflow, "status_of", lambda *a, **kw: None)
    monkeypatch.setattr(metrics, "DeploymentCollector", OneGauge)
    out = tmp_path / "bpfdeploy.prom"
    assert cli.main(["metrics", str(tmp_path / "m.yaml"), "--textfile", str(out), "--once"]) == 0
    assert "bpfdeploy_test_gauge 7.0" in out.read_text()
    assert "bpfdeploy_test_gauge" not in capsys.readouterr().out
    assert cli.main(["metrics", str(tmp_path / "m.yaml"), "--once"]) == 0
    assert "bpfdeploy_test_gauge 7.0" in capsys.readouterr().out


def test_the_reference_does_not_contradict_itself_on_globals():
    text = (REPO / "docs" / "manifest.md").read_text()
    assert "### `globals`" in text
    assert "there is no\n  `globals` field" not in text and "no `globals` field" not in text
    assert "There is no field to set global variables" not in text


def test_apply_of_an_endless_or_huge_file_is_not_read_whole(tmp_path):
    """apply FILE first asks whether FILE is a saved plan: that read had no limit either."""
    import signal

    from bpfdeploy.workflow import read_saved_plan

    def too_slow(*_):
        raise TimeoutError("read_saved_plan kept reading")

    old = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(20)
    try:
        assert read_saved_plan(Path("/dev/zero")) is None
        huge = tmp_path / "plan.json"
        with open(huge, "wb") as fh:
            fh.write(b"{")
            fh.truncate(3 * 1024 ** 3)
        assert read_saved_plan(huge) is None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- item 1, at removal time


def test_a_pin_is_removed_only_through_real_directories_of_the_pin_root(tmp_path):
    """The plan checks the pin root; apply checks again with lstat right before each removal,
    since BPF_OBJ_GET (the detach) and unlink follow a symlink put in the way since."""
    from bpfdeploy.diagnostics import KernelError
    from bpfdeploy.kernel.apply import confined

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "maps").mkdir(parents=True)
    outside.mkdir()
    (root / "maps" / "ours").write_text("")
    (outside / "theirs").write_text("")
    confined(root, str(root / "maps" / "ours"))
    confined(root, str(root / "maps" / "gone"))  # already gone: nothing to do, no error
    (root / "maps" / "alias").symlink_to(outside / "theirs")
    with pytest.raises(KernelError, match="is a symlink"):
        confined(root, str(root / "maps" / "alias"))
    (root / "links").symlink_to(outside)
    with pytest.raises(KernelError, match="symlink"):
        confined(root, str(root / "links" / "theirs"))
    with pytest.raises(KernelError, match="outside the pin root"):
        confined(root, str(outside / "theirs"))
    assert (outside / "theirs").exists()
