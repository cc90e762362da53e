"""What can be attached where: attach types, program types, and which fit together.

Numbers are the kernel's UAPI enum values (stable ABI), so this table does not depend on
which libbpf or bpftool version is installed. Names follow bpftool: the long name is what
``bpftool … -j`` prints, the short names are what its command line accepts.
"""

from __future__ import annotations

import enum

from bpfdeploy.model.frozen import frozen


class HookKind(enum.Enum):
    """The family of an attach point: what the target of an attachment is."""

    CGROUP = "cgroup"  # a cgroup v2 directory
    SOCKMAP = "map"  # a sockmap or sockhash
    NETNS = "netns"  # a network namespace (flow dissector)
    DEVICE = "device"  # a network device, optionally in a named netns (xdp, tc, tcx)
    TRACE = "trace"  # a tracepoint, a raw tracepoint, a BTF tracepoint, a uprobe, an iterator


@frozen
class AttachType:
    """One kernel attach type and the program types that may use it."""

    value: int  # enum bpf_attach_type
    name: str  # long name, as bpftool -j prints it
    short: tuple[str, ...]  # bpftool command-line names
    kind: HookKind
    program_types: tuple[str, ...]
    # Program types loaded with expected_attach_type must be attached to exactly that type.
    needs_expected: bool = False
    # A link of this type can be moved to a new program atomically (BPF_LINK_UPDATE). Links
    # that cannot (perf_event, raw_tracepoint, iter) are recreated: both programs run briefly.
    link_update: bool = True
    # Attached with the tc command (clsact + bpf filter), not through a link.
    tc_filter: bool = False


def _at(value, name, short, kind, types, needs_expected=False, link_update=True, tc_filter=False):
    return AttachType(value, name, tuple(short), kind, tuple(types), needs_expected, link_update, tc_filter)


_C, _S, _N, _D, _T = HookKind.CGROUP, HookKind.SOCKMAP, HookKind.NETNS, HookKind.DEVICE, HookKind.TRACE
BPF_PERF_EVENT, BPF_TRACE_RAW_TP, BPF_TRACE_ITER = 41, 23, 28
BPF_F_ALLOW_OVERRIDE, BPF_F_ALLOW_MULTI, BPF_F_REPLACE = 1, 2, 4  # legacy attach flags
# Not kernel attach types: tc filters on a clsact qdisc have none, so the table gives them these
# two pseudo values. They are written into deployment records (LegacyAttachment.attach_type), so
# they stay as they are; every use goes through these names, never the numbers.
TC_INGRESS, TC_EGRESS = -1, -2
BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47  # the kernel's enum bpf_attach_type


def split_device_target(target: str) -> tuple[str, str | None]:
    """A device hook's target as the record keeps it, "device[@netns file]", as (device, netns file)."""
    device, _, netns = target.partition("@")
    return device, netns or None
ADDR = ("cgroup_sock_addr",)

