//! Fn's consistent-hash primitives: SipHash-2-4 of the fn ID with Fn's keys, and Go's integer variant
//! of the jump consistent hash, so that `ch` places every function on the same runner as Fn does for
//! the same runner list.

use std::hash::Hasher;

use siphasher::sip::SipHasher24;

/// Fn's SipHash key 0.
pub const SIP_K0: u64 = 0;
/// Fn's SipHash key 1: the ASCII bytes "LaryBoat" read big-endian.
pub const SIP_K1: u64 = 0x4c61_7279_426f_6174;

/// SipHash-2-4 of exactly `key`'s bytes (no `Hash` terminator byte), as Go's `siphash.Hash`.
pub fn fn_key_hash(key: &[u8]) -> u64 {
    sip24(SIP_K0, SIP_K1, key)
}

/// SipHash-2-4 with explicit keys over raw bytes.
pub fn sip24(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
    let mut h = SipHasher24::new_with_keys(k0, k1);
    h.write(bytes);
    h.finish()
}

/// The stable identity of a pool member found through DNS: SipHash-2-4 of its address
/// (`ip:port`) under keys of its own, so that every LB gives a member the same identity.
pub fn member_key(addr: &str) -> u64 {
    sip24(MEMBER_K0, MEMBER_K1, addr.as_bytes())
}

/// Keys of [`member_key`] (any fixed values; not Fn's: Fn has no such hash).
const MEMBER_K0: u64 = 0x6665_7272_6f66_6e00;
const MEMBER_K1: u64 = 0x6d65_6d62_6572_7321;

/// The rendezvous (highest random weight) score of the member `member` for a function whose
/// [`fn_key_hash`] is `fn_hash`: a keyed hash of the pair, so that each function ranks the members
/// in its own pseudo-random order, and a member's rank depends on no other member.
pub fn rendezvous_score(fn_hash: u64, member: u64) -> u64 {
    sip24(fn_hash, member, &[])
}

/// Go's integer jump consistent hash as Fn uses it: the bucket in `0..buckets` for `key`.
///
/// Go divides by `key >> 33` and panics when it is zero (about 2^-31 per step); here that quotient is
/// taken as 2^31, which ends the walk at the current bucket. `buckets == 0` gives 0.
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let n = buckets as i64;
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = key >> 33;
        let quotient = (1_u64 << 31).checked_div(divisor).unwrap_or(1 << 31);
        j = (b + 1).saturating_mul(quotient as i64 + 1);
    }
    b.max(0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ground truth from the real Go code (engage-protocol.md §3.2).
    const VECTORS: &[(&str, u64, [usize; 6])] = &[
        (
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            0x93bf_9b07_28ce_3a12,
            [0, 0, 2, 2, 2, 9],
        ),
        ("myfn", 0x6fc0_9489_21c0_385d, [0, 0, 0, 3, 3, 3]),
        ("", 0x4dcc_f8f6_e62e_a9ad, [0, 0, 2, 2, 2, 6]),
        (
            "01F0000000000000000000000A",
            0x3750_389e_c178_d02f,
            [0, 0, 0, 0, 0, 5],
        ),
    ];

    #[test]
    fn siphash_matches_go_vectors() {
        for (key, want, _) in VECTORS {
            assert_eq!(fn_key_hash(key.as_bytes()), *want, "siphash of {key:?}");
        }
    }

    #[test]
    fn jump_matches_go_vectors() {
        for (key, hash, wants) in VECTORS {
            for (n, want) in [1, 2, 3, 4, 5, 10].into_iter().zip(wants) {
                assert_eq!(jump(*hash, n), *want, "jump({key:?}, {n})");
            }
        }
    }

    #[test]
    fn siphash_sanity_vector() {
        // SipHash-2-4 reference: key 00..0f, empty message.
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        assert_eq!(sip24(k0, k1, b""), 0x726f_db47_dd0e_0e31);
    }

    #[test]
    fn jump_zero_divisor_does_not_panic() {
        // key*M+1 == 0 after one step makes Go divide by zero; find such a key: k = -1/M mod 2^64.
        let inv = modinv(2_862_933_555_777_941_757);
        let key = inv.wrapping_mul(u64::MAX); // k*M == -1, so k*M + 1 == 0
        assert_eq!(key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1), 0);
        assert_eq!(jump(key, 7), 0);
        assert_eq!(jump(12345, 0), 0);
    }

    fn modinv(a: u64) -> u64 {
        // Newton iteration for the inverse of an odd number mod 2^64.
        let mut x = a;
        for _ in 0..6 {
            x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
        }
        x
    }

    #[test]
    fn jump_stays_in_range_and_moves_little() {
        let mut moved = 0;
        for k in 0..2000u64 {
            let h = fn_key_hash(&k.to_le_bytes());
            let a = jump(h, 10);
            let b = jump(h, 11);
            assert!(a < 10 && b < 11);
            if a != b {
                assert_eq!(b, 10, "a key only moves to the new bucket");
                moved += 1;
            }
        }
        assert!(moved > 100 && moved < 300, "about 1/11 of keys move, got {moved}");
    }
}
