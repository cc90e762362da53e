#!/usr/bin/env python3
"""bpfdeploy benchmark (issues 10 and 16): bpfdeploy against the naive bpftool script (A), the
same lines in one `bpftool batch` process (B) and one Python process calling libbpf (C).

    python bench/run.py [--quick] [--sizes 1,10,200,1000,2000] [--runs 7] [--big-runs 3]     (as root)

Workload for each N: N cgroup_skb ingress counters, each in its own object and attached to
its own cgroup, all sharing one pinned array map (`bench_counters`); plus the same N
programs in one object. Everything lives under a scratch pin root
(/sys/fs/bpf/bpfdeploy-bench/<run id>/) and a scratch cgroup subtree
(<cgroup2>/bpfdeploy-bench-<run id>/), removed at the end, on failure and on Ctrl-C.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_PY = REPO / ".venv" / "bin" / "python"
BPFDEPLOY = REPO / ".venv" / "bin" / "bpfdeploy"

try:
    import rich  # noqa: F401
except ImportError:  # run with the project's venv, which has rich
    if VENV_PY.exists() and Path(sys.executable).resolve() != VENV_PY.resolve():
        os.execv(str(VENV_PY), [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])
    raise

from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(HERE))
import libbpf_min  # noqa: E402

MAP_NAME = "bench_counters"
BPF_ROOT = Path("/sys/fs/bpf")
PIN_PARENT = BPF_ROOT / "bpfdeploy-bench"
ANCHORS = ("A", "B", "C")
DEPLOYS = ("multi", "one")  # bpfdeploy: N objects / all N programs in one object
VARIANT_LABEL = {"A": "A script", "B": "B batch", "C": "C ctypes", "multi": "bpfdeploy N obj", "one": "bpfdeploy 1 obj"}
READ_ONLY_BPFTOOL = {"show", "list", "dump", "version", "probe", "help"}
console = Console(width=max(shutil.get_terminal_size((200, 40)).columns, 150))


# ------------------------------------------------------------------ processes


@dataclass
class Run:
    argv: list
    rc: int
    out: str
    err: str
    ms: float  # spawn -> exit, wall clock
    maxrss_kb: int  # from wait4: the largest of the process and the children it reaped
    cpu_s: float  # user + system of the process and the children it reaped


_children: set = set()  # Popen objects still running (waited for on Ctrl-C)


class BenchError(RuntimeError):
    pass


def spawn(argv, env=None, err_file=None, check=True) -> Run:
    """Start argv, read its stdout to EOF, reap it with wait4: time and rusage of exactly it."""
    ef = err_file if err_file is not None else tempfile.TemporaryFile()
    pos = ef.tell()
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=ef, env=env)
    _children.add(p)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    ms = (time.perf_counter() - t0) * 1e3
    p.returncode = os.waitstatus_to_exitcode(status)
    _children.discard(p)
    p.stdout.close()
    ef.seek(pos)
    err = ef.read().decode(errors="replace")
    if err_file is None:
        ef.close()
    run = Run(list(map(str, argv)), p.returncode, out.decode(errors="replace"), err, ms, ru.ru_maxrss,
              ru.ru_utime + ru.ru_stime)
    if check and run.rc != 0:
        raise BenchError(f"{' '.join(run.argv)[:300]} exited {run.rc}:\n{run.out[-2000:]}\n{run.err[-2000:]}")
    return run


def spawn_parallel(argvs, env=None) -> tuple[float, list[Run]]:
    """Start all, wait for all: the wall time from the first spawn to the last exit."""
    t0 = time.perf_counter()
    procs = []
    for argv in argvs:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        _children.add(p)
        procs.append(p)
    runs = []
    for argv, p in zip(argvs, procs):
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        _children.discard(p)
        p.stdout.close()
        runs.append(Run(argv, p.returncode, out.decode(), "", 0.0, ru.ru_maxrss, ru.ru_utime + ru.ru_stime))
    ms = (time.perf_counter() - t0) * 1e3
    for r in runs:
        if r.rc != 0:
            raise BenchError(f"{' '.join(r.argv)} exited {r.rc}")
    return ms, runs


# ------------------------------------------------------------------ statistics


class Samples:
    """figure -> variant -> N -> list of ms."""

    def __init__(self):
        self.data: dict = {}

    def add(self, figure: str, variant: str, n: int, ms: float) -> None:
        self.data.setdefault(figure, {}).setdefault(variant, {}).setdefault(n, []).append(ms)

    def get(self, figure, variant, n):
        return self.data.get(figure, {}).get(variant, {}).get(n)


def summary(values) -> dict | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2), "runs": len(values), "samples": [round(v, 2) for v in values]}


# ------------------------------------------------------------------ the scratch world


@dataclass
class World:
    run_id: str
    tmp: Path
    pin_base: Path  # /sys/fs/bpf/bpfdeploy-bench/<run id>
    cg_mount: Path  # cgroup2 mount
    cg_base: Path  # <cgroup2>/bpfdeploy-bench-<run id>
    sizes: tuple
    stderr_file: object = None
    env: dict = field(default_factory=dict)  # bpfdeploy's environment (warm build cache, probe cache)

    def pin_root(self, variant: str, n: int) -> Path:
        return self.pin_base / f"{variant}-n{n}"

    def cg_parent(self, variant: str, n: int) -> Path:
        return self.cg_base / f"{variant}-n{n}"

    def cgroups(self, variant: str, n: int) -> list[Path]:
        return [self.cg_parent(variant, n) / f"cg{i}" for i in range(n)]

    def map_pin(self, variant: str, n: int) -> Path:
        return self.pin_root(variant, n) / "maps" / MAP_NAME


def cgroup2_mount() -> Path:
    with open("/proc/self/mounts") as fh:
        for line in fh:
            f = line.split()
            if f[2] == "cgroup2":
                return Path(f[1])
    raise BenchError("no cgroup2 mount found")


def ensure_bpffs() -> None:
    with open("/proc/self/mounts") as fh:
        if any(line.split()[1] == str(BPF_ROOT) and line.split()[2] == "bpf" for line in fh):
            return
    subprocess.run(["mount", "-t", "bpf", "bpf", str(BPF_ROOT)], check=True)
    console.print("[yellow]mounted bpffs on /sys/fs/bpf (it was not mounted; left mounted)[/]")


def warn_concurrent() -> None:
    """Other benchmarks/tests on the machine skew timings; bench/reliability.py also removes any pin
    or top-level cgroup that appears while it runs, which would break this run's deployments."""
    mine = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(pid) != mine and ("reliability.py" in cmd or "pytest" in cmd or "bench/run.py" in cmd):
            console.print(f"[yellow]warning: another run is active (pid {pid}: {escape(cmd[:120])}); "
                          "timings will be noisy and it may interfere[/]")


def cleanup(world: World | None) -> list[str]:
    """Remove everything of this run from the kernel and the disk. Never raises."""
    problems = []
    for p in list(_children):  # a child interrupted with us: give it time to roll back
        try:
            p.wait(timeout=20)
        except Exception:
            p.kill()
            p.wait()
    if world is None:
        return problems
    if world.cg_base.exists():
        for dirpath, _dirs, _files in os.walk(world.cg_base, topdown=False):
            try:
                libbpf_min.detach_all(dirpath)
            except OSError as exc:
                problems.append(f"detach in {dirpath}: {exc}")
    if world.pin_base.exists():
        for dirpath, _dirs, files in os.walk(world.pin_base, topdown=False):
            for f in files:
                try:
                    os.unlink(os.path.join(dirpath, f))
                except OSError as exc:
                    problems.append(f"unpin {dirpath}/{f}: {exc}")
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                problems.append(f"rmdir {dirpath}: {exc}")
    try:
        PIN_PARENT.rmdir()  # only if empty: other runs may use it
    except OSError:
        pass
    if world.cg_base.exists():
        dirs = sorted((Path(d) for d, _s, _f in os.walk(world.cg_base)), key=lambda p: -len(p.parts))
        for d in dirs:
            for attempt in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if attempt == 49:
                        problems.append(f"rmdir {d}: {exc}")
                    time.sleep(0.02)
    shutil.rmtree(world.tmp, ignore_errors=True)
    return problems


# ------------------------------------------------------------------ generator

