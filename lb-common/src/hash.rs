//! The flow hash: which Maglev slot a packet's 5-tuple falls into.
//!
//! Words are read from packet bytes in little-endian order (`u32::from_le_bytes`),
//! which is what a 4-byte load from packet memory gives on the (little-endian) BPF
//! target. Userspace must build words the same way, so both sides agree everywhere.

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Source and destination ports packed as the hash takes them.
#[inline(always)]
pub fn ports_word(src_port_be: u16, dst_port_be: u16) -> u32 {
    (src_port_be as u32) | ((dst_port_be as u32) << 16)
}

/// The ports word for a VIP: with client-address affinity the ports are left out, so
/// every flow of a client falls into the same slot.
#[inline(always)]
pub fn vip_ports_word(affinity: bool, src_port_be: u16, dst_port_be: u16) -> u32 {
    if affinity {
        0
    } else {
        ports_word(src_port_be, dst_port_be)
    }
}

/// Hash of an IPv4 5-tuple. `src`/`dst` are the address bytes as little-endian words.
#[inline(always)]
pub fn flow_hash_v4(src: u32, dst: u32, ports: u32, proto: u8, seed: u32) -> u32 {
    let h = mix(seed ^ 4, src);
    let h = mix(h, dst);
    let h = mix(h, ports);
    finish(mix(h, proto as u32))
}

/// Hash of an IPv6 5-tuple.
#[inline(always)]
pub fn flow_hash_v6(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8, seed: u32) -> u32 {
    let mut h = seed ^ 6;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    finish(mix(h, proto as u32))
}

/// The flow hash of a 5-tuple in words (`addr_words` layout; IPv4 uses word 0): the one
/// definition the kernel, `lb-agent explain` and the flow-table walker all call.
#[inline(always)]
pub fn flow_hash_words(family: u8, src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8, seed: u32) -> u32 {
    if family == crate::FAMILY_V4 {
        flow_hash_v4(src[0], dst[0], ports, proto, seed)
    } else {
        flow_hash_v6(src, dst, ports, proto, seed)
    }
}

/// Which bit of `VIP_FILTER` an address sets (words as in `addr_words`; an IPv4
/// address has zeros after word 0). One multiply: this runs for every packet.
#[inline(always)]
pub fn filter_bit(words: &[u32; 4]) -> u32 {
    let folded = words[0] ^ words[1] ^ words[2] ^ words[3];
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// The words of a flow key (source address, VIP id, port): what the pin hashes take.
#[inline(always)]
fn key_words(key: &crate::FlowKey) -> [u32; 6] {
    let a = addr_words(&key.src_addr);
    [a[0], a[1], a[2], a[3], key.vip_id, key.src_port_be as u32]
}

/// The two `FLOWS_NEW` slots of a flow key (`mask` = slots - 1, slots a power of two):
/// distinct, and in different cache lines.
#[inline(always)]
pub fn new_pin_slots(key: &crate::FlowKey, mask: u32) -> (u32, u32) {
    let h = new_pin_index(key, u32::MAX);
    let first = h & mask;
    let second = (h.rotate_right(16) & mask) ^ 2;
    (first, if second == first { first ^ 3 } else { second })
}

/// A hash of a flow key for `FLOWS_NEW` (masked with `mask`).
#[inline(always)]
pub fn new_pin_index(key: &crate::FlowKey, mask: u32) -> u32 {
    let w = key_words(key);
    let mut h = 0x6e65_7770;
    h = mix(h, w[0]);
    h = mix(h, w[1]);
    h = mix(h, w[2]);
    h = mix(h, w[3]);
    h = mix(h, w[4]);
    finish(mix(h, w[5])) & mask
}

/// A check over a whole `FLOWS_NEW` entry: a torn entry (two writers) fails it.
#[inline(always)]
pub fn new_pin_check(key: &crate::FlowKey, v: &crate::FlowValue) -> u32 {
    let w = key_words(key);
    let mut h = 0x6368_6b21 ^ w[0] ^ w[1].rotate_left(7) ^ w[2].rotate_left(14) ^ w[3].rotate_left(21);
    h = mix(h, w[4] ^ (w[5] << 16));
    h = mix(h, v.backend ^ v.flags.rotate_left(16));
    h = mix(h, v.last_seen_ns as u32 ^ v.moved_from);
    finish(h) | 1
}

/// Little-endian words of 16 address bytes (the layout of `VipKey::addr`).
#[inline(always)]
pub fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_le_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// Flow hash from addresses in `VipKey` layout: what userspace calls to predict the
/// kernel's choice.
pub fn flow_hash(
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    src_port_be: u16,
    dst_port_be: u16,
    proto: u8,
    seed: u32,
) -> u32 {
    let ports = ports_word(src_port_be, dst_port_be);
    flow_hash_words(family, &addr_words(src), &addr_words(dst), ports, proto, seed)
}

/// A hash over arbitrary bytes (FNV-1a 64, folded), for Maglev permutations.
pub fn bytes_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    // Final avalanche (splitmix64) so close keys spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors (cross-checked against an independent Python model) pin the hash: a change here changes which backend every flow gets, on
    // every host, so it must be a deliberate ABI change.
    #[test]
    fn v4_vectors() {
        let src = u32::from_le_bytes([10, 0, 0, 1]);
        let dst = u32::from_le_bytes([10, 0, 0, 100]);
        let ports = ports_word(u16::from_le_bytes(40000u16.to_be_bytes()), u16::from_le_bytes(80u16.to_be_bytes()));
        assert_eq!(flow_hash_v4(src, dst, ports, 6, 0), 0x4cff_b207);
        assert_eq!(flow_hash_v4(src, dst, ports, 17, 0), 0x6d33_dd8b);
        assert_eq!(flow_hash_v4(src, dst, ports, 6, 1), 0x1cd3_bda9);
    }

    #[test]
    fn v6_vectors() {
        let mut s = [0u8; 16];
        s[0] = 0xfd;
        s[15] = 1;
        let mut d = s;
        d[15] = 0x64;
        let h = flow_hash(6, &s, &d, 0x409c, 0x5000, 6, 0);
        assert_eq!(h, 0xd801_7588);
    }

    #[test]
    fn generic_matches_v4() {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&[192, 0, 2, 7]);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[198, 51, 100, 1]);
        let direct = flow_hash_v4(addr_words(&s)[0], addr_words(&d)[0], ports_word(1, 2), 17, 9);
        assert_eq!(flow_hash(4, &s, &d, 1, 2, 17, 9), direct);
    }

    #[test]
    fn spreads_source_ports() {
        // Consecutive source ports must not land in a few slots.
        let mut seen = [0u32; 16];
        for p in 0..1600u16 {
            let h = flow_hash_v4(1, 2, ports_word(p.to_be(), 80u16.to_be()), 6, 0);
            seen[(h % 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (70..=130).contains(&c)), "{seen:?}");
    }

    #[test]
    fn filter_bits_spread() {
        let mut seen = [0u32; 64];
        for i in 0..6400u32 {
            let w = u32::from_le_bytes([192, 0, (i >> 8) as u8, i as u8]);
            let bit = filter_bit(&[w, 0, 0, 0]);
            assert!(bit < 65_536);
            seen[(bit >> 10) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (50..=150).contains(&c)), "{seen:?}");
    }

    #[test]
    fn bytes_hash_differs_by_seed() {
        assert_ne!(bytes_hash(b"abc", 1), bytes_hash(b"abc", 2));
        assert_ne!(bytes_hash(b"abc", 1), bytes_hash(b"abd", 1));
    }
}
