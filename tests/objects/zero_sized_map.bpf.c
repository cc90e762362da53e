/* Shape: a map definition that opens fine but that the kernel refuses to create (a hash map with
 * max_entries 0, as objects get when a loader was meant to size the map at run time). The first
 * map of the object is fine: a failure must be blamed on the second. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} aa_sized_ok SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 0);
} zz_unsized SEC(".maps");

SEC("xdp")
int xdp_uses_both(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *a = bpf_map_lookup_elem(&aa_sized_ok, &key);
	__u64 *b = bpf_map_lookup_elem(&zz_unsized, &key);

	if (a && b)
		*a += *b;
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
