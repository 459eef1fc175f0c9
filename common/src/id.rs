//! Fn-style call IDs: 128 bits = 48-bit Unix-millisecond timestamp, 48-bit machine ID, 32-bit counter,
//! written as 26 Crockford base32 characters (two leading zero bits). Fixed length and an ASCII-ordered
//! alphabet make the text sort like the number, so IDs sort by creation time across milliseconds.

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Crockford's base32 alphabet (no I, L, O, U), in ASCII order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Length of an ID in characters.
pub const ID_LEN: usize = 26;

const MASK_48: u64 = (1 << 48) - 1;

/// Makes IDs for one machine. Thread-safe; the counter wraps after 2^32 IDs.
#[derive(Debug)]
pub struct IdGenerator {
    machine_id: u64,
    counter: AtomicU32,
}

/// The parts of an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdParts {
    /// Unix time in milliseconds when the ID was made.
    pub timestamp_ms: u64,
    /// The 48-bit machine ID.
    pub machine_id: u64,
    /// The per-generator counter.
    pub counter: u32,
}

impl IdGenerator {
    /// A generator for `machine_id` (only the low 48 bits are used). The first ID has counter 1,
    /// as Fn's does.
    pub fn new(machine_id: u64) -> Self {
        IdGenerator {
            machine_id: machine_id & MASK_48,
            counter: AtomicU32::new(0),
        }
    }

    /// Fn's machine ID: the IPv4 address in the high 32 bits, the HTTP port in the low 16.
    pub fn machine_id_from(ip: Ipv4Addr, port: u16) -> u64 {
        (u64::from(u32::from(ip)) << 16) | u64::from(port)
    }

    /// The machine ID this generator stamps into its IDs.
    pub fn machine_id(&self) -> u64 {
        self.machine_id
    }

    /// A new ID stamped with the current time.
    pub fn next_id(&self) -> String {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        self.id_at(u64::try_from(now_ms).unwrap_or(0))
    }

    /// A new ID stamped with `timestamp_ms` (Unix milliseconds; only the low 48 bits are used).
    pub fn id_at(&self, timestamp_ms: u64) -> String {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        encode(IdParts {
            timestamp_ms,
            machine_id: self.machine_id,
            counter,
        })
    }
}

/// Writes the parts as a 26-character ID.
pub fn encode(parts: IdParts) -> String {
    let n: u128 = (u128::from(parts.timestamp_ms & MASK_48) << 80)
        | (u128::from(parts.machine_id & MASK_48) << 32)
        | u128::from(parts.counter);
    (0..ID_LEN)
        .rev()
        .map(|i| char::from(ALPHABET[((n >> (5 * i)) & 31) as usize]))
        .collect()
}

/// Reads an ID back into its parts; `None` if it is not 26 Crockford characters (upper or lower
/// case) or has bits above 128.
pub fn decode(id: &str) -> Option<IdParts> {
    if id.len() != ID_LEN {
        return None;
    }
    let mut n: u128 = 0;
    for (i, b) in id.bytes().enumerate() {
        let v = ALPHABET.iter().position(|&a| a == b.to_ascii_uppercase())? as u128;
        if i == 0 && v > 7 {
            return None; // would need more than 128 bits
        }
        n = (n << 5) | v;
    }
    Some(IdParts {
        timestamp_ms: (n >> 80) as u64,
        machine_id: ((n >> 32) as u64) & MASK_48,
        counter: n as u32,
    })
}

/// A new ID from the process-wide generator, whose machine ID is random (picked once).
pub fn new_id() -> String {
    static GLOBAL: OnceLock<IdGenerator> = OnceLock::new();
    GLOBAL
        .get_or_init(|| IdGenerator::new(rand::random::<u64>()))
        .next_id()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn well_formed(id: &str) {
        assert_eq!(id.len(), ID_LEN, "{id}");
        assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
    }

    #[test]
    fn decodes_fn_sample_id() {
        // The ID from engage-protocol.md §2.2, made by Fn's Go code at 2026-11-28T06:35:10.245Z
        // with machine ID 0 and counter 1.
        let p = decode("01M8GDTSH50000000000000001").unwrap();
        assert_eq!(
            p,
            IdParts {
                timestamp_ms: 1_795_847_710_245,
                machine_id: 0,
                counter: 1
            }
        );
        assert_eq!(
            IdGenerator::new(0).id_at(1_795_847_710_245),
            "01M8GDTSH50000000000000001"
        );
    }

    #[test]
    fn length_alphabet_and_parts() {
        let g = IdGenerator::new(IdGenerator::machine_id_from(Ipv4Addr::new(10, 1, 2, 3), 8080));
        let id = g.next_id();
        well_formed(&id);
        let p = decode(&id).unwrap();
        assert_eq!(p.machine_id, 0x0a01_0203_1f90);
        assert_eq!(p.counter, 1);
        well_formed(&new_id());
        assert_eq!(encode(decode(&id).unwrap()), id);
        assert_eq!(decode(&id.to_lowercase()), Some(p));
        assert_eq!(decode("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"), None);
        assert_eq!(decode("01M8GDTSH5000000000000000I"), None);
        assert_eq!(decode("short"), None);
    }

    #[test]
    fn sorts_by_time_across_milliseconds() {
        // A later millisecond sorts after, even with a smaller machine ID and a reset counter.
        let a = IdGenerator::new(MASK_48).id_at(1_000);
        let b = IdGenerator::new(0).id_at(1_001);
        assert!(a < b, "{a} !< {b}");
        let g = IdGenerator::new(7);
        let ids: Vec<String> = (0..50).map(|i| g.id_at(5_000 + i / 10)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn unique_under_concurrency() {
        let g = IdGenerator::new(42);
        let all: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..2_000).map(|_| g.next_id()).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let set: HashSet<&String> = all.iter().collect();
        assert_eq!(set.len(), 16_000);

        let global: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1_000).map(|_| new_id()).collect::<Vec<_>>()))
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(global.iter().collect::<HashSet<_>>().len(), 4_000);
    }
}