SOURCE_HEAD = """\
/* bpfdeploy benchmark, version {version}: cgroup_skb ingress counters sharing one array map. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {{
\t__uint(type, BPF_MAP_TYPE_ARRAY);
\t__type(key, __u32);
\t__type(value, __u64);
\t__uint(max_entries, {entries});
}} {map} SEC(".maps");
"""
SOURCE_PROG = """
SEC("cgroup_skb/ingress")
int bench_cnt_{i}(struct __sk_buff *skb)
{{
\t__u32 key = {i};
\t__u64 *v = bpf_map_lookup_elem(&{map}, &key);

\tif (v)
\t\t__sync_fetch_and_add(v, {version}); /* v1 adds 1, v2 adds 2: every program changes */
\treturn 1;
}}
"""
SOURCE_TAIL = '\nchar LICENSE[] SEC("license") = "GPL";\n'
CLANG = ["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{platform.machine()}-linux-gnu"]


def source_text(version: int, programs, entries: int) -> str:
    return (SOURCE_HEAD.format(version=version, entries=entries, map=MAP_NAME)
            + "".join(SOURCE_PROG.format(i=i, version=version, map=MAP_NAME) for i in programs) + SOURCE_TAIL)


def src_path(world: World, version: int, i: int) -> Path:
    return world.tmp / "gen" / f"v{version}" / f"cnt_{i}.bpf.c"


def obj_path(world: World, version: int, i: int) -> Path:
    return world.tmp / "gen" / f"v{version}" / f"cnt_{i}.o"


def one_src_path(world: World, version: int, n: int) -> Path:
    return world.tmp / "gen" / f"v{version}" / f"all_n{n}.bpf.c"


def manifest_path(world: World, variant: str, n: int, version: int) -> Path:
    return world.tmp / "manifests" / f"{variant}-n{n}-v{version}.yaml"


def generate(world: World) -> None:
    """Sources (v1 and v2), the anchors' objects (built here with clang, on every core) and
    the manifests of both bpfdeploy variants for every N."""
    max_n = max(world.sizes)
    entries = max(256, max_n)
    jobs = []
    for version in (1, 2):
        (world.tmp / "gen" / f"v{version}").mkdir(parents=True)
        for i in range(max_n):
            src_path(world, version, i).write_text(source_text(version, [i], entries))
            jobs.append((src_path(world, version, i), obj_path(world, version, i)))
        for n in world.sizes:
            one_src_path(world, version, n).write_text(source_text(version, range(n), entries))

    def build(job):
        src, out = job
        r = subprocess.run([*CLANG, "-c", str(src), "-o", str(out)], capture_output=True, text=True)
        if r.returncode:
            raise BenchError(f"clang {src}: {r.stderr}")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(build, jobs))

    (world.tmp / "manifests").mkdir()
    for n in world.sizes:
        for variant in DEPLOYS:
            for version in (1, 2):
                manifest_path(world, variant, n, version).write_text(manifest_text(world, variant, n, version))


