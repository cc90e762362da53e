/* connect() policy for IPv4: deny connections to some destination ports
 * and transparently redirect others to a different port.  Both tables are
 * seeded by the deployment tool from the manifest. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define STAT_ALLOWED   0
#define STAT_BLOCKED   1
#define STAT_REWRITTEN 2

/* key: destination port, HOST byte order; value ignored (1) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} blocked_ports SEC(".maps");

/* key: original destination port, value: new port; both HOST byte order */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 64);
} port_rewrites SEC(".maps");

/* [0] allowed unchanged, [1] blocked, [2] rewritten */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 3);
} policy_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&policy_stats, &idx);

	if (c)
		__sync_fetch_and_add(c, 1);
}

SEC("cgroup/connect4")
int connect_policy(struct bpf_sock_addr *ctx)
{
	/* user_port holds the port in network order in its low 16 bits;
	 * the maps use host order so humans can seed them directly. */
	__u32 port = bpf_ntohs((__u16)ctx->user_port);
	__u32 *newport;

	if (bpf_map_lookup_elem(&blocked_ports, &port)) {
		count(STAT_BLOCKED);
		return 0; /* connect() fails with EPERM */
	}

	newport = bpf_map_lookup_elem(&port_rewrites, &port);
	if (newport) {
		/* only a 4-byte write is allowed to user_port */
		ctx->user_port = bpf_htons((__u16)*newport);
		count(STAT_REWRITTEN);
		return 1;
	}

	count(STAT_ALLOWED);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