ATTACH_TYPES: tuple[AttachType, ...] = (
    _at(0, "cgroup_inet_ingress", ["ingress"], _C, ["cgroup_skb"]),
    _at(1, "cgroup_inet_egress", ["egress"], _C, ["cgroup_skb"]),
    _at(2, "cgroup_inet_sock_create", ["sock_create"], _C, ["cgroup_sock"], True),
    _at(3, "cgroup_sock_ops", ["sock_ops"], _C, ["sock_ops"]),
    _at(4, "sk_skb_stream_parser", ["stream_parser"], _S, ["sk_skb"]),
    _at(5, "sk_skb_stream_verdict", ["stream_verdict"], _S, ["sk_skb"]),
    _at(6, "cgroup_device", ["device"], _C, ["cgroup_device"]),
    _at(7, "sk_msg_verdict", ["msg_verdict"], _S, ["sk_msg"]),
    _at(8, "cgroup_inet4_bind", ["bind4"], _C, ADDR, True),
    _at(9, "cgroup_inet6_bind", ["bind6"], _C, ADDR, True),
    _at(10, "cgroup_inet4_connect", ["connect4"], _C, ADDR, True),
    _at(11, "cgroup_inet6_connect", ["connect6"], _C, ADDR, True),
    _at(12, "cgroup_inet4_post_bind", ["post_bind4"], _C, ["cgroup_sock"], True),
    _at(13, "cgroup_inet6_post_bind", ["post_bind6"], _C, ["cgroup_sock"], True),
    _at(14, "cgroup_udp4_sendmsg", ["sendmsg4"], _C, ADDR, True),
    _at(15, "cgroup_udp6_sendmsg", ["sendmsg6"], _C, ADDR, True),
    _at(17, "flow_dissector", ["flow_dissector"], _N, ["flow_dissector"]),
    _at(18, "cgroup_sysctl", ["sysctl"], _C, ["cgroup_sysctl"]),
    _at(19, "cgroup_udp4_recvmsg", ["recvmsg4"], _C, ADDR, True),
    _at(20, "cgroup_udp6_recvmsg", ["recvmsg6"], _C, ADDR, True),
    _at(21, "cgroup_getsockopt", ["getsockopt"], _C, ["cgroup_sockopt"], True),
    _at(22, "cgroup_setsockopt", ["setsockopt"], _C, ["cgroup_sockopt"], True),
    _at(29, "cgroup_inet4_getpeername", ["getpeername4"], _C, ADDR, True),
    _at(30, "cgroup_inet6_getpeername", ["getpeername6"], _C, ADDR, True),
    _at(31, "cgroup_inet4_getsockname", ["getsockname4"], _C, ADDR, True),
    _at(32, "cgroup_inet6_getsockname", ["getsockname6"], _C, ADDR, True),
    _at(34, "cgroup_inet_sock_release", ["sock_release"], _C, ["cgroup_sock"], True),
    _at(38, "sk_skb_verdict", ["skb_verdict"], _S, ["sk_skb"]),
    _at(49, "cgroup_unix_connect", ["connect_unix"], _C, ADDR, True),
    _at(50, "cgroup_unix_sendmsg", ["sendmsg_unix"], _C, ADDR, True),
    _at(51, "cgroup_unix_recvmsg", ["recvmsg_unix"], _C, ADDR, True),
    _at(52, "cgroup_unix_getpeername", ["getpeername_unix"], _C, ADDR, True),
    _at(53, "cgroup_unix_getsockname", ["getsockname_unix"], _C, ADDR, True),
    _at(37, "xdp", ["xdp"], _D, ["xdp"]),
    _at(BPF_TCX_INGRESS, "tcx_ingress", ["tcx_ingress"], _D, ["sched_cls"]),
    _at(BPF_TCX_EGRESS, "tcx_egress", ["tcx_egress"], _D, ["sched_cls"]),
    # A tc bpf filter takes classifiers only: the kernel refuses sched_act programs there (EINVAL).
    _at(TC_INGRESS, "tc_ingress", ["tc_ingress"], _D, ["sched_cls"], tc_filter=True),
    _at(TC_EGRESS, "tc_egress", ["tc_egress"], _D, ["sched_cls"], tc_filter=True),
    _at(BPF_PERF_EVENT, "tracepoint", ["tracepoint"], _T, ["tracepoint"], link_update=False),
    _at(BPF_TRACE_RAW_TP, "raw_tracepoint", ["raw_tracepoint", "raw_tp"], _T,
        ["raw_tracepoint", "raw_tracepoint_writable"], link_update=False),
    _at(BPF_TRACE_RAW_TP, "tp_btf", ["tp_btf"], _T, ["tracing"], link_update=False),
    _at(BPF_PERF_EVENT, "uprobe", ["uprobe"], _T, ["kprobe"], link_update=False),
    _at(BPF_PERF_EVENT, "uretprobe", ["uretprobe"], _T, ["kprobe"], link_update=False),
    _at(BPF_PERF_EVENT, "kprobe", ["kprobe"], _T, ["kprobe"], link_update=False),
    _at(BPF_PERF_EVENT, "kretprobe", ["kretprobe"], _T, ["kprobe"], link_update=False),
    _at(BPF_TRACE_ITER, "iter", ["iter"], _T, ["tracing"], link_update=False),
)

_BY_NAME: dict[str, AttachType] = {}
for _t in ATTACH_TYPES:
    _BY_NAME[_t.name] = _t
    for _s in _t.short:
        _BY_NAME[_s] = _t
# Kernel attach type number -> type, for the hooks where the number alone names the hook.
BY_VALUE: dict[int, AttachType] = {t.value: t for t in ATTACH_TYPES if t.kind is not HookKind.TRACE and t.value >= 0}


def attach_type(name: str) -> AttachType | None:
    return _BY_NAME.get(name)


def attach_type_names() -> list[str]:
    return sorted(_BY_NAME)


# enum bpf_prog_type, by bpftool's name for each.
PROG_TYPES: dict[str, int] = {
    "socket_filter": 1, "kprobe": 2, "sched_cls": 3, "sched_act": 4, "tracepoint": 5, "xdp": 6,
    "perf_event": 7, "cgroup_skb": 8, "cgroup_sock": 9, "lwt_in": 10, "lwt_out": 11, "lwt_xmit": 12,
    "sock_ops": 13, "sk_skb": 14, "cgroup_device": 15, "sk_msg": 16, "raw_tracepoint": 17,
    "cgroup_sock_addr": 18, "lwt_seg6local": 19, "lirc_mode2": 20, "sk_reuseport": 21,
    "flow_dissector": 22, "cgroup_sysctl": 23, "raw_tracepoint_writable": 24, "cgroup_sockopt": 25,
    "tracing": 26, "struct_ops": 27, "ext": 28, "lsm": 29, "sk_lookup": 30, "syscall": 31, "netfilter": 32,
}
PROG_TYPE_NAMES: dict[int, str] = {v: k for k, v in PROG_TYPES.items()}

# enum bpf_map_type, by bpftool's name.
MAP_TYPE_NAMES: dict[int, str] = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash", 6: "percpu_array",
    7: "stack_trace", 8: "cgroup_array", 9: "lru_hash", 10: "lru_percpu_hash", 11: "lpm_trie",
    12: "array_of_maps", 13: "hash_of_maps", 14: "devmap", 15: "sockmap", 16: "cpumap", 17: "xskmap",
    18: "sockhash", 19: "cgroup_storage", 20: "reuseport_sockarray", 21: "percpu_cgroup_storage",
    22: "queue", 23: "stack", 24: "sk_storage", 25: "devmap_hash", 26: "struct_ops", 27: "ringbuf",
    28: "inode_storage", 29: "task_storage", 30: "bloom_filter", 31: "user_ringbuf", 32: "cgrp_storage",
    33: "arena",
}
SOCKMAP_TYPES = frozenset({"sockmap", "sockhash"})