def manifest_text(world: World, variant: str, n: int, version: int) -> str:
    rel_parent = world.cg_parent(variant, n).relative_to(world.cg_mount)
    lines = ["# generated by bench/run.py", "version: 1", f"name: bench-{variant}-n{n}",
             f"pin_root: {world.pin_root(variant, n)}", "objects:"]
    if variant == "multi":
        lines += [f"  o{i}: {{source: {src_path(world, version, i)}}}" for i in range(n)]
    else:
        lines += [f"  all: {{source: {one_src_path(world, version, n)}}}"]
    lines.append("attachments:")
    lines += [f"  - {{name: in{i}, program: bench_cnt_{i}, type: ingress, "
              f"cgroup: {{path: {rel_parent}/cg{i}, create: true}}}}" for i in range(n)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ checks between steps


def check_attached(world: World, variant: str, n: int, expect: int = 1) -> list[int]:
    """Every cgroup holds exactly `expect` ingress program(s); returns the program ids."""
    ids = []
    for cg in world.cgroups(variant, n):
        fd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
        try:
            got = libbpf_min.prog_query(fd, libbpf_min.BPF_CGROUP_INET_INGRESS)
        finally:
            os.close(fd)
        if len(got) != expect:
            raise BenchError(f"{variant} N={n}: {cg} holds {len(got)} ingress program(s), expected {expect}")
        ids += got
    return ids


def check_gone(world: World, variant: str, n: int) -> None:
    for path in (world.pin_root(variant, n), world.cg_parent(variant, n)):
        if path.exists():
            raise BenchError(f"{variant} N={n}: {path} is still there after teardown/destroy")


def write_values(world: World, variant: str, n: int, base: int) -> dict:
    values = {i: base + i for i in range(n)}
    libbpf_min.map_write_u64(str(world.map_pin(variant, n)), values)
    return values


def check_values(world: World, variant: str, n: int, values: dict) -> None:
    got = libbpf_min.map_read_u64(str(world.map_pin(variant, n)), values)
    if got != values:
        bad = {k: (values[k], got[k]) for k in values if got[k] != values[k]}
        raise BenchError(f"{variant} N={n}: map values lost in the upgrade: {dict(list(bad.items())[:5])}")


# ------------------------------------------------------------------ anchors


def _prog_pin(world, variant, n, i, version):
    suffix = "" if version == 1 else f"_v{version}"
    return world.pin_root(variant, n) / "progs" / f"bench_cnt_{i}{suffix}"


def script_lines(world: World, variant: str, n: int, what: str) -> list[list[str]]:
    """The bpftool command lines (without the leading `bpftool`) of the naive script."""
    root = world.pin_root(variant, n)
    cgs = world.cgroups(variant, n)
    map_pin = str(world.map_pin(variant, n))
    lines = []
    if what == "deploy":
        for i in range(n):
            pin = str(_prog_pin(world, variant, n, i, 1))
            reuse = ["pinmaps", str(root / "maps")] if i == 0 else ["map", "name", MAP_NAME, "pinned", map_pin]
            lines.append(["prog", "load", str(obj_path(world, 1, i)), pin, *reuse])
        lines += [["cgroup", "attach", str(cgs[i]), "ingress", "pinned", str(_prog_pin(world, variant, n, i, 1)),
                   "multi"] for i in range(n)]
    elif what == "upgrade":  # per program: load the new one reusing the map, attach it, detach the old one
        for i in range(n):
            new, old = str(_prog_pin(world, variant, n, i, 2)), str(_prog_pin(world, variant, n, i, 1))
            lines.append(["prog", "load", str(obj_path(world, 2, i)), new, "map", "name", MAP_NAME, "pinned", map_pin])
            lines.append(["cgroup", "attach", str(cgs[i]), "ingress", "pinned", new, "multi"])
            lines.append(["cgroup", "detach", str(cgs[i]), "ingress", "pinned", old, "multi"])
    elif what == "teardown":
        lines += [["cgroup", "detach", str(cgs[i]), "ingress", "pinned", str(_prog_pin(world, variant, n, i, 2)),
                   "multi"] for i in range(n)]
    return lines


def extra_command(world: World, variant: str, n: int, what: str) -> list[str] | None:
    """The one non-bpftool process of a script step: unpin the old programs / remove the pin root."""
    if what == "upgrade":
        return ["rm", "-f", *(str(_prog_pin(world, variant, n, i, 1)) for i in range(n))]
    if what == "teardown":
        return ["rm", "-rf", str(world.pin_root(variant, n))]
    return None


def _make_dirs(world, variant, n):
    root = world.pin_root(variant, n)
    os.makedirs(root / "progs")
    os.mkdir(root / "maps")
    os.mkdir(world.cg_parent(variant, n))
    for cg in world.cgroups(variant, n):
        os.mkdir(cg)


def _remove_cgroups(world, variant, n):
    for cg in world.cgroups(variant, n):
        os.rmdir(cg)
    os.rmdir(world.cg_parent(variant, n))


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def anchor_spawn(world: World, argv: list, measure_rss: bool, env=None) -> tuple[Run, int]:
    """Run one anchor process; with measure_rss, under GNU time for its own peak RSS (kB).

    wait4's ru_maxrss of a child never reads below the RSS of the process that forked it (the
    high-water mark survives fork and execve), so the driver's own ~25 MB would hide bpftool's.
    """
    if not (measure_rss and TIME):
        r = spawn(argv, err_file=world.stderr_file, env=env)
        return r, r.maxrss_kb
    rss_file = world.tmp / "anchor.rss"
    r = spawn([TIME, "-f", "%M", "-o", rss_file, *argv], err_file=world.stderr_file, check=False, env=env)
    if r.rc != 0:
        raise BenchError(f"{' '.join(map(str, argv))[:300]} exited {r.rc}: {r.out[-500:]} {r.err[-500:]}")
    return r, int(rss_file.read_text().split()[-1])


def anchor_a(world: World, n: int, what: str, measure_rss: bool = False) -> tuple[float, int, int]:
    """The naive script: one bpftool process per line. Returns (ms, processes, max child RSS kB)."""
    lines = script_lines(world, "A", n, what)
    extra = extra_command(world, "A", n, what)
    rss, count = 0, 0
    t0 = time.perf_counter()
    if what == "deploy":
        _make_dirs(world, "A", n)
    for line in lines:
        _r, kb = anchor_spawn(world, ["bpftool", *line], measure_rss)
        rss, count = max(rss, kb), count + 1
    if extra:
        _r, kb = anchor_spawn(world, extra, measure_rss)
        rss, count = max(rss, kb), count + 1
    if what == "teardown":
        _remove_cgroups(world, "A", n)
    return (time.perf_counter() - t0) * 1e3, count, rss


BATCH_TRAP = "reading batch file failed"


def run_batch(world: World, batch_file: Path, expected: int, measure_rss: bool = False) -> tuple[Run, int]:
    """`bpftool -j batch file F`, tolerating exactly the exit-255-after-success trap of 7.1."""
    argv = ["bpftool", "-j", "batch", "file", batch_file]
    rss_file = world.tmp / "batch.rss"
    if measure_rss and TIME:
        argv = [TIME, "-f", "%M", "-o", rss_file, *argv]
    r = spawn(argv, err_file=world.stderr_file, check=False)
    kb = int(rss_file.read_text().split()[-1]) if measure_rss and TIME else r.maxrss_kb
    try:
        results, _end = json.JSONDecoder().raw_decode(r.out.strip())
    except ValueError:
        raise BenchError(f"bpftool batch printed no JSON (rc {r.rc}): {r.out[:500]} {r.err[:500]}") from None
    # With -j the trap shows as a last element {"error": "reading batch file failed: <stale errno>"}.
    trailing = [x for x in results if "command" not in x]
    ran = [x for x in results if "command" in x]
    failed = [x for x in ran if isinstance(x.get("output"), dict) and "error" in x["output"]]
    if failed or len(ran) != expected:
        raise BenchError(f"bpftool batch: {len(ran)}/{expected} lines ran; first failure: {failed[:1]} {trailing}")
    if any(BATCH_TRAP not in str(x.get("error", "")) for x in trailing) or r.rc not in (0, 255) \
            or (r.rc == 255 and not trailing and BATCH_TRAP not in r.err):
        raise BenchError(f"bpftool batch exited {r.rc}: {r.out[-500:]} {r.err[-500:]}")
    return r, kb


def anchor_b(world: World, n: int, what: str, measure_rss: bool = False) -> tuple[float, int, int]:
    """The same lines in one `bpftool batch file` process (plus `rm` where the script has one)."""
    lines = script_lines(world, "B", n, what)
    batch_file = world.tmp / f"B-n{n}-{what}.batch"
    batch_file.write_text("".join(" ".join(line) + "\n" for line in lines))
    extra = extra_command(world, "B", n, what)
    rss, count = 0, 0
    t0 = time.perf_counter()
    if what == "deploy":
        _make_dirs(world, "B", n)
    _r, rss = run_batch(world, batch_file, len(lines), measure_rss)
    count = 1
    if extra:
        _r, kb = anchor_spawn(world, extra, measure_rss)
        rss, count = max(rss, kb), count + 1
    if what == "teardown":
        _remove_cgroups(world, "B", n)
    return (time.perf_counter() - t0) * 1e3, count, rss


def anchor_c_spec(world: World, n: int, what: str) -> Path:
    spec = world.tmp / f"C-n{n}-{what}.tsv"
    if spec.exists():
        return spec
    cgs = world.cgroups("C", n)
    rows = ["\t".join(["root", str(world.pin_root("C", n)), str(world.cg_parent("C", n)),
                       str(world.map_pin("C", n))])]
    for i in range(n):
        version = 1 if what == "deploy" else 2
        row = ["prog", str(obj_path(world, version, i)), f"bench_cnt_{i}",
               str(_prog_pin(world, "C", n, i, version)), str(cgs[i])]
        if what == "upgrade":
            row.append(str(_prog_pin(world, "C", n, i, 1)))
        rows.append("\t".join(row))
    spec.write_text("\n".join(rows) + "\n")
    return spec


def anchor_c(world: World, n: int, what: str, measure_rss: bool = False) -> tuple[float, int, int]:
    """One Python process (the same interpreter as bpfdeploy) doing it through libbpf."""
    r, kb = anchor_spawn(world, [VENV_PY, HERE / "anchor_c.py", what, anchor_c_spec(world, n, what)], measure_rss,
                         env=world.env)
    return r.ms, 1, kb


ANCHOR_FN = {"A": anchor_a, "B": anchor_b, "C": anchor_c}


# ------------------------------------------------------------------ bpfdeploy


TRANSIENT = "Resource temporarily unavailable"  # bpftool link show racing a link being created/freed
transient_failures: list = []


def bpfdeploy(world: World, *args, env=None, check=True) -> Run:
    """Run the CLI. A failure from a transient EAGAIN in bpftool's host-wide listing (another
    process on the host creating or freeing a link at that moment) is noted and retried."""
    for attempt in range(3):
        r = spawn([BPFDEPLOY, *args], env=env or world.env, check=False)
        if r.rc == 0 or not check or TRANSIENT not in r.out + r.err or attempt == 2:
            break
        tail = (r.out + r.err).strip()[-300:]
        transient_failures.append({"argv": [str(a) for a in args], "rc": r.rc, "tail": tail})
        console.print(f"[yellow]transient failure (retried): bpfdeploy {escape(' '.join(map(str, args))[-120:])}: "
                      f"{escape(tail[-160:])}[/]")
    if check and r.rc != 0:
        raise BenchError(f"bpfdeploy {' '.join(map(str, args))[:300]} exited {r.rc}:\n{r.out[-2000:]}\n{r.err[-2000:]}")
    return r


LIVE_READ_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from bpfdeploy.workflow import prepare
from bpfdeploy.kernel.live import read_live_state
from bpfdeploy.kernel import runner
t1 = time.perf_counter()
prepared = prepare(Path(sys.argv[1]))
n0 = len(runner.calls)
t2 = time.perf_counter()
live = read_live_state(prepared.desired)
t3 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "prepare_ms": (t2 - t1) * 1e3, "read_ms": (t3 - t2) * 1e3,
                  "commands": [list(c) for c in runner.calls[n0:]], "programs": len(live.programs),
                  "links": len(live.links), "hooks": len(live.hooks)}))
