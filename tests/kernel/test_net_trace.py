"""Device and tracing attachments: XDP, tc, tcx, tracepoint, raw tracepoint, tp_btf, uprobes, iterators."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.kernel.conftest import REPO, map_values

UDP_SEND = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in {ports}:
    for _ in range({n}):
        s.sendto(b"x" * 32, ("{addr}", port))
"""

UDP_RECV = """
import socket, sys, json
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("0.0.0.0", {port})); r.settimeout(0.3)
got = 0
print("ready", flush=True)
try:
    while True:
        r.recv(100); got += 1
except socket.timeout:
    pass
print(got)
"""


def _pair(sandbox) -> tuple[str, str, str]:
    """Two namespaces joined by a veth pair: (ns_a with a0 10.213.77.1, ns_b with b0 10.213.77.2)."""
    a, b = sandbox.netns("a"), sandbox.netns("b")
    subprocess.run(["ip", "-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "b0", "netns", b], check=True)
    for ns, dev, addr in ((a, "a0", "10.213.77.1/30"), (b, "b0", "10.213.77.2/30")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
    return a, b, "a0"


def _example(sandbox, filename: str, out: Path | None = None, **replace) -> tuple[Path, Path]:
    """A bundled example with the sandbox's names and the given attachment fields, written to ``out``
    (default: the sandbox's directory, under the example's own name)."""
    src = REPO / "manifests" / filename
    data = yaml.safe_load(src.read_text())
    data["name"] = f"{sandbox.id}-{data['name']}"
    data["pin_root"] = str(sandbox.pin_root(data["name"]))
    for obj in data["objects"].values():
        obj["source"] = str((src.parent / obj["source"]).resolve())
    for att in data["attachments"]:
        for key, value in replace.items():
            if key in att:
                att[key] = value
    out = out or sandbox.tmp / filename
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    sandbox.manifests.append(out)
    return out, Path(data["pin_root"])


def _udp(sandbox, a: str, b: str, ports: list[int], n: int, listen: int) -> int:
    """Send n datagrams to each port from b to a; return how many reached a listener on `listen` in a."""
    recv = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{a}", "python3", "-c", UDP_RECV.format(port=listen)],
                            stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    sandbox.run_in(UDP_SEND.format(ports=ports, n=n, addr="10.213.77.1"), netns=b)
    out, _ = recv.communicate(timeout=10)
    return int(out.strip())


def test_xdp_counts_everything_and_drops_one_udp_port(sandbox):
    a, b, dev = _pair(sandbox)
    manifest, root = _example(sandbox, "xdp-drop.yaml", device=dev, netns=a)
    sandbox.cli("apply", manifest)
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    assert _udp(sandbox, a, b, [9], 5, listen=9) == 0  # dropped before the socket
    stats = map_values(root / "maps/xdp_stats")
    assert stats[1] == 5 and stats[0] >= 5
    assert _udp(sandbox, a, b, [10], 5, listen=10) == 5  # other ports pass
    assert map_values(root / "maps/xdp_stats")[1] == 5
    shown = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "bpftool", "-j", "net", "show"],
                                      capture_output=True, text=True).stdout)
    assert [x["mode"] for x in shown[0]["xdp"]] == ["generic"]
    # Upgrade: change the port through the map, no reload; destroy detaches.
    sandbox.cli("destroy", manifest)
    assert _udp(sandbox, a, b, [9], 3, listen=9) == 3


def test_xdp_refuses_a_device_that_someone_else_holds(sandbox):
    a, _b, dev = _pair(sandbox)
    obj = sandbox.tmp / "xdp.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c",
                    str(REPO / "bpf/xdp-drop/xdp_drop.bpf.c"), "-o", str(obj)], check=True)
    foreign = sandbox.pin_root(f"{sandbox.id}-foreign")
    foreign.mkdir(parents=True)
    subprocess.run(["bpftool", "prog", "load", str(obj), str(foreign / "p"), "type", "xdp"], check=True)
    subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "bpftool", "net", "attach", "xdpgeneric", "pinned",
                    str(foreign / "p"), "dev", dev], check=True)
    manifest, root = _example(sandbox, "xdp-drop.yaml", device=dev, netns=a)
    proc = sandbox.cli("apply", manifest, check=False)
    assert proc.returncode == 1 and "conflict" in proc.stdout + proc.stderr
    assert not root.exists()


