/* Fleet test program: counts the packets a cgroup's processes send and receive, and records
 * which release counts them. traffic[0] ingress, [1] egress, [2].packets = FLEET_VERSION. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef FLEET_VERSION
#define FLEET_VERSION 1
#endif
#ifndef FLEET_COUNT
#define FLEET_COUNT 1 /* 0: a release that loads and attaches but counts nothing (a broken release) */
#endif

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(max_entries, 3);
} fleet_traffic SEC(".maps");

static __always_inline void account(__u32 dir, struct __sk_buff *skb)
{
	__u32 version_slot = 2;
	struct counter *c = bpf_map_lookup_elem(&fleet_traffic, &dir);
	struct counter *v = bpf_map_lookup_elem(&fleet_traffic, &version_slot);

	if (v)
		v->packets = FLEET_VERSION;
	if (!c || !FLEET_COUNT)
		return;
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, skb->len);
}

SEC("cgroup_skb/ingress")
int fleet_ingress(struct __sk_buff *skb)
{
	account(0, skb);
	return 1;
}

SEC("cgroup_skb/egress")
int fleet_egress(struct __sk_buff *skb)
{
	account(1, skb);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
