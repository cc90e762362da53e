/* Shape: a libbpf-bootstrap-style object. Settings in .rodata (const volatile, set by the loader
 * before load), counters kept in globals (.bss and .data), a per-CPU array, and a hash map keyed
 * by an IPv4 address in network byte order, as bcc's libbpf-tools keep them. */
#include <linux/bpf.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>

const volatile __u32 count_every = 1;   /* .rodata */
__u64 packets_seen = 0;                  /* .bss */
__u64 bytes_seen_plus_one = 1;           /* .data (starts at 1, so it is not in .bss) */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2);
} pcpu_hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* IPv4 source address, network byte order */
	__type(value, __u64);
	__uint(max_entries, 64);
} by_source SEC(".maps");

SEC("cgroup_skb/ingress")
int count_sources(struct __sk_buff *skb)
{
	__u32 key = 0, saddr = 0;
	__u64 one = 1, *v;

	if (count_every == 0)
		return 1;
	__sync_fetch_and_add(&packets_seen, 1);
	__sync_fetch_and_add(&bytes_seen_plus_one, skb->len);
	v = bpf_map_lookup_elem(&pcpu_hits, &key);
	if (v)
		*v += 1;   /* per CPU: no atomics needed */
	if (bpf_skb_load_bytes(skb, __builtin_offsetof(struct iphdr, saddr), &saddr, sizeof(saddr)) < 0)
		return 1;
	v = bpf_map_lookup_elem(&by_source, &saddr);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&by_source, &saddr, &one, BPF_NOEXIST);
	return 1;
}

char _license[] SEC("license") = "GPL";