def test_tc_filter_and_tcx_link_count_and_survive_upgrade(sandbox):
    a, b, dev = _pair(sandbox)
    manifest, root = _example(sandbox, "tc-mark.yaml", device=dev, netns=a)
    sandbox.cli("apply", manifest)
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    filters = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "tc", "-j", "filter", "show", "dev",
                                         dev, "ingress"], capture_output=True, text=True).stdout)
    assert [(f["pref"], f["options"]["handle"]) for f in filters if "options" in f] == [(10, "0x1")]
    assert not Path("/sys/fs/bpf/tc").exists()  # tc made nothing outside the pin root

    _udp(sandbox, a, b, [10], 4, listen=10)
    sandbox.run_in(UDP_SEND.format(ports=[11], n=3, addr="10.213.77.2"), netns=a)  # egress from a0
    stats = map_values(root / "maps/tc_stats")
    assert stats[0]["packets"] >= 4 and stats[1]["packets"] >= 3

    # Apply again: still one filter (no duplicates); a changed program is swapped in place.
    src = sandbox.tmp / "tc_mark.bpf.c"
    src.write_text((REPO / "bpf/tc-mark/tc_mark.bpf.c").read_text().replace("0x2a", "0x2b"))
    data = yaml.safe_load(manifest.read_text())
    data["objects"]["tc"]["source"] = str(src)
    data["objects"]["tc"]["include_dirs"] = []
    manifest.write_text(yaml.safe_dump(data))
    plan = {x["address"]: x for x in sandbox.cli_json("plan", manifest)["actions"]}
    ingress = next(v for k, v in plan.items() if k.startswith("attach/tc_ingress_mark"))
    egress = next(v for k, v in plan.items() if k.startswith("attach/tc_egress_mark"))
    assert ingress["action"] == "update" and "tc filter replace" in ingress["transition"]
    assert egress["action"] == "update" and "atomic link update" in egress["transition"]
    sandbox.cli("apply", manifest)
    filters = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "tc", "-j", "filter", "show", "dev",
                                         dev, "ingress"], capture_output=True, text=True).stdout)
    assert len([f for f in filters if "options" in f]) == 1
    assert map_values(root / "maps/tc_stats")[0]["packets"] >= 4  # counters kept
    sandbox.cli("destroy", manifest)
    qdiscs = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "tc", "-j", "qdisc", "show", "dev", dev],
                                       capture_output=True, text=True).stdout)
    assert not any(q["kind"] == "clsact" for q in qdiscs)  # we added it, so we removed it


def test_tracepoint_counts_execs_after_bpfdeploy_exits(sandbox):
    manifest, root = _example(sandbox, "trace-exec.yaml")
    sandbox.cli("apply", manifest)
    subprocess.run(["sh", "-c", "/bin/true; /bin/true; /bin/true; /bin/true"], check=True)
    counts = map_values(root / "maps/exec_count")
    by_comm = {bytes(int(x, 16) if isinstance(x, str) else x for x in k).rstrip(b"\0").decode()
               if isinstance(k, tuple) else k: v for k, v in counts.items()}
    assert by_comm.get("sh", 0) >= 4, by_comm
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    links = json.loads(subprocess.run(["bpftool", "-j", "-f", "link", "show"], capture_output=True, text=True).stdout)
    assert any(l["type"] == "perf_event" and any(p.startswith(str(root)) for p in l.get("pinned", ())) for l in links)


