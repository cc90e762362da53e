/* A tc classifier: count packets and bytes by direction and set skb->mark on them. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct tc_counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct tc_counter);
	__uint(max_entries, 2); /* 0: ingress, 1: egress */
} tc_stats SEC(".maps");

static __always_inline int account(struct __sk_buff *skb, __u32 dir)
{
	struct tc_counter *c = bpf_map_lookup_elem(&tc_stats, &dir);

	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, skb->len);
	}
	skb->mark = 0x2a; /* visible to later tc filters, routing rules and iptables */
	return TC_ACT_OK;
}

SEC("tc")
int tc_ingress_mark(struct __sk_buff *skb)
{
	return account(skb, 0);
}

SEC("tc")
int tc_egress_mark(struct __sk_buff *skb)
{
	return account(skb, 1);
}

char LICENSE[] SEC("license") = "GPL";
