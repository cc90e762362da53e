/* Count calls of a user-space function and record the callers' user stacks. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2); /* 0: calls, 1: returns */
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 32 * sizeof(__u64));
	__uint(max_entries, 1024);
} stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* stack id */
	__type(value, __u64); /* times seen */
	__uint(max_entries, 1024);
} stack_hits SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&calls, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("uprobe")
int count_call(struct pt_regs *ctx)
{
	__u64 one = 1, *hits;
	long id;

	bump(0);
	id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (id >= 0) {
		__u32 key = id;

		hits = bpf_map_lookup_elem(&stack_hits, &key);
		if (hits)
			__sync_fetch_and_add(hits, 1);
		else
			bpf_map_update_elem(&stack_hits, &key, &one, BPF_NOEXIST);
	}
	return 0;
}

SEC("uretprobe")
int count_return(struct pt_regs *ctx)
{
	bump(1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
