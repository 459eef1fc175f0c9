//! Memory / CPU reservations in non-blocking mode: a container reserves `memory + tmpfs` MB and its
//! milli-CPUs for its whole life; when there is no room now the answer is a shortfall (the caller tries
//! eviction, then NACKs with 503), never a wait.

use std::sync::{Arc, Mutex};

use ferrofn_common::lock::LockExt;
use tracing::info;

const MIB: u64 = 1024 * 1024;

/// The node's capacity, as computed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Memory pool in MB.
    pub memory_mb: u64,
    /// CPU pool in milli-CPUs.
    pub cpu_milli: u64,
}

impl Capacity {
    /// Reads `/proc/meminfo` and `/proc/cpuinfo` (Fn's rule: MemAvailable minus a 10 % headroom clamped to
    /// [256 MiB, 5 GiB]; 1000 mCPU per processor) and clamps by the configured maxima (0 = no clamp).
    pub fn detect(max_memory_bytes: u64, max_cpu_milli: u64) -> Capacity {
        let mut mem_avail = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo_available(&s))
            .unwrap_or(2048 * MIB);
        // A runner inside a memory-limited cgroup (v2 or v1) must not plan beyond its limit.
        if let Some(limit) = cgroup_memory_limit() {
            mem_avail = mem_avail.min(limit);
        }
        let headroom = (mem_avail / 10).clamp(256 * MIB, 5 * 1024 * MIB);
        let mut memory = mem_avail.saturating_sub(headroom);
        if max_memory_bytes > 0 {
            memory = memory.min(max_memory_bytes);
        }
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count() as u64)
            .filter(|n| *n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() as u64)
                    .unwrap_or(1)
            });
        let mut cpu_milli = cpus * 1000;
        if let Some(quota) = cgroup_cpu_milli() {
            cpu_milli = cpu_milli.min(quota);
        }
        if max_cpu_milli > 0 {
            cpu_milli = cpu_milli.min(max_cpu_milli);
        }
        let cap = Capacity {
            memory_mb: memory / MIB,
            cpu_milli,
        };
        info!(
            memory_mb = cap.memory_mb,
            cpu_milli = cap.cpu_milli,
            "resource capacity"
        );
        cap
    }
}

/// `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1); `None` when unlimited or absent.
fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok())
    // v1 reports "unlimited" as a huge page-aligned number.
    .filter(|n| *n < (1u64 << 62))
}

/// `cpu.max` (cgroup v2: `<quota> <period>` or `max <period>`) as milli-CPUs.
fn cgroup_cpu_milli() -> Option<u64> {
    parse_cpu_max(&std::fs::read_to_string("/sys/fs/cgroup/cpu.max").ok()?)
}

fn parse_cpu_max(text: &str) -> Option<u64> {
    let mut it = text.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok()?;
    (period > 0).then(|| quota * 1000 / period)
}

fn parse_meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a reservation lacks: the MB and mCPU that would have to be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// MB missing.
    pub memory_mb: u64,
    /// mCPU missing.
    pub cpu_milli: u64,
}

/// The tracker: capacity and what is reserved.
#[derive(Debug)]
pub struct Resources {
    capacity: Capacity,
    used: Mutex<(u64, u64)>,
}

impl Resources {
    /// A tracker over `capacity`.
    pub fn new(capacity: Capacity) -> Arc<Self> {
        Arc::new(Resources {
            capacity,
            used: Mutex::new((0, 0)),
        })
    }

    /// The capacity.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// MB and mCPU reserved now.
    pub fn used(&self) -> (u64, u64) {
        *self.used.lock_unpoisoned()
    }

    /// True if the request could ever fit (else the call is a 400).
    pub fn is_possible(&self, memory_mb: u64, cpu_milli: u64) -> bool {
        memory_mb <= self.capacity.memory_mb && cpu_milli <= self.capacity.cpu_milli
    }

    /// Reserves now or reports the shortfall. Zero-sized requests always succeed.
    pub fn try_reserve(self: &Arc<Self>, memory_mb: u64, cpu_milli: u64) -> Result<Reservation, Shortfall> {
        let mut used = self.used.lock_unpoisoned();
        let free_mem = self.capacity.memory_mb.saturating_sub(used.0);
        let free_cpu = self.capacity.cpu_milli.saturating_sub(used.1);
        if memory_mb > free_mem || cpu_milli > free_cpu {
            return Err(Shortfall {
                memory_mb: memory_mb.saturating_sub(free_mem),
                cpu_milli: cpu_milli.saturating_sub(free_cpu),
            });
        }
        used.0 += memory_mb;
        used.1 += cpu_milli;
        Ok(Reservation {
            resources: self.clone(),
            memory_mb,
            cpu_milli,
        })
    }
}

/// A held reservation, released on drop (container teardown).
#[derive(Debug)]
pub struct Reservation {
    resources: Arc<Resources>,
    memory_mb: u64,
    cpu_milli: u64,
}

impl Reservation {
    /// MB held.
    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }
    /// mCPU held.
    pub fn cpu_milli(&self) -> u64 {
        self.cpu_milli
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.resources.used.lock_unpoisoned();
        used.0 = used.0.saturating_sub(self.memory_mb);
        used.1 = used.1.saturating_sub(self.cpu_milli);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_release_and_shortfall() {
        let r = Resources::new(Capacity {
            memory_mb: 256,
            cpu_milli: 1000,
        });
        let a = r.try_reserve(128, 0).unwrap();
        let b = r.try_reserve(128, 500).unwrap();
        assert_eq!(r.used(), (256, 500));
        assert_eq!(
            r.try_reserve(64, 600).unwrap_err(),
            Shortfall {
                memory_mb: 64,
                cpu_milli: 100
            }
        );
        let zero = r.try_reserve(0, 0).unwrap();
        drop(a);
        assert_eq!(r.used(), (128, 500));
        let _c = r.try_reserve(64, 0).unwrap();
        drop((b, zero));
        assert!(r.is_possible(256, 1000));
        assert!(!r.is_possible(257, 0));
    }

    #[test]
    fn meminfo_parse_and_clamp() {
        assert_eq!(
            parse_meminfo_available("MemTotal: 10 kB\nMemAvailable:    2048 kB\n"),
            Some(2 * MIB)
        );
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1500));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        let cap = Capacity::detect(512 * MIB, 1500);
        assert!(cap.memory_mb <= 512);
        assert!(cap.cpu_milli <= 1500 && cap.cpu_milli >= 1000);
    }
}
