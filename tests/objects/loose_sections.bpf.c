/* Shape: sections named loosely, as in bpfman's and libbpf-bootstrap's examples: the SEC() name
 * does not say where the program is attached (a made-up tracepoint, a uprobe on some other
 * binary); the loader (here: the manifest's attachment) decides. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2); /* 0: kill() calls, 1: getppid() calls */
} loose_hits SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&loose_hits, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tracepoint/tracepoint_kill_recorder")
int tracepoint_kill_recorder(void *ctx)
{
	bump(0);
	return 0;
}

SEC("uprobe/some_other_binary:some_function")
int uprobe_getppid(struct pt_regs *ctx)
{
	bump(1);
	return 0;
}

char _license[] SEC("license") = "GPL";
