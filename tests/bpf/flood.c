// SPDX-License-Identifier: MIT OR Apache-2.0
//
// Programs of lb-bench's "Flood isolation" section; never part of the balancer
// (lb-ebpf). Built by lb-bench at run time: clang -O2 -g -target bpf -c flood.c.
//
// * `flood_syn`: the traffic generator, run with BPF_PROG_TEST_RUN in live-frames mode
//   (BPF_F_TEST_XDP_LIVE_FRAMES). Every run it keeps (a share `FLOOD_KEEP` of the runs)
//   writes a whole IPv4 TCP SYN to the VIP with a random source address (in
//   198.18.0.0/15) and port, and returns XDP_TX: each frame is a new flow. The kernel recycles the frames' pages, and the balancer rewrote their
//   MACs on the way, so every header byte is written again on each run, checksums too.
// * `flood_peer`: on the bridge-side peer of the balancer's veth, which receives the
//   balancer's XDP_TX frames (a veth peer needs an XDP program for that): drops the
//   flood (IPv4 TCP to port `drop_port_be`), passes everything else to the bridge.
// * `flood_sink`: on the veth of a backend of the flooded VIP: drops everything but ARP
//   (the balancer still resolves that backend's MAC).
// * `flood_pass`: for any other veth peer that receives XDP frames.

#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
#define INLINE static inline __attribute__((always_inline))

static __u32 (*bpf_get_prandom_u32)(void) = (void *)BPF_FUNC_get_prandom_u32;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

// How many of every 65,536 generated frames are sent (the rest are dropped at once):
// lb-bench adjusts it between calls so that the flood matches what the balancer takes.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} FLOOD_KEEP SEC(".maps");

// Set by the loader (aya's EbpfLoader::set_global) before loading.
volatile const __u8 dst_mac[6] = {0};
volatile const __u8 src_mac[6] = {0};
volatile const __u32 vip_addr_be = 0;
volatile const __u16 vip_port_be = 0;
volatile const __u16 drop_port_be = 0;

#define ETH_LEN 14
#define IP_LEN 20
#define TCP_LEN 20
#define HDR_LEN (ETH_LEN + IP_LEN + TCP_LEN)
// 198.18.0.0/15 (RFC 2544 benchmarking addresses): the flood's source addresses.
#define SRC_NET 0xc6120000u
#define SRC_MASK 0x0001ffffu

INLINE __u16 be16(__u16 v) { return __builtin_bswap16(v); }
INLINE __u32 be32(__u32 v) { return __builtin_bswap32(v); }

// Ones' complement sum of `words` 16-bit words, as they lie in memory.
INLINE __u32 sum16(const void *p, int words) {
	const __u16 *w = p;
	__u32 s = 0;
#pragma unroll
	for (int i = 0; i < words; i++)
		s += w[i];
	return s;
}

INLINE __u16 fold(__u32 s) {
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

struct pseudo {
	__u32 src, dst;
	__u8 zero, proto;
	__u16 len_be;
};

SEC("xdp")
int flood_syn(struct xdp_md *ctx) {
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + HDR_LEN > end)
		return XDP_ABORTED;
	__u32 r1 = bpf_get_prandom_u32(), r2 = bpf_get_prandom_u32();
	__u32 zero = 0;
	__u32 *keep = bpf_map_lookup_elem(&FLOOD_KEEP, &zero);
	if (!keep || (r2 >> 16) >= *keep)
		return XDP_DROP;
	__u32 src_be = be32(SRC_NET | (r1 & SRC_MASK));

	for (int i = 0; i < 6; i++) {
		data[i] = dst_mac[i];
		data[6 + i] = src_mac[i];
	}
	data[12] = 0x08;
	data[13] = 0x00;

	__u8 *ip = data + ETH_LEN;
	ip[0] = 0x45;
	ip[1] = 0;
	*(__u16 *)(ip + 2) = be16(IP_LEN + TCP_LEN);
	*(__u16 *)(ip + 4) = (__u16)r2;  // identification
	*(__u16 *)(ip + 6) = be16(0x4000); // DF
	ip[8] = 64;
	ip[9] = 6; // TCP
	*(__u16 *)(ip + 10) = 0;
	*(__u32 *)(ip + 12) = src_be;
	*(__u32 *)(ip + 16) = vip_addr_be;
	*(__u16 *)(ip + 10) = fold(sum16(ip, IP_LEN / 2));

	__u8 *tcp = ip + IP_LEN;
	*(__u16 *)(tcp + 0) = be16(1024 | (__u16)(r1 >> 17)); // source port 1024..32767
	*(__u16 *)(tcp + 2) = vip_port_be;
	*(__u32 *)(tcp + 4) = r2;                               // sequence number
	*(__u32 *)(tcp + 8) = 0;                                // acknowledgement
	tcp[12] = (TCP_LEN / 4) << 4;
	tcp[13] = 0x02; // SYN
	*(__u16 *)(tcp + 14) = be16(64240);
	*(__u16 *)(tcp + 16) = 0;
	*(__u16 *)(tcp + 18) = 0;
	struct pseudo ph = {.src = src_be, .dst = vip_addr_be, .zero = 0, .proto = 6, .len_be = be16(TCP_LEN)};
	*(__u16 *)(tcp + 16) = fold(sum16(&ph, sizeof(ph) / 2) + sum16(tcp, TCP_LEN / 2));
	return XDP_TX;
}

SEC("xdp")
int flood_peer(struct xdp_md *ctx) {
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + HDR_LEN > end)
		return XDP_PASS;
	__u8 *ip = data + ETH_LEN;
	if (data[12] != 0x08 || data[13] != 0x00 || ip[0] != 0x45 || ip[9] != 6)
		return XDP_PASS;
	if (*(__u16 *)(ip + IP_LEN + 2) == drop_port_be)
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int flood_sink(struct xdp_md *ctx) {
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + ETH_LEN > end)
		return XDP_DROP;
	// ARP (0x0806) goes on to the stack; everything else stops here.
	if (data[12] == 0x08 && data[13] == 0x06)
		return XDP_PASS;
	return XDP_DROP;
}

SEC("xdp")
int flood_pass(struct xdp_md *ctx) {
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
