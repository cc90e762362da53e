/* Shape: objects written for loaders that accept static entry functions (newer libbpf, other
 * loaders): libbpf 1.1 refuses to open them ("program ... is static and not supported"). */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

__u64 seen = 0;

SEC("xdp")
static int xdp_static_pass(struct xdp_md *ctx)
{
	__sync_fetch_and_add(&seen, 1);
	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
