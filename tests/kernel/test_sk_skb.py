"""sk_skb verdicts on a sockhash: stream_parser + stream_verdict, and skb_verdict alone."""

from __future__ import annotations

import pytest

from tests.kernel.conftest import REPO, map_values
from tests.kernel.traffic import ECHO

SRC = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "sock_key.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 2);
} skb_stats SEC(".maps");

static __always_inline void count(__u32 slot)
{
    __u64 *v = bpf_map_lookup_elem(&skb_stats, &slot);
    if (v)
        __sync_fetch_and_add(v, 1);
}

SEC("sk_skb/stream_parser")
int parser(struct __sk_buff *skb)
{
    count(0);
    return skb->len;  /* each skb is one message */
}

SEC("sk_skb/stream_verdict")
int verdict(struct __sk_buff *skb)
{
    count(1);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.mark.parametrize("types", [("stream_parser", "stream_verdict"), ("skb_verdict",)])
def test_sk_skb_programs_see_the_sockets_traffic(sandbox, types):
    src = sandbox.tmp / "skb.bpf.c"
    text = SRC if types != ("skb_verdict",) else SRC.replace('SEC("sk_skb/stream_verdict")', 'SEC("sk_skb")')
    src.write_text(text)
    cgroup = sandbox.cgroup("skb")
    root = sandbox.pin_root(f"{sandbox.id}-skb")
    programs = {"stream_parser": "parser", "stream_verdict": "verdict", "skb_verdict": "verdict"}
    attach = "".join(f"""
          - program: {programs[t]}
            type: {t}
            map: sock_ops_map""" for t in types)
    manifest = sandbox.write(f"""
        version: 1
        name: {sandbox.id}-skb
        pin_root: {root}
        objects:
          sockops:
            source: {REPO}/bpf/sockmap-redirect/sockops.bpf.c
          skb:
            source: {src}
            include_dirs: [{REPO}/bpf/sockmap-redirect]
            programs:
              {"parser: {}" if "stream_parser" in types else "verdict: {}"}
              {"verdict: {}" if "stream_parser" in types else ""}
        attachments:
          - program: bpf_sockops_handler
            type: sock_ops
            cgroup: {cgroup}{attach}
    """)
    sandbox.cli("apply", manifest)
    replan = sandbox.cli_json("plan", manifest)
    assert replan["changes"] is False, [a for a in replan["actions"] if a["action"] != "no-op"]
    netns = sandbox.netns()
    assert sandbox.run_in(ECHO.format(n=4), cgroup=cgroup, netns=netns).stdout.strip() == "4"
    stats = map_values(root / "maps" / "skb_stats")
    assert stats[1] >= 8, stats  # every request and echo went through the verdict program
    if "stream_parser" in types:
        assert stats[0] >= 8, stats
    else:
        assert stats[0] == 0
