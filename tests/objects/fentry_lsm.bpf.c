/* Shape: libbpf-tools style tracing programs (fentry on a kernel function, an LSM hook) beside a
 * plain tracepoint. On this project's kernel fentry/fexit/LSM programs do not load (EPERM, empty
 * verifier log); the tracepoint program does. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("fentry/do_unlinkat")
int fentry_unlinkat(void *ctx)
{
	return 0;
}

SEC("lsm/file_open")
int lsm_file_open(void *ctx)
{
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_unlinkat")
int tp_unlinkat(void *ctx)
{
	return 0;
}

char _license[] SEC("license") = "GPL";
