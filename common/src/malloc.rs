//! glibc's malloc, held to a fixed mmap threshold.
//!
//! By default glibc raises its mmap threshold every time it frees a chunk it had mapped (up to
//! 32 MiB). From then on the large buffers of a streamed body (HTTP/2 and protobuf buffers of
//! 128 KiB and more) come from its heaps, one per thread, which it returns to the system only
//! from their tops: a runner's RSS crept from ~16.7 to ~21.6 MiB over ten 256 MiB transfers, and
//! kept the growth when idle. With the threshold fixed at [`MMAP_THRESHOLD`] it stayed at 14.7-17.1
//! MiB at the same throughput (BENCHMARKS.md, "glibc's mmap threshold").
//!
//! The threshold can only be fixed through `mallopt` (an `unsafe` call, forbidden in this
//! workspace) or the `GLIBC_TUNABLES` environment variable, which glibc reads when the process
//! starts. So the binaries re-execute themselves once, first thing in `main`, with the tunable
//! added to the environment ([`reexec_with_fixed_mmap_threshold`]). An operator's own
//! `glibc.malloc.mmap_threshold` in `GLIBC_TUNABLES` is kept as it is.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The glibc tunable.
pub const TUNABLE: &str = "glibc.malloc.mmap_threshold";
/// Allocations of this size and more are mapped on their own and unmapped when freed.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;
/// Set in the re-executed process's environment: it never re-executes again, whatever glibc did
/// with the tunable (a loader that drops `GLIBC_TUNABLES` would otherwise loop).
pub const REEXEC_MARK: &str = "FERROFN_MALLOC_TUNED";

/// The `GLIBC_TUNABLES` value with the fixed threshold added to `existing`, or `None` when
/// `existing` already sets the threshold (the operator's choice stands).
pub fn tunables_with_threshold(existing: Option<&str>) -> Option<String> {
    let existing = existing.unwrap_or("").trim_matches(':');
    let set = existing
        .split(':')
        .any(|kv| kv.split_once('=').is_some_and(|(k, _)| k == TUNABLE));
    if set {
        return None;
    }
    let ours = format!("{TUNABLE}={MMAP_THRESHOLD}");
    Some(if existing.is_empty() {
        ours
    } else {
        format!("{existing}:{ours}")
    })
}

/// Re-executes the running binary with the fixed mmap threshold in `GLIBC_TUNABLES`, unless it
/// is already there or this process is the re-executed one. Call it first in `main`, before any
/// thread starts. Returns only when it did not re-execute (or `exec` failed: then the process
/// goes on with glibc's defaults, which is correct, only heavier on memory).
pub fn reexec_with_fixed_mmap_threshold() {
    if std::env::var_os(REEXEC_MARK).is_some() {
        return;
    }
    let existing = std::env::var("GLIBC_TUNABLES").ok();
    let Some(tunables) = tunables_with_threshold(existing.as_deref()) else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0: OsString = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .env(REEXEC_MARK, "1")
        .exec();
    // Logging is not set up yet: one line on stderr.
    eprintln!(
        "re-executing {} with {TUNABLE} failed ({err}); going on with glibc's default",
        exe.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_threshold_and_keeps_other_tunables() {
        let ours = format!("{TUNABLE}={MMAP_THRESHOLD}");
        assert_eq!(tunables_with_threshold(None).as_deref(), Some(ours.as_str()));
        assert_eq!(tunables_with_threshold(Some("")).as_deref(), Some(ours.as_str()));
        assert_eq!(
            tunables_with_threshold(Some("glibc.malloc.arena_max=2")),
            Some(format!("glibc.malloc.arena_max=2:{ours}"))
        );
        assert_eq!(
            tunables_with_threshold(Some("glibc.malloc.arena_max=2:")),
            Some(format!("glibc.malloc.arena_max=2:{ours}"))
        );
    }

    #[test]
    fn an_operators_own_threshold_stands() {
        assert_eq!(
            tunables_with_threshold(Some("glibc.malloc.mmap_threshold=65536")),
            None
        );
        assert_eq!(
            tunables_with_threshold(Some(
                "glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=4096"
            )),
            None
        );
        // A longer name that starts with it is another tunable.
        assert!(tunables_with_threshold(Some("glibc.malloc.mmap_threshold_x=1")).is_some());
    }
}