"""


def live_read_inprocess(world: World, manifest: Path) -> tuple[Run, dict | None]:
    r = spawn([VENV_PY, "-c", LIVE_READ_CODE, manifest], env=world.env, check=False)
    if r.rc != 0:
        return r, None
    return r, json.loads(r.out.strip().splitlines()[-1])


LIVE_READ_ARGV = [["bpftool", "-j", "-f", kind, "show"] for kind in ("prog", "map", "link")]


def bpfdeploy_cycle(world: World, s: Samples, variant: str, n: int, notes: dict) -> None:
    m1, m2 = manifest_path(world, variant, n, 1), manifest_path(world, variant, n, 2)
    r = bpfdeploy(world, "apply", m1)
    s.add("warm apply", variant, n, r.ms)
    s.add("warm apply cpu", variant, n, r.cpu_s * 1e3)
    check_attached(world, variant, n)
    r = bpfdeploy(world, "plan", m1, "--detailed-exitcode")  # 0: no changes (2 would raise)
    s.add("no-op plan", variant, n, r.ms)
    r = bpfdeploy(world, "plan", m1, "--json", "--detailed-exitcode")
    s.add("no-op plan --json", variant, n, r.ms)
    r = bpfdeploy(world, "apply", m1)
    if "No changes" not in r.out:
        raise BenchError(f"no-op apply of {m1} changed something:\n{r.out[-1500:]}")
    s.add("no-op apply", variant, n, r.ms)
    ms, _runs = spawn_parallel(LIVE_READ_ARGV)
    s.add("live read: bpftool prog+map+link (side by side)", "bpftool", n, ms)
    r, info = live_read_inprocess(world, m1)
    if info is None:
        notes.setdefault("live_read_inprocess_error", r.err[-800:])
    else:
        s.add("live read: read_live_state() in process", variant, n, info["read_ms"])
        s.add("live read: python -c prepare+read_live_state (whole)", variant, n, r.ms)
    values = write_values(world, variant, n, 1000)
    r = bpfdeploy(world, "apply", m2)
    s.add("upgrade", variant, n, r.ms)
    check_values(world, variant, n, values)
    check_attached(world, variant, n)
    r = bpfdeploy(world, "destroy", m2)
    s.add("destroy / teardown", variant, n, r.ms)
    check_gone(world, variant, n)


def bpfdeploy_cold(world: World, s: Samples, variant: str, n: int, k: int) -> None:
    cold_cache = world.tmp / f"cold-cache-{variant}-{n}-{k}"
    env = dict(world.env, BPFDEPLOY_CACHE_DIR=str(cold_cache))  # the probe cache stays warm
    m1 = manifest_path(world, variant, n, 1)
    r = bpfdeploy(world, "apply", m1, env=env)
    s.add("cold apply", variant, n, r.ms)
    s.add("cold apply cpu", variant, n, r.cpu_s * 1e3)
    check_attached(world, variant, n)
    bpfdeploy(world, "destroy", m1)
    check_gone(world, variant, n)
    shutil.rmtree(cold_cache, ignore_errors=True)


def anchor_cycle(world: World, s: Samples | None, variant: str, n: int, rss: dict | None = None) -> None:
    """deploy, upgrade (values checked), teardown. Timed into s; or, with rss, one untimed run
    with every process under GNU time, recording (processes, largest peak RSS) per step."""
    fn = ANCHOR_FN[variant]
    measure = rss is not None
    for what, figure in (("deploy", "warm apply"), ("upgrade", "upgrade"), ("teardown", "destroy / teardown")):
        if what == "upgrade":
            values = write_values(world, variant, n, 1000)
        ms, count, kb = fn(world, n, what, measure)
        if measure:
            rss.setdefault((variant, n), {})[what] = (count, kb)
        else:
            s.add(figure, variant, n, ms)
        if what == "deploy":
            check_attached(world, variant, n)
        elif what == "upgrade":
            check_values(world, variant, n, values)
            check_attached(world, variant, n)
        else:
            check_gone(world, variant, n)


# ------------------------------------------------------------------ instrumented (untimed) runs


def _is_mutating(argv: list[str]) -> bool:
    exe = os.path.basename(argv[0])
    if exe == "bpftool":
        words = [a for a in argv[1:] if not a.startswith("-")]
        return not any(w in READ_ONLY_BPFTOOL for w in words[:3])
    if exe == "tc":
        return any(a in ("add", "del", "delete", "replace", "change") for a in argv)
    return exe in ("mount", "umount", "ip")


def instrumented(world: World, args: list, env=None) -> dict:
    """One run of `bpfdeploy ARGS` counting every execve (strace -f) and recording peak RSS of
    bpfdeploy itself and of each child (rsswrap.py)."""
    env = env or world.env
    rss_file = world.tmp / "rss.json"
    rss_file.unlink(missing_ok=True)
    wrapped = [VENV_PY, HERE / "rsswrap.py", rss_file, "--", *args]
    trace_dir = world.tmp / "execve"
    shutil.rmtree(trace_dir, ignore_errors=True)
    trace_dir.mkdir()
    strace = shutil.which("strace")
    # -ff: one file per process, so parallel children never split an execve line in two
    argv = ([strace, "-f", "-ff", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", trace_dir / "t", *wrapped]
            if strace else wrapped)
    r = spawn(argv, env=env, check=False)
    info = json.loads(rss_file.read_text()) if rss_file.exists() else {}
    execs = []
    if strace:
        for f in trace_dir.iterdir():
            for line in f.read_text().splitlines():
                m = re.match(r'execve\("([^"]+)"', line)
                if m and line.rstrip().endswith("= 0") and "rsswrap.py" not in line:  # not bpfdeploy itself
                    execs.append(os.path.basename(m.group(1)))
        execs = [e for e in execs if e != "time"]  # time is our RSS meter
    else:
        execs = [os.path.basename(c["argv"][0]) for c in info.get("children", [])]
    by_exe: dict = {}
    for e in execs:
        by_exe[e] = by_exe.get(e, 0) + 1
    child_rss: dict = {}
    for c in info.get("children", []):
        exe = os.path.basename(c["argv"][0])
        if c.get("maxrss_kb") is not None:
            child_rss[exe] = max(child_rss.get(exe, 0), c["maxrss_kb"])
    out = {"rc": r.rc, "processes": len(execs), "by_exe": by_exe, "self_maxrss_kb": info.get("self_maxrss_kb"),
           "child_maxrss_kb": child_rss, "child_rss_from": info.get("child_rss_from"),
           "counted_with": "strace -f execve" if strace else "subprocess hook"}
    if "--json" in args:
        try:
            data = json.loads(r.out)
        except ValueError:
            data = {}
        if "commands" in data:
            out["commands"] = data["commands"]
            out["mutating_commands"] = [c for c in data["commands"] if _is_mutating(c)]
        if "mutations" in data:
            out["mutations"] = data["mutations"]
    if r.rc not in (0, 2):
        out["error"] = (r.out + r.err)[-1500:]
    return out


def instrument_deploy(world: World, variant: str, n: int) -> dict:
    m1, m2 = manifest_path(world, variant, n, 1), manifest_path(world, variant, n, 2)
    res = {"warm apply": instrumented(world, ["apply", "--json", m1])}
    res["no-op plan"] = instrumented(world, ["plan", "--json", m1])
    res["no-op apply"] = instrumented(world, ["apply", "--json", m1])
    _r, info = live_read_inprocess(world, m1)
    if info:
        res["live read"] = {"processes": len(info["commands"]), "commands": info["commands"],
                            "by_exe": _count(os.path.basename(c[0]) for c in info["commands"])}
    values = write_values(world, variant, n, 5000)
    res["upgrade"] = instrumented(world, ["apply", "--json", m2])
    check_values(world, variant, n, values)
    res["destroy"] = instrumented(world, ["destroy", "--json", m2])
    check_gone(world, variant, n)
    cold_cache = world.tmp / f"cold-cache-instr-{variant}-{n}"
    res["cold apply"] = instrumented(world, ["apply", "--json", m1], env=dict(world.env, BPFDEPLOY_CACHE_DIR=str(cold_cache)))
    bpfdeploy(world, "destroy", m1)
    check_gone(world, variant, n)
    shutil.rmtree(cold_cache, ignore_errors=True)
    return res


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def import_profile(world: World, manifest: Path, stamp: str, save: bool) -> dict:
    """`python -X importtime` of a no-op plan (human and --json): what start-up costs and which
    heavy modules the plan path loads. Assumes the deployment is applied."""
    out = {}
    for label, extra in (("plan", []), ("plan --json", ["--json"])):
        r = spawn([VENV_PY, "-X", "importtime", "-m", "bpfdeploy.cli", "plan", manifest, *extra], env=world.env,
                  check=False)
        top, total = [], 0
        modules = set()
        for line in r.err.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
            if not m:
                continue
            modules.add(m.group(4).split(".")[0])
            if m.group(3) == " ":  # a top-level import
                total += int(m.group(2))
                top.append((int(m.group(2)) / 1e3, m.group(4)))
        top.sort(reverse=True)
        out[label] = {"imports_ms": round(total / 1e3, 1), "top": [(round(ms, 1), name) for ms, name in top[:12]],
                      "jsonschema": "jsonschema" in modules, "fastjsonschema": "fastjsonschema" in modules,
                      "rich": "rich" in modules, "yaml": "yaml" in modules, "argparse": "argparse" in modules}
        if save:
            (HERE / "results" / f"{stamp}-importtime-{label.replace(' --', '-')}.txt").write_text(r.err)
    return out


def cprofile(world: World, args: list, out_txt: Path) -> None:
    prof = world.tmp / "prof.out"
    spawn([VENV_PY, "-m", "cProfile", "-o", prof, "-m", "bpfdeploy.cli", *args], env=world.env, check=False)
    code = ("import pstats, sys; s = pstats.Stats(sys.argv[1], stream=sys.stdout); "
            "s.sort_stats('cumulative').print_stats(45); s.sort_stats('tottime').print_stats(25)")
    r = spawn([VENV_PY, "-c", code, prof], check=False)
    out_txt.write_text(r.out)


# ------------------------------------------------------------------ report


def cell(v: dict | None, unit: str = "") -> str:
    if not v:
        return "–"
    return f"{v['median']:.1f} ({v['min']:.1f}–{v['max']:.1f}){unit}"


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return round(a["median"] / b["median"], 2)


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


# which anchor figure a bpfdeploy figure is compared with
REFERENCE = {"warm apply": "warm apply", "cold apply": "warm apply", "no-op plan": "warm apply",
             "no-op plan --json": "warm apply", "no-op apply": "warm apply", "upgrade": "upgrade",
             "destroy / teardown": "destroy / teardown", "live read: read_live_state() in process": "warm apply",
             "live read: python -c prepare+read_live_state (whole)": "warm apply"}
FIGURES = ["warm apply", "cold apply", "upgrade", "no-op plan", "no-op plan --json", "no-op apply",
           "destroy / teardown", "live read: bpftool prog+map+link (side by side)",
           "live read: read_live_state() in process", "live read: python -c prepare+read_live_state (whole)"]


def build_results(s: Samples, world: World, extra: dict) -> dict:
    figures = {}
    for fig in FIGURES + ["cold apply cpu", "warm apply cpu"]:
        per_n = {}
        for n in world.sizes:
            row = {}
            for variant in (*ANCHORS, *DEPLOYS, "bpftool"):
                summ = summary(s.get(fig, variant, n))
                if summ is None:
                    continue
                if variant in DEPLOYS and fig in REFERENCE:
                    ref = REFERENCE[fig]
                    summ["ratio_to_A"] = ratio(summ, summary(s.get(ref, "A", n)))
                    summ["ratio_to_C"] = ratio(summ, summary(s.get(ref, "C", n)))
                    summ["compared_with"] = ref
                row[variant] = summ
            if row:
                per_n[str(n)] = row
        if per_n:
            figures[fig] = per_n
    return {"figures": figures, **extra}


def render(results: dict) -> None:
    meta = results["meta"]
    figs = results["figures"]
    t = Table(title=f"bpfdeploy benchmark — ms, median (min–max) of {meta['runs']} interleaved runs ({meta.get('big_runs')} "
                    f"at N ≥ 1000), whole "
                    f"processes spawn→exit; ×A/×C = bpfdeploy ÷ the anchor's figure (see README)",
              show_lines=False, header_style="bold")
    for col in ("figure", "N", "A script", "B batch", "C ctypes", "bpfdeploy N obj", "×A", "×C",
                "bpfdeploy 1 obj", "×A", "×C"):
        t.add_column(col, justify="left" if col == "figure" else "right", no_wrap=col != "figure")
    for fig in FIGURES:
        if fig not in figs:
            continue
        for i, (n, row) in enumerate(figs[fig].items()):
            cells = [fig if i == 0 else "", n]
            if fig.startswith("live read: bpftool"):
                cells += ["", "", "", cell(row.get("bpftool")), "", "", "", "", ""]
            else:
                cells += [cell(row.get(a)) for a in ANCHORS]
                for v in DEPLOYS:
                    x = row.get(v)
                    cells += [cell(x), fmt_ratio(x and x.get("ratio_to_A")), fmt_ratio(x and x.get("ratio_to_C"))]
            t.add_row(*cells, end_section=i == len(figs[fig]) - 1)
    console.print(t)

    inst = results.get("instrumented", {})
    t2 = Table(title="External processes started and peak RSS (MB): one instrumented run per command "
                     "(strace -f execve count; RSS from wait4/getrusage, see README)", header_style="bold")
    for col in ("command", "N", "variant", "processes", "by executable", "mutating", "bpfdeploy RSS",
                "largest child RSS"):
        t2.add_column(col, no_wrap=col not in ("by executable",))
    for n, per_variant in inst.items():
        for variant, cmds in per_variant.items():
            for cmd, d in cmds.items():
                if not isinstance(d, dict):
                    continue
                kids = d.get("child_maxrss_kb") or {}
                big = max(kids.items(), key=lambda kv: kv[1]) if kids else None
                mut = d.get("mutating_commands")
                t2.add_row(cmd, n, VARIANT_LABEL.get(variant, variant), str(d.get("processes", "–")),
                           ", ".join(f"{k}×{v}" for k, v in sorted(d.get("by_exe", {}).items())) or "none",
                           "–" if mut is None else str(len(mut)),
                           f"{d['self_maxrss_kb'] / 1024:.1f}" if d.get("self_maxrss_kb") else "–",
                           f"{big[1] / 1024:.1f} ({big[0]})" if big else "–")
    for (label, d) in results.get("anchor_processes", {}).items():
        t2.add_row(*label.split("|"), str(d["processes"]), d["by_exe"], "", "",
                   f"{d['max_rss_kb'] / 1024:.1f} ({d['what']})")
    console.print(t2)

    probe = results.get("probe", {})
    if probe:
        t3 = Table(title="probe features (independent of N), ms", header_style="bold")
        t3.add_column("command")
        t3.add_column("median (min–max)", justify="right")
        for k, v in probe.items():
            if isinstance(v, dict) and "median" in v:
                t3.add_row(k, cell(v))
        console.print(t3)

    imports = results.get("imports")
    if imports:
        for label, d in imports.items():
            console.print(f"[bold]imports, no-op {label}[/]: {d['imports_ms']} ms; jsonschema={d['jsonschema']} "
                          f"rich={d['rich']} yaml={d['yaml']}; top: "
                          + ", ".join(f"{name} {ms}" for ms, name in d["top"][:8]))

    for tf in results.get("transient_failures", []):
        console.print(f"[yellow]transient failure, retried:[/] bpfdeploy {escape(' '.join(tf['argv']))[-100:]}: "
                      f"{escape(tf['tail'][-150:])}")
    t4 = Table(title="Targets (issue 10)", header_style="bold")
    for col in ("target", "measured", "result"):
        t4.add_column(col)
    for tg in results["targets"]:
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]n/a[/]"}[tg["met"]]
        t4.add_row(escape(tg["target"]), escape(tg["measured"]), mark)
    console.print(t4)

    mod = results.get("module") or {}
    if mod and "error" not in mod:
        t7 = Table(title="The Ansible module on the target, no-change run (bench/module_overhead.py), ms",
                   header_style="bold")
        t7.add_column("process")
        t7.add_column("median (min–max)", justify="right")
        for k, v in mod.items():
            if isinstance(v, dict):
                t7.add_row(k, cell(v))
        console.print(t7)
    t6 = Table(title="Growth: ms per added program between sizes (median to median); * rising with N",
               header_style="bold")
    t6.add_column("figure")
    t6.add_column("variant")
    for lo, hi in zip(sorted(results["meta"]["sizes"]), sorted(results["meta"]["sizes"])[1:]):
        t6.add_column(f"{lo}→{hi}", justify="right")
    for fig, per_variant in results.get("growth", {}).items():
        for variant, g in per_variant.items():
            t6.add_row(f"{fig} *" if g["superlinear"] else fig, VARIANT_LABEL.get(variant, variant),
                       *(f"{x['ms_per_program']:.3f}" for x in g["steps"]))
    console.print(t6)
    t5 = Table(title="Targets (issue 16)", header_style="bold")
    for col in ("target", "measured", "result"):
        t5.add_column(col)
    for tg in results.get("targets_16", []):
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]n/a[/]"}[tg["met"]]
        t5.add_row(escape(tg["target"]), escape(tg["measured"]), mark)
    console.print(t5)


def markdown(results: dict) -> str:
    """The main table and the targets as Markdown (for the README's performance section)."""
    meta, figs = results["meta"], results["figures"]
    out = [f"Run {meta['date']} on {meta['kernel']}, {meta['cpus']} CPUs, bpfdeploy {meta['git_head']} "
           f"(+{meta['bpfdeploy_uncommitted_files']} uncommitted files); ms, median (min–max) of {meta['runs']} "
           f"interleaved runs ({meta.get('big_runs')} at N ≥ 1000), whole processes.", "",
           "| figure | N | A script | B batch | C ctypes | bpfdeploy N obj | ×A | ×C | bpfdeploy 1 obj | ×A | ×C |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for fig in FIGURES:
        for n, row in figs.get(fig, {}).items():
            if fig.startswith("live read: bpftool"):
                cells = ["", "", "", cell(row.get("bpftool")), "", "", "", "", ""]
            else:
                cells = [cell(row.get(a)) for a in ANCHORS]
                for v in DEPLOYS:
                    x = row.get(v)
                    cells += [cell(x), fmt_ratio(x and x.get("ratio_to_A")), fmt_ratio(x and x.get("ratio_to_C"))]
            out.append(f"| {fig} | {n} | " + " | ".join(cells) + " |")
    result = {True: "met", False: "missed", None: "n/a"}
    out += ["", "| target (issue 16) | measured | result |", "|---|---|---|"]
    for tg in results.get("targets_16", []):
        out.append(f"| {tg['target']} | {tg['measured']} | {result[tg['met']]} |")
    sizes = sorted(meta["sizes"])
    steps = [f"{lo}→{hi}" for lo, hi in zip(sizes, sizes[1:])]
    if results.get("growth"):
        out += ["", "Growth, ms per added program between sizes (* : the cost per program rises with N):", "",
                "| figure | variant | " + " | ".join(steps) + " |", "|---|---|" + "--:|" * len(steps)]
        for fig, per_variant in results["growth"].items():
            for variant, g in per_variant.items():
                star = " *" if g["superlinear"] else ""
                out.append(f"| {fig}{star} | {VARIANT_LABEL.get(variant, variant)} | "
                           + " | ".join(f"{x['ms_per_program']:.3f}" for x in g["steps"]) + " |")
    mod = results.get("module") or {}
    if mod and "error" not in mod:
        out += ["", "| Ansible module, no-change run on the target | ms |", "|---|--:|"]
        out += [f"| {k} | {cell(v)} |" for k, v in mod.items() if isinstance(v, dict)]
    out += ["", "| target (issue 10) | measured | result |", "|---|---|---|"]
    for tg in results["targets"]:
        out.append(f"| {tg['target']} | {tg['measured']} | {result[tg['met']]} |")
    return "\n".join(out) + "\n"


def med(results, fig, variant, n):
    return (results["figures"].get(fig, {}).get(str(n), {}).get(variant) or {}).get("median")


def evaluate_targets(results: dict, world: World) -> list[dict]:
    # Issue 10's targets are for N = 200: evaluated there when it was run, else at the largest N.
    big, small = (200 if 200 in world.sizes else max(world.sizes)), min(world.sizes)
    at = "" if big == 200 else f" (measured at N={big}; the target is for N=200)"
    inst = results.get("instrumented", {})
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured + (at if "N=200" in target else ""), "met": met})

    def m(fig, v, n=big):
        return med(results, fig, v, n)

    w, a, c = m("warm apply", "multi"), m("warm apply", "A"), m("warm apply", "C")
    if None not in (w, a, c):
        add("warm apply N=200 ≤ 0.25 × A", f"{w:.1f} ms = {w / a:.2f} × A ({a:.1f})", w <= 0.25 * a)
        add("warm apply N=200 ≤ 3 × C", f"{w:.1f} ms = {w / c:.2f} × C ({c:.1f})", w <= 3 * c)
    w1 = med(results, "warm apply", "multi", 1)
    if w1 is not None:
        add("warm apply N=1 ≤ 60 ms", f"{w1:.1f} ms", w1 <= 60)
    for fig in ("no-op plan", "no-op plan --json"):
        p_big, p_small = m(fig, "multi"), med(results, fig, "multi", small)
        if p_big is not None:
            add(f"{fig} N=200 ≤ 60 ms", f"{p_big:.1f} ms", p_big <= 60)
            if p_small is not None and small != big:
                add(f"{fig} growth N={small}→N=200 ≤ 20 ms", f"+{p_big - p_small:.1f} ms", p_big - p_small <= 20)
    na, pl = m("no-op apply", "multi"), m("no-op plan", "multi")
    noop = (inst.get(str(big), {}).get("multi", {}) or {}).get("no-op apply", {})
    if na is not None and pl is not None:
        muts = noop.get("mutating_commands")
        add("no-op apply costs the same as no-op plan (≤ +10 %) and starts no mutating process",
            f"{na:.1f} vs {pl:.1f} ms; mutations={noop.get('mutations')}, mutating processes="
            f"{'?' if muts is None else len(muts)}",
            na <= pl * 1.10 + 0.5 and noop.get("mutations") == 0 and muts == [])
    lr = m("live read: read_live_state() in process", "multi")
    reads = {n: (inst.get(str(n), {}).get("multi", {}).get("live read") or {}) for n in world.sizes}
    if lr is not None:
        counts = {n: r.get("processes") for n, r in reads.items()}
        tree = any(any(w in " ".join(cmd) for w in ("cgroup tree", "cgroup show"))
                   for r in reads.values() for cmd in r.get("commands", []))
        const = len(set(counts.values())) == 1
        add("live read N=200 ≤ 25 ms, processes not growing with N, no cgroup tree/show",
            f"{lr:.1f} ms in process (bpftool ×3 side by side: {m('live read: bpftool prog+map+link (side by side)', 'bpftool'):.1f} ms); "
            f"processes by N: {counts}; cgroup tree/show: {'yes' if tree else 'no'}", lr <= 25 and const and not tree)
    d, ta = m("destroy / teardown", "multi"), m("destroy / teardown", "A")
    if d is not None and ta is not None:
        add("destroy N=200 ≤ 0.1 × script teardown", f"{d:.1f} ms = {d / ta:.2f} × A ({ta:.1f})", d <= 0.1 * ta)
    u, ua = m("upgrade", "multi"), m("upgrade", "A")
    if u is not None and ua is not None:
        add("upgrade N=200 (maps kept, values checked) ≤ 0.3 × script", f"{u:.1f} ms = {u / ua:.2f} × A ({ua:.1f})",
            u <= 0.3 * ua)
    cold_ms, cold_cpu = m("cold apply", "multi"), m("cold apply cpu", "multi")
    ncpu = os.cpu_count() or 1
    cold_inst = inst.get(str(big), {}).get("multi", {}).get("cold apply", {})
    warm_inst = inst.get(str(big), {}).get("multi", {}).get("warm apply", {})
    warm_ms, warm_cpu = m("warm apply", "multi"), m("warm apply cpu", "multi")
    if cold_ms and cold_cpu and warm_ms and warm_cpu is not None and cold_ms > warm_ms:
        # what the build adds: (CPU of cold - CPU of warm) / (wall of cold - wall of warm)
        cores = (cold_cpu - warm_cpu) / (cold_ms - warm_ms)
        clangs = cold_inst.get("by_exe", {}).get("clang")
        warm_clangs = warm_inst.get("by_exe", {}).get("clang", 0)
        add(f"cold build of N=200 objects uses every core ({ncpu}); a cache hit starts no clang",
            f"{cores:.2f} cores busy during the build (whole cold apply: {cold_cpu / cold_ms:.2f}); "
            f"clang processes cold={clangs}, warm={warm_clangs}",
            cores >= ncpu * 0.8 and warm_clangs == 0)
    pc = results.get("probe", {}).get("probe features (cached)")
    if pc:
        add("cached probe features ≤ 50 ms", f"{pc['median']:.1f} ms (--json: "
            f"{results['probe'].get('probe features --json (cached)', {}).get('median', float('nan')):.1f} ms)",
            pc["median"] <= 50)
    worst = []
    for variant, cmds in inst.get(str(big), {}).items():
        for cmd, dd in cmds.items():
            if isinstance(dd, dict) and dd.get("self_maxrss_kb"):
                worst.append((dd["self_maxrss_kb"], f"bpfdeploy {cmd} ({variant})"))
                for exe, kb in (dd.get("child_maxrss_kb") or {}).items():
                    worst.append((kb, f"{exe} in {cmd} ({variant})"))
    if worst:
        kb, who = max(worst)
        add("peak RSS ≤ 100 MB for bpfdeploy and each child, N=200", f"largest: {kb / 1024:.1f} MB, {who}",
            kb <= 100 * 1024)
    imp = results.get("imports", {})
    if imp:
        j, h = imp.get("plan --json", {}), imp.get("plan", {})
        add("lean start-up: the no-op plan imports no jsonschema (and no rich with --json)",
            f"imports {h.get('imports_ms')} ms (human) / {j.get('imports_ms')} ms (--json); jsonschema "
            f"{'imported' if h.get('jsonschema') or j.get('jsonschema') else 'not imported'}; rich with --json: "
            f"{'imported' if j.get('rich') else 'not imported'}",
            not (h.get("jsonschema") or j.get("jsonschema") or j.get("rich")))
    return out


