/* Minimal flow dissector: only counts how often the kernel asks BPF to
 * dissect a packet in the attached network namespace, then lets the
 * kernel's built-in dissector do the real work. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* [0] number of dissections */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} dissect_count SEC(".maps");

SEC("flow_dissector")
int count_dissect(struct __sk_buff *skb)
{
	__u32 idx = 0;
	__u64 *c = bpf_map_lookup_elem(&dissect_count, &idx);

	if (c)
		__sync_fetch_and_add(c, 1);

	/* CONTINUE (uapi value 129, since 5.19): fall back to the kernel's
	 * own dissector.  BPF_OK would instead claim the (empty) result. */
	return BPF_FLOW_DISSECTOR_CONTINUE;
}

char LICENSE[] SEC("license") = "GPL";
