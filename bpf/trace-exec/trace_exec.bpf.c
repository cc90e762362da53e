/* Count execve() calls per command name (the caller's comm before the exec), and say so in
 * the trace pipe. The notes' first example, grown up: it keeps counting after bpfdeploy exits. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define COMM_LEN 16

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, char[COMM_LEN]);
	__type(value, __u64);
	__uint(max_entries, 1024);
} exec_count SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_execve")
int count_execve(void *ctx)
{
	char comm[COMM_LEN] = {};
	__u64 one = 1, *v;

	bpf_get_current_comm(comm, sizeof(comm));
	v = bpf_map_lookup_elem(&exec_count, comm);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&exec_count, comm, &one, BPF_NOEXIST);
	bpf_printk("execve by %s", comm);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
