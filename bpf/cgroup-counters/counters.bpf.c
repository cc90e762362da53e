/* Per-cgroup traffic accounting: attach count_ingress/count_egress to a
 * cgroup and read packets/bytes for its processes from `traffic`. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define DIR_INGRESS 0
#define DIR_EGRESS  1

struct traffic_counter {
	__u64 packets;
	__u64 bytes;
};

/* [0] ingress, [1] egress; shared by every CPU, hence atomic adds */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic_counter);
	__uint(max_entries, 2);
} traffic SEC(".maps");

static __always_inline void account(__u32 dir, struct __sk_buff *skb)
{
	struct traffic_counter *c = bpf_map_lookup_elem(&traffic, &dir);

	if (!c)
		return;
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, skb->len);
}

SEC("cgroup_skb/ingress")
int count_ingress(struct __sk_buff *skb)
{
	account(DIR_INGRESS, skb);
	return 1; /* allow: we only count */
}

SEC("cgroup_skb/egress")
int count_egress(struct __sk_buff *skb)
{
	account(DIR_EGRESS, skb);
	return 1; /* allow: we only count */
}

char LICENSE[] SEC("license") = "GPL";