GROWTH_FIGURES = ["warm apply", "cold apply", "upgrade", "no-op plan", "no-op plan --json", "no-op apply",
                  "destroy / teardown", "live read: read_live_state() in process"]


def growth(results: dict, world: World) -> dict:
    """ms per added program between consecutive sizes, per figure and variant (anchors included),
    and whether the cost per program rises with N (super-linear: the last step costs more than
    1.5 x the per-program cost of the first step that has at least 10 programs)."""
    sizes = sorted(world.sizes)
    out: dict = {}
    for fig in GROWTH_FIGURES:
        for variant in (*DEPLOYS, *ANCHORS):
            steps = []
            for lo, hi in zip(sizes, sizes[1:]):
                a, b = med(results, fig, variant, lo), med(results, fig, variant, hi)
                if a is not None and b is not None:
                    steps.append({"from": lo, "to": hi, "ms_per_program": round((b - a) / (hi - lo), 3)})
            if not steps:
                continue
            wide = [x for x in steps if x["to"] - x["from"] >= 10]
            superlinear = len(wide) >= 2 and wide[-1]["ms_per_program"] > 1.5 * max(wide[0]["ms_per_program"], 0.01)
            out.setdefault(fig, {})[variant] = {"steps": steps, "superlinear": superlinear}
    return out


