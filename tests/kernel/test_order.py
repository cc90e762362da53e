"""Several programs on one hook in a known order (`order:`), on kernel 6.18: cgroup links and
tcx links placed with BPF_F_BEFORE/BPF_F_AFTER, a foreign program on the hook shown in the
plan's chain and left where it is, re-apply leaving the chain alone, a changed order moving
exactly the programs out of place, and XDP refused with the reason.

The effect is checked by the programs themselves: each appends its tag to a log map as it
runs, so the log of one packet is the order the kernel ran them in.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from tests.kernel.conftest import map_values, prog_ids_under
from tests.kernel.test_lifecycle import _attach_foreign
from tests.kernel.traffic import ECHO
from tests.reply_schemas import check_reply

LOGGERS = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 64);
} run_log SEC(".maps");  /* key 0: the next free slot; keys 1..63: tags in the order the programs ran */

static __always_inline void log_tag(__u32 tag)
{
    __u32 zero = 0;
    __u32 *next = bpf_map_lookup_elem(&run_log, &zero);
    if (!next)
        return;
    __u32 slot = __sync_fetch_and_add(next, 1) + 1;
    if (slot < 64)
        bpf_map_update_elem(&run_log, &slot, &tag, BPF_ANY);
}

SEC("cgroup_skb/ingress") int prog_a(struct __sk_buff *skb) { log_tag(1); return 1; }
SEC("cgroup_skb/ingress") int prog_b(struct __sk_buff *skb) { log_tag(2); return 1; }
SEC("cgroup_skb/ingress") int prog_c(struct __sk_buff *skb) { log_tag(3); return 1; }
SEC("tc") int tcx_a(struct __sk_buff *skb) { return -1; }
SEC("tc") int tcx_b(struct __sk_buff *skb) { return -1; }

char LICENSE[] SEC("license") = "GPL";
"""


def _manifest(sandbox, cgroup: Path, ns: str, orders: dict) -> Path:
    src = sandbox.tmp / "loggers.bpf.c"
    src.write_text(LOGGERS)
    name = f"{sandbox.id}-order"
    root = Path(f"/sys/fs/bpf/bpfdeploy-test/{name}")
    if root not in sandbox.pin_roots:
        sandbox.pin_roots.append(root)
    atts = [{"name": n, "program": f"prog_{n}", "type": "ingress", "cgroup": str(cgroup)} for n in ("a", "b", "c")]
    atts += [{"name": f"t{n}", "program": f"tcx_{n}", "type": "tcx_ingress", "device": "r0", "netns": ns}
             for n in ("a", "b")]
    for att in atts:
        if att["name"] in orders:
            att["order"] = orders[att["name"]]
    data = {"version": 1, "name": name, "pin_root": str(root), "objects": {"loggers": {"source": str(src), "cflags": ["-mcpu=v3"]}},  # atomic fetch-add
            "attachments": atts}
    path = sandbox.tmp / "order.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if path not in sandbox.manifests:
        sandbox.manifests.append(path)
    return path


def _query(target: str, attach_type: int, ns: str | None = None) -> list[int]:
    """BPF_PROG_QUERY: the hook's chain, first to last (a cgroup path, or a device in ns for tcx)."""
    code = f"""
import json, os, socket, sys
from bpfdeploy.kernel import libbpf
t = {target!r}
fd = os.open(t, os.O_RDONLY | os.O_DIRECTORY) if t.startswith("/") else socket.if_nametoindex(t)
print(json.dumps(list(libbpf.prog_query(fd, {attach_type}).prog_ids)))
"""
    argv = ["python3", "-c", code] if ns is None else ["nsenter", f"--net=/var/run/netns/{ns}", "python3", "-c", code]
    import sys

    argv[argv.index("python3")] = sys.executable
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def _run_log(sandbox, root: Path, cgroup: Path) -> list[int]:
    """Tags logged while one short loopback exchange runs in the cgroup (after clearing the log)."""
    log = root / "maps" / "run_log"
    subprocess.run(["bpftool", "map", "update", "pinned", str(log), "key", "0", "0", "0", "0",
                    "value", "0", "0", "0", "0"], check=True)
    sandbox.run_in(ECHO.format(n=1), cgroup=cgroup, netns=sandbox.netns(f"log{len(sandbox.netns_names)}"))
    values = map_values(log)
    used = min(values[0], 63)
    return [values[i] for i in range(1, used + 1)]


def _ids(root: Path) -> dict[str, int]:
    return {Path(p).name: i for p, i in prog_ids_under(root).items() if "/progs/" in p}


