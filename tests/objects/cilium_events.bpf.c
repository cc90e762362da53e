/* Shape: cilium/ebpf-style map definitions. cilium/ebpf accepts (and ignores) a value type on a
 * ringbuf and a struct value type on a perf event array; libbpf passes them to the kernel, which
 * refuses both maps (EINVAL). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct event {
	__u32 pid;
	__u64 ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} a_plain_counter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__type(value, struct event);
	__uint(max_entries, 1 << 12);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__type(key, __u32);
	__type(value, struct event);
} perf_events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int report_getppid(void *ctx)
{
	struct event e = {.pid = bpf_get_current_pid_tgid() >> 32, .ts = bpf_ktime_get_ns()};
	struct event *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);

	if (r) {
		*r = e;
		bpf_ringbuf_submit(r, 0);
	}
	bpf_perf_event_output(ctx, &perf_events, BPF_F_CURRENT_CPU, &e, sizeof(e));
	return 0;
}

char _license[] SEC("license") = "GPL";