def evaluate_targets_16(results: dict, world: World) -> list[dict]:
    """The targets of issue 16, each at the N it names (n/a when that N was not run)."""
    inst = results.get("instrumented", {})
    out = []

    def add(target, measured, met):
        out.append({"target": target, "measured": measured, "met": met})

    def m(fig, v, n):
        return med(results, fig, v, n)

    for n, limit in ((1, 40), (200, 50), (2000, 150)):
        p, one = m("no-op plan", "multi", n), m("no-op plan", "one", n)
        add(f"no-op plan N={n} ≤ {limit} ms", "not run" if p is None else
            f"{p:.1f} ms (1 object: {one:.1f} ms)" if one is not None else f"{p:.1f} ms",
            None if p is None else p <= limit)
    w, a, c = m("warm apply", "multi", 200), m("warm apply", "A", 200), m("warm apply", "C", 200)
    add("warm apply N=200 ≤ 3 × C and ≤ 0.2 × A", "not run" if None in (w, a, c) else
        f"{w:.1f} ms = {w / c:.2f} × C ({c:.1f}), {w / a:.2f} × A ({a:.1f})",
        None if None in (w, a, c) else (w <= 3 * c and w <= 0.2 * a))
    w1 = m("warm apply", "multi", 1)
    add("warm apply N=1 ≤ 45 ms", "not run" if w1 is None else f"{w1:.1f} ms", None if w1 is None else w1 <= 45)
    d, tc = m("destroy / teardown", "multi", 200), m("destroy / teardown", "C", 200)
    add("destroy N=200 ≤ 2 × C", "not run" if None in (d, tc) else f"{d:.1f} ms = {d / tc:.2f} × C ({tc:.1f})",
        None if None in (d, tc) else d <= 2 * tc)
    u, ua = m("upgrade", "multi", 2000), m("upgrade", "A", 2000)
    add("upgrade of N=2000 programs, maps kept, ≤ 0.15 × script", "not run" if None in (u, ua) else
        f"{u:.1f} ms = {u / ua:.3f} × A ({ua:.1f}); values checked after", None if None in (u, ua) else u <= 0.15 * ua)
    n_build = 2000 if 2000 in world.sizes else max(world.sizes)
    cold_ms, cold_cpu = m("cold apply", "multi", n_build), m("cold apply cpu", "multi", n_build)
    warm_ms, warm_cpu = m("warm apply", "multi", n_build), m("warm apply cpu", "multi", n_build)
    ncpu = os.cpu_count() or 1
    if None not in (cold_ms, cold_cpu, warm_ms, warm_cpu) and cold_ms > warm_ms:
        cores = (cold_cpu - warm_cpu) / (cold_ms - warm_ms)
        add(f"cold build of {n_build} objects uses every core ({ncpu})",
            f"{cores:.2f} cores busy during the build ({cold_ms / 1e3:.1f} s cold, {warm_ms / 1e3:.1f} s warm)",
            cores >= 0.8 * ncpu)
    pc = results.get("probe", {}).get("probe features (cached)")
    if pc:
        pj = results["probe"].get("probe features --json (cached)") or {}
        add("cached probe features (human tables) ≤ 50 ms",
            f"{pc['median']:.1f} ms (--json: {pj.get('median', float('nan')):.1f} ms)", pc["median"] <= 50)
    n_rss = 2000 if str(2000) in inst else str(max(world.sizes))
    worst = []
    for variant, cmds in inst.get(str(n_rss), {}).items():
        for cmd, dd in cmds.items():
            if isinstance(dd, dict) and dd.get("self_maxrss_kb"):
                worst.append((dd["self_maxrss_kb"], f"bpfdeploy {cmd} ({VARIANT_LABEL.get(variant, variant)})"))
                for exe, kb in (dd.get("child_maxrss_kb") or {}).items():
                    worst.append((kb, f"{exe} in {cmd} ({VARIANT_LABEL.get(variant, variant)})"))
    if worst:
        kb, who = max(worst)
        add(f"peak RSS ≤ 100 MB for bpfdeploy and each child at N={n_rss}", f"largest: {kb / 1024:.1f} MB, {who}",
            kb <= 100 * 1024)
    # Processes: every command but a cold build (one clang per object built) starts as many
    # processes at every N.
    per_cmd: dict = {}
    for n in world.sizes:
        for variant, cmds in inst.get(str(n), {}).items():
            for cmd, dd in cmds.items():
                if isinstance(dd, dict) and "processes" in dd and cmd != "cold apply":
                    per_cmd.setdefault((variant, cmd), {})[n] = dd["processes"]
    if per_cmd:
        growing = {f"{VARIANT_LABEL.get(v, v)} {c}": counts for (v, c), counts in per_cmd.items()
                   if len(set(counts.values())) > 1}
        sample = next(iter(per_cmd.items()))
        add("processes started stay O(1) in N (cold builds aside: one clang per object)",
            f"growing: {growing}" if growing else
            f"constant for every command (e.g. {VARIANT_LABEL.get(sample[0][0])} {sample[0][1]}: {sample[1]})",
            not growing)
    mod = results.get("module") or {}
    if "overhead" in mod:
        p, mm = mod["bpfdeploy apply (no change)"]["median"], mod["module on the target (AnsiballZ)"]["median"]
        f = mod["ansible.builtin.ping on the target (AnsiballZ)"]["median"]
        beyond = mod["overhead beyond ansible's floor"]
        add("the Ansible module adds ≤ 20 % to a no-change run over bpfdeploy's own cost",
            f"module {mm:.1f} ms vs bpfdeploy {p:.1f} ms: +{mod['overhead'] * 100:.0f} %; Ansible's floor "
            f"(ping module) {f:.1f} ms, beyond it +{beyond * 100:.0f} %",
            mod["overhead"] <= 0.20)
    elif mod.get("error"):
        add("the Ansible module adds ≤ 20 % to a no-change run over bpfdeploy's own cost",
            f"not measured: {mod['error'][:200]}", None)
    return out


