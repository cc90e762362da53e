/* Shared between sockops.bpf.c (which fills sock_ops_map) and
 * sockredir.bpf.c (which looks peers up in it).  The deployment tool
 * loads the second object with the first one's pinned map, and libbpf
 * does not check that the geometry matches, so both objects take the
 * key struct AND the map definition from this one header. */
#ifndef SOCK_KEY_H
#define SOCK_KEY_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* No glibc headers in BPF objects, so define the one constant we need. */
#ifndef AF_INET
#define AF_INET 2
#endif

/* Five __u32 fields, 20 bytes, no padding.  Byte orders (little-endian
 * host, as stored in memory):
 *   sip, dip  IPv4 addresses, network order (as the kernel gives them)
 *   sport     local port of the socket, network order, in the HIGH 16 bits
 *             (bpf_htonl(port); sockops local_port is host order)
 *   dport     remote port of the socket, same encoding; the kernel's
 *             remote_port field already is bpf_htonl(port) on LE (it
 *             loads the be16 skc_dport and shifts it left by 16)
 *   family    AF_INET (2), host order
 * Keys describe the socket from its own side (sip = its local address). */
struct sock_key {
	__u32 sip;
	__u32 dip;
	__u32 sport;
	__u32 dport;
	__u32 family;
};

/* Value is __u64 so that `bpftool map dump` can print the socket cookie
 * (a 4-byte value makes the dump fail with ENOSPC). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, 65535);
} sock_ops_map SEC(".maps");

#endif /* SOCK_KEY_H */