def test_order_places_cgroup_and_tcx_links_and_reapply_leaves_the_chain_alone(sandbox):
    cgroup, ns = sandbox.cgroup("order"), sandbox.netns("order")
    subprocess.run(["ip", "-n", ns, "link", "add", "r0", "type", "veth", "peer", "name", "r1"], check=True)
    foreign = _attach_foreign(sandbox, cgroup, "multi")
    try:
        manifest = _manifest(sandbox, cgroup, ns, {"a": "last", "b": "first", "c": {"after": "b"},
                                                   "tb": "first"})
        root = sandbox.pin_roots[-1]
        planned = sandbox.cli_json("plan", manifest)
        check_reply("plan", planned)
        chains = {c["hook"].split(" ")[0]: [p["name"] for p in c["programs"]] for c in planned["chains"]}
        foreign_label = next(n for n in chains["ingress"] if "not ours" in n)
        assert chains["ingress"] == ["b", "c", foreign_label, "a"], chains
        assert chains["tcx_ingress"] == ["tb", "ta"], chains
        human = sandbox.cli("plan", manifest).stdout
        assert f"chain on ingress on cgroup {cgroup}: b* -> c* -> {foreign_label} -> a*" in human, human

        sandbox.cli("apply", manifest)
        ids = _ids(root)
        foreign_id = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(foreign)],
                                               capture_output=True, text=True, check=True).stdout)["id"]
        assert _query(str(cgroup), 0) == [ids["prog_b"], ids["prog_c"], foreign_id, ids["prog_a"]]
        assert _query("r0", 46, ns) == [ids["tcx_b"], ids["tcx_a"]]
        log = _run_log(sandbox, root, cgroup)
        assert log and len(log) % 3 == 0 and log[:3] == [2, 3, 1] and log == [2, 3, 1] * (len(log) // 3), log

        again = sandbox.cli_json("apply", manifest)
        assert again["applied"] is False and again["mutations"] == 0, again
        assert _query(str(cgroup), 0) == [ids["prog_b"], ids["prog_c"], foreign_id, ids["prog_a"]]

        # A new order: only the attachments out of place are made again, at their place.
        changed = _manifest(sandbox, cgroup, ns, {"a": "first", "b": {"after": "a"}, "c": "last", "ta": "first"})
        planned = sandbox.cli_json("plan", changed)
        moved = sorted(a["address"] for a in planned["actions"] if a["action"] == "replace")
        # b stays: once a is in front, b is right after it already.
        assert moved == ["attach/a", "attach/c", "attach/ta"], moved
        chains = {c["hook"].split(" ")[0]: [p["name"] for p in c["programs"]] for c in planned["chains"]}
        assert chains["ingress"] == ["a", "b", foreign_label, "c"], chains
        assert chains["tcx_ingress"] == ["ta", "tb"], chains
        sandbox.cli("apply", changed)
        assert _query(str(cgroup), 0) == [ids["prog_a"], ids["prog_b"], foreign_id, ids["prog_c"]]
        assert _query("r0", 46, ns) == [ids["tcx_a"], ids["tcx_b"]]
        log = _run_log(sandbox, root, cgroup)
        assert log[:3] == [1, 2, 3] and log == [1, 2, 3] * (len(log) // 3), log
        assert sandbox.cli("plan", changed, "--detailed-exitcode", check=False).returncode == 0
    finally:
        subprocess.run(["bpftool", "cgroup", "detach", str(cgroup), "ingress", "pinned", str(foreign)],
                       capture_output=True)


def test_order_on_xdp_or_a_tc_filter_is_refused_with_the_reason(sandbox):
    cgroup = sandbox.cgroup("badorder")
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-badorder
        pin_root: /sys/fs/bpf/bpfdeploy-test/{sandbox.id}-badorder
        objects:
          x: {{source: /nonexistent.bpf.c}}
        attachments:
          - {{name: one, program: p, type: xdp, device: lo, order: first}}
          - {{name: two, program: q, type: tc_ingress, device: lo, order: last}}
          - {{name: three, program: r, type: ingress, cgroup: {cgroup}, order: {{before: nosuch}}}}
    """)
    proc = sandbox.cli("validate", manifest, check=False)
    assert proc.returncode == 1
    assert "attachments[0].order: order cannot be kept on attach type 'xdp': the kernel cannot order XDP" \
        in proc.stderr, proc.stderr
    assert "attachments[1].order" in proc.stderr and "priority" in proc.stderr
    assert "attachments[2].order: order before nosuch: no other attachment named 'nosuch'" in proc.stderr
    assert "Traceback" not in proc.stderr