# ------------------------------------------------------------------ main


def host_meta(world: World, args) -> dict:
    def out(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    dirty = out(["git", "-C", str(REPO), "status", "--porcelain", "--", "bpfdeploy"])
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "kernel": os.uname().release,
            "cpus": os.cpu_count(), "bpftool": out(["bpftool", "version"]).splitlines()[0:1],
            "clang": out(["clang", "--version"]).splitlines()[0:1], "python": out([str(VENV_PY), "--version"]),
            "git_head": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "bpfdeploy_uncommitted_files": len(dirty.splitlines()), "runs": args.runs, "big_runs": args.big_runs, "sizes": list(world.sizes),
            "quick": args.quick, "loadavg_start": os.getloadavg(), "pyc_cache": not args.no_pyc,
            "method": {"timing": "time.perf_counter() around spawn→wait4 of each process (anchors A/B: from the "
                                 "first process's spawn to the last's exit, cgroup/pin dirs made by the driver "
                                 "with os.mkdir inside that window)",
                       "rss": "wait4() rusage of each child (anchors, bpfdeploy whole tree) and, for bpfdeploy's own "
                              "and each child's peak, bench/rsswrap.py: getrusage(RUSAGE_SELF) at exit plus "
                              "wait4() per child via a subprocess hook",
                       "processes": "strace -f -e trace=execve (successful execve calls after bpfdeploy's own); "
                                    "plus apply --json 'commands'"}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sizes 1,10 and 3 runs (a smoke test, under a minute)")
    ap.add_argument("--sizes", help="comma-separated N values (default 1,10,200,1000,2000)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 7; 3 with --quick)")
    ap.add_argument("--big-runs", type=int, default=3, help="runs per figure at N >= 1000 (default 3: a round "
                    "there takes about a minute, most of it anchor A's 10,000 bpftool processes)")
    ap.add_argument("--no-module", action="store_true", help="skip the Ansible module's overhead "
                    "(bench/module_overhead.py)")
    ap.add_argument("--no-profile", action="store_true", help="skip importtime/cProfile of the largest N")
    ap.add_argument("--no-pyc", action="store_true", help="keep PYTHONDONTWRITEBYTECODE as it is (by default the "
                    "bench lets Python cache bytecode in its temp dir, as an installed tool would have)")
    args = ap.parse_args()
    sizes = tuple(int(x) for x in (args.sizes or ("1,10" if args.quick else "1,10,200,1000,2000")).split(","))
    args.runs = args.runs or (3 if args.quick else 7)
    if os.geteuid() != 0:
        print("bench/run.py needs root (it loads BPF programs and creates cgroups)", file=sys.stderr)
        return 1
    if not BPFDEPLOY.exists():
        print(f"{BPFDEPLOY} is missing: run `make setup` first", file=sys.stderr)
        return 1

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    world = None
    started = time.perf_counter()
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
    try:
        ensure_bpffs()
        warn_concurrent()
        run_id = f"r{os.getpid()}"
        tmp = Path(tempfile.mkdtemp(prefix="bpfdeploy-bench-"))
        cg_mount = cgroup2_mount()
        world = World(run_id, tmp, PIN_PARENT / run_id, cg_mount, cg_mount / f"bpfdeploy-bench-{run_id}", sizes)
        world.stderr_file = open(tmp / "anchors.stderr", "w+b")
        world.env = dict(os.environ, BPFDEPLOY_STATE_DIR=str(tmp / "state"), BPFDEPLOY_CACHE_DIR=str(tmp / "cache"),
                         BPFDEPLOY_PROBE_CACHE=str(tmp / "probe"))
        if not args.no_pyc:
            # An installed bpfdeploy has its .pyc files; this sandbox sets PYTHONDONTWRITEBYTECODE=1, which
            # would make every run compile bpfdeploy's sources again (~10 ms). Keep them in our temp dir.
            world.env.pop("PYTHONDONTWRITEBYTECODE", None)
            world.env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        world.pin_base.mkdir(parents=True)
        world.cg_base.mkdir()
        console.print(f"[bold]bpfdeploy bench[/] sizes {list(sizes)}, {args.runs} runs; scratch: {world.pin_base}, "
                      f"{world.cg_base}, {tmp}")

        t = time.perf_counter()
        generate(world)
        for n in sizes:  # warm bpfdeploy's build cache (and check the manifests)
            for variant in DEPLOYS:
                for version in (1, 2):
                    bpfdeploy(world, "validate", "--json", manifest_path(world, variant, n, version))
        bpfdeploy(world, "probe", "features", "--json")  # warm the probe cache
        console.print(f"generated and built in {time.perf_counter() - t:.1f} s")

        s = Samples()
        notes: dict = {}
        anchor_rss: dict = {}
        variants = [*ANCHORS, *DEPLOYS]
        for n in sizes:
            t = time.perf_counter()
            runs = args.runs if n < 1000 else min(args.runs, args.big_runs)
            for r in range(runs):
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                for v in order:
                    if v in ANCHORS:
                        anchor_cycle(world, s, v, n)
                    else:
                        bpfdeploy_cycle(world, s, v, n, notes)
                for v in (DEPLOYS if r % 2 == 0 else DEPLOYS[::-1]):
                    bpfdeploy_cold(world, s, v, n, r)
            console.print(f"N={n}: {runs} rounds in {time.perf_counter() - t:.1f} s "
                          f"(warm apply median: A {statistics.median(s.get('warm apply', 'A', n)):.1f} ms, "
                          f"bpfdeploy {statistics.median(s.get('warm apply', 'multi', n)):.1f} ms)")

        probe_dir = tmp / "probe-bench"
        penv = dict(world.env, BPFDEPLOY_PROBE_CACHE=str(probe_dir))
        for _ in range(args.runs):
            s.add("probe features --refresh", "p", 0, bpfdeploy(world, "probe", "features", "--refresh", env=penv).ms)
            s.add("probe features (cached)", "p", 0, bpfdeploy(world, "probe", "features", env=penv).ms)
            s.add("probe features --json (cached)", "p", 0,
                  bpfdeploy(world, "probe", "features", "--json", env=penv).ms)
        probe = {k: summary(s.get(k, "p", 0)) for k in ("probe features --refresh", "probe features (cached)",
                                                          "probe features --json (cached)")}

        console.print("instrumented runs (process counts, RSS) ...")
        inst: dict = {}
        for n in sizes:
            inst[str(n)] = {v: instrument_deploy(world, v, n) for v in DEPLOYS}
            for v in ANCHORS:
                anchor_cycle(world, None, v, n, anchor_rss)
        inst["-"] = {"probe": {"probe --refresh": instrumented(world, ["probe", "features", "--json", "--refresh"], penv),
                               "probe (cached)": instrumented(world, ["probe", "features", "--json"], penv)}}
        anchor_procs = {}
        for (v, n), steps in sorted(anchor_rss.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            for what, (count, kb) in steps.items():
                by = {"A": f"bpftool×{count - (1 if what != 'deploy' else 0)}" + (", rm×1" if what != "deploy" else ""),
                      "B": "bpftool×1" + (", rm×1" if what != "deploy" else ""), "C": "python×1"}[v]
                anchor_procs[f"{what}|{n}|{VARIANT_LABEL[v]}"] = {"processes": count, "by_exe": by, "max_rss_kb": kb,
                                                                  "what": "bpftool" if v != "C" else "python"}

        (HERE / "results").mkdir(exist_ok=True)
        imports = {}
        big = max(sizes)
        if not args.no_profile:
            m1 = manifest_path(world, "multi", big, 1)
            bpfdeploy(world, "apply", m1)
            imports = import_profile(world, m1, stamp, save=not args.quick)
            if not args.quick:  # the raw profiles go next to the results, for reading
                cprofile(world, ["plan", m1], HERE / "results" / f"{stamp}-cprofile-noop-plan.txt")
                bpfdeploy(world, "destroy", m1)
                cprofile(world, ["apply", m1], HERE / "results" / f"{stamp}-cprofile-warm-apply.txt")
            bpfdeploy(world, "destroy", m1)
            check_gone(world, "multi", big)

        module = {}
        if not args.no_module:
            console.print("the Ansible module's overhead (bench/module_overhead.py) ...")
            import module_overhead

            try:
                module = module_overhead.measure(world.tmp, world.env, args.runs)
            except Exception as exc:  # reported, not fatal: the other figures stand
                module = {"error": str(exc)[-500:]}
        results = build_results(s, world, {"probe": probe, "instrumented": inst, "anchor_processes": anchor_procs,
                                            "imports": imports, "notes": notes, "module": module})
        results["meta"] = host_meta(world, args)
        results["meta"]["loadavg_end"] = os.getloadavg()
        results["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
        results["transient_failures"] = transient_failures
        results["targets"] = evaluate_targets(results, world)
        results["growth"] = growth(results, world)
        results["targets_16"] = evaluate_targets_16(results, world)
        render(results)
        path = HERE / "results" / f"{stamp}.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(results))
        if not args.quick:
            (HERE / "results" / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
            (HERE / "results" / "latest.md").write_text(markdown(results))
        console.print(f"results: {path}  ({results['meta']['wall_s']} s)")
        return 0
    except KeyboardInterrupt:
        console.print("[red]interrupted: cleaning up[/]")
        return 130
    except BenchError as exc:
        console.print("bench failed:", str(exc), style="red", markup=False, highlight=False)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        problems = cleanup(world)
        if world is not None:
            for p in problems:
                console.print("cleanup:", p, style="red", markup=False, highlight=False)
            left = [p for p in (world.pin_base, world.cg_base) if p.exists()]
            if left:
                console.print(f"[red]left behind:[/] {left}")


if __name__ == "__main__":
    sys.exit(main())