RAW_SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, __u64); __uint(max_entries, 3); } hits SEC(".maps");
static __always_inline void bump(__u32 k) { __u64 *v = bpf_map_lookup_elem(&hits, &k); if (v) __sync_fetch_and_add(v, 1); }
SEC("raw_tracepoint/sys_enter") int raw_enter(void *ctx) { bump(0); return 0; }
SEC("tp_btf/sys_enter") int btf_enter(void *ctx) { bump(1); return 0; }
SEC("iter/bpf_map") int dump_maps(void *ctx) { bump(2); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def test_raw_tracepoint_tp_btf_and_iterator(sandbox):
    src = sandbox.tmp / "raw.bpf.c"
    src.write_text(RAW_SRC)
    root = sandbox.pin_root(f"{sandbox.id}-raw")
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-raw
        pin_root: {root}
        objects:
          raw:
            source: {src}
        attachments:
          - {{program: raw_enter, type: raw_tracepoint, target: sys_enter}}
          - {{program: btf_enter, type: tp_btf}}
          - {{name: maps-iter, program: dump_maps, type: iter}}
    """)
    sandbox.cli("apply", manifest)
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    subprocess.run(["true"])
    hits = map_values(root / "maps/hits")
    assert hits[0] > 0 and hits[1] > 0
    (root / "links/maps-iter").read_bytes()  # reading the pinned iterator runs it
    assert map_values(root / "maps/hits")[2] > 0


def test_uprobe_counts_calls_and_records_stacks(sandbox):
    binary = sandbox.tmp / "target"
    subprocess.run(["clang", "-O1", "-g", "-o", str(binary), str(REPO / "bpf/uprobe-demo/target.c")], check=True)
    manifest, root = _example(sandbox, "uprobe-demo.yaml", binary=str(binary))
    sandbox.cli("apply", manifest)
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    subprocess.run([str(binary), "7"], check=True, capture_output=True)
    calls = map_values(root / "maps/calls")
    assert calls[0] == 7 and calls[1] == 7
    assert sum(map_values(root / "maps/stack_hits").values()) == 7
    # A rebuilt binary moves the function: the plan sees the new offset and re-attaches.
    moved = sandbox.tmp / "target2.c"
    moved.write_text((REPO / "bpf/uprobe-demo/target.c").read_text().replace(
        "__attribute__((noinline)) int handle_request",
        "__attribute__((noinline)) int pad(int n) { return n ^ 0x55; }\n\n__attribute__((noinline)) int handle_request"))
    subprocess.run(["clang", "-O1", "-g", "-o", str(binary), str(moved)], check=True)
    changes = [x for x in sandbox.cli_json("plan", manifest)["actions"] if x["action"] != "no-op"]
    assert changes and all(x["action"] == "replace" for x in changes), changes
    sandbox.cli("apply", manifest)
    subprocess.run([str(binary), "2"], check=True, capture_output=True)
    assert map_values(root / "maps/calls")[0] == 9


def test_kprobe_is_refused_clearly_on_this_kernel(sandbox):
    src = sandbox.tmp / "kp.bpf.c"
    src.write_text('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\nSEC("kprobe/do_nanosleep") '
                   'int kp(void *ctx) { return 0; }\nchar LICENSE[] SEC("license") = "GPL";\n')
    root = sandbox.pin_root(f"{sandbox.id}-kp")
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-kp
        pin_root: {root}
        objects:
          kp: {{source: {src}}}
        attachments:
          - {{program: kp, type: kprobe, target: do_nanosleep}}
    """)
    proc = sandbox.cli("plan", manifest, check=False)
    if Path("/sys/bus/event_source/devices/kprobe").exists():
        assert proc.returncode == 0
    else:
        assert proc.returncode == 1
        assert "no kprobe PMU" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr


def test_xdp_mode_change_and_rename_take_over_the_device(sandbox):
    a, b, dev = _pair(sandbox)
    manifest, root = _example(sandbox, "xdp-drop.yaml", device=dev, netns=a)
    sandbox.cli("apply", manifest)
    data = yaml.safe_load(manifest.read_text())
    data["attachments"][0]["xdp_mode"] = "driver"
    manifest.write_text(yaml.safe_dump(data))
    change = [x for x in sandbox.cli_json("plan", manifest)["actions"] if x["action"] != "no-op"]
    assert len(change) == 1 and change[0]["action"] == "replace" and "gap" in change[0]["transition"]
    sandbox.cli("apply", manifest)
    shown = json.loads(subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "bpftool", "-j", "net", "show"],
                                      capture_output=True, text=True).stdout)
    assert [x["mode"] for x in shown[0]["xdp"]] == ["driver"]
    data["attachments"][0]["name"] = "renamed"
    manifest.write_text(yaml.safe_dump(data))
    sandbox.cli("apply", manifest)
    assert [p.name for p in (root / "links").iterdir()] == ["renamed"]
    assert sandbox.cli_json("plan", manifest)["changes"] is False
    assert _udp(sandbox, a, b, [9], 3, listen=9) == 0  # still dropping


