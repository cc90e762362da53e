/* Shape: xdp-tutorial / old kernel samples. Maps declared the legacy way, as struct bpf_map_def
 * in SEC("maps"); libbpf 1.0 and later refuse to open such an object. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct bpf_map_def {
	unsigned int type;
	unsigned int key_size;
	unsigned int value_size;
	unsigned int max_entries;
	unsigned int map_flags;
};

struct bpf_map_def SEC("maps") xdp_stats_map = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = sizeof(__u32),
	.value_size = sizeof(__u64),
	.max_entries = 5,
};

SEC("xdp")
int xdp_stats_legacy(struct xdp_md *ctx)
{
	__u32 key = XDP_PASS;
	__u64 *v = bpf_map_lookup_elem(&xdp_stats_map, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
