/* sk_msg half of the sockmap "local socket shortcut": attached as the
 * msg_verdict program of sock_ops_map, it runs on every sendmsg() of a
 * socket in that map and hands the data straight to the peer socket's
 * receive queue, bypassing the TCP/IP stack. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sock_key.h"

#define STAT_REDIRECTED 0
#define STAT_PASSED     1

/* [0] messages redirected, [1] messages whose peer was not in the map */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} redir_stats SEC(".maps");

SEC("sk_msg")
int bpf_redir(struct sk_msg_md *msg)
{
	struct sock_key key = {};
	__u32 idx;
	__u64 *cnt;

	/* The PEER's key, i.e. this socket's 4-tuple seen from the other end.
	 * Encodings match sockops.bpf.c: sk_msg remote_port is already
	 * bpf_htonl(port), local_port is host order. */
	key.sip = msg->remote_ip4;
	key.dip = msg->local_ip4;
	key.sport = msg->remote_port;
	key.dport = bpf_htonl(msg->local_port);
	key.family = msg->family;

	/* BPF_F_INGRESS: put the data on the peer's receive queue (as if it
	 * had arrived), not on its transmit path. Returns SK_PASS only if the
	 * peer was found; otherwise SK_DROP and nothing is changed. */
	if (bpf_msg_redirect_hash(msg, &sock_ops_map, &key, BPF_F_INGRESS) == SK_PASS)
		idx = STAT_REDIRECTED;
	else
		idx = STAT_PASSED;

	cnt = bpf_map_lookup_elem(&redir_stats, &idx);
	if (cnt)
		__sync_fetch_and_add(cnt, 1);

	/* Always SK_PASS: after a successful redirect this delivers to the
	 * peer; without one the message simply goes out through TCP. */
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