def test_tc_both_directions_on_a_bare_device_and_a_moved_filter(sandbox):
    a, b, dev = _pair(sandbox)
    manifest, root = _example(sandbox, "tc-mark.yaml", device=dev, netns=a)
    data = yaml.safe_load(manifest.read_text())
    data["attachments"][1]["type"] = "tc_egress"  # both are tc filters: one clsact qdisc for both
    data["attachments"][1]["priority"] = 10
    manifest.write_text(yaml.safe_dump(data))
    plan = sandbox.cli_json("plan", manifest)
    assert [x["resource"] for x in plan["actions"]].count("qdisc") == 1
    sandbox.cli("apply", manifest)
    data["attachments"][0]["priority"] = 20
    manifest.write_text(yaml.safe_dump(data))
    sandbox.cli("apply", manifest)

    def prefs(direction):
        out = subprocess.run(["nsenter", f"--net=/var/run/netns/{a}", "tc", "-j", "filter", "show", "dev", dev,
                              direction], capture_output=True, text=True).stdout
        return [f["pref"] for f in json.loads(out) if "options" in f]
    assert prefs("ingress") == [20] and prefs("egress") == [10]
    sandbox.cli("destroy", manifest)
    assert prefs("ingress") == [] and prefs("egress") == []


def test_uprobe_follows_a_binary_replaced_by_a_new_file(sandbox):
    binary = sandbox.tmp / "target"
    subprocess.run(["clang", "-O1", "-g", "-o", str(binary), str(REPO / "bpf/uprobe-demo/target.c")], check=True)
    manifest, root = _example(sandbox, "uprobe-demo.yaml", binary=str(binary))
    sandbox.cli("apply", manifest)
    fresh = sandbox.tmp / "target.new"
    subprocess.run(["clang", "-O1", "-g", "-o", str(fresh), str(REPO / "bpf/uprobe-demo/target.c")], check=True)
    fresh.replace(binary)  # same code, same offset, a new inode (as a package upgrade does)
    changes = [x for x in sandbox.cli_json("plan", manifest)["actions"] if x["action"] != "no-op"]
    assert len(changes) == 2 and all("inode" in x["reason"] for x in changes), changes
    sandbox.cli("apply", manifest)
    subprocess.run([str(binary), "3"], check=True, capture_output=True)
    assert map_values(root / "maps/calls")[0] == 3


def test_uprobe_on_a_go_program_records_its_call_stacks(sandbox):
    binary = sandbox.tmp / "goprog"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=REPO / "bpf/uprobe-go", check=True,
                   env={**__import__("os").environ, "GOCACHE": str(sandbox.tmp / "gocache"), "GOFLAGS": "-mod=mod",
                        "HOME": str(sandbox.tmp)})
    manifest, root = _example(sandbox, "uprobe-go.yaml", binary=str(binary))
    sandbox.cli("apply", manifest)
    subprocess.run([str(binary), "6"], check=True, capture_output=True)
    assert map_values(root / "maps/calls")[0] == 6
    # Each recorded stack, read back through the binary's symbols, starts at main.handleRequest and
    # goes up to main.main and runtime.main. (At a function's first instruction its own frame is
    # not set up yet, so a frame-pointer walk skips the direct caller, main.serve.)
    symbols = []
    for line in subprocess.run(["nm", "-n", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            symbols.append((int(parts[0], 16), parts[2]))

    def name(addr: int) -> str:
        best = "?"
        for start, sym in symbols:
            if start > addr:
                break
            best = sym
        return best
    hits = map_values(root / "maps/stack_hits")
    assert sum(hits.values()) == 6
    dump = json.loads(subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(root / "maps/stacks")],
                                     capture_output=True, text=True, check=True).stdout)
    frames = []
    for entry in dump:  # a stack-trace map has no BTF: values are raw bytes, 8-byte addresses
        raw = bytes(int(x, 16) for x in entry["value"])
        addresses = [int.from_bytes(raw[i:i + 8], "little") for i in range(0, len(raw), 8)]
        frames.append([name(a) for a in addresses if a])
    assert any(f[0] == "main.handleRequest" and "main.main" in f and "runtime.main" in f for f in frames if f), frames
