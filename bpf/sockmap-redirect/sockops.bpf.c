/* sockops half of the sockmap "local socket shortcut": every established
 * IPv4 TCP socket in the attached cgroup is added to sock_ops_map, keyed
 * by its own 4-tuple, so that sockredir.bpf.c can find a sender's peer. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sock_key.h"

SEC("sockops")
int bpf_sockops_handler(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};

	/* Only fully established connections, both ends (connect() side and
	 * accept() side); earlier callbacks have no complete 4-tuple. */
	switch (skops->op) {
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		break;
	default:
		return 1;
	}
	if (skops->family != AF_INET)
		return 1;

	key.sip = skops->local_ip4;
	key.dip = skops->remote_ip4;
	/* local_port is host order: convert so both ports share one encoding */
	key.sport = bpf_htonl(skops->local_port);
	/* remote_port is already bpf_htonl(port) as the kernel exposes it */
	key.dport = skops->remote_port;
	key.family = AF_INET;

	/* BPF_NOEXIST: a 4-tuple is unique while the socket lives; a failure
	 * only means this socket will not be short-cut, so it is ignored. */
	bpf_sock_hash_update(skops, &sock_ops_map, &key, BPF_NOEXIST);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
