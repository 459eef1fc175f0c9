//! The workspace's one policy for poisoned `std::sync` locks: take the guard anyway.
//!
//! A lock is poisoned when a thread panicked while holding it. Std's usual answer, `.lock().unwrap()`,
//! turns that one panic into a panic of every later user of the lock: in a long-lived server every
//! later call of a function (its slot queue), every launch (the resource pool), every request to the
//! registry; and a `Drop` that panics during another panic's unwinding aborts the process. So the
//! LB, the runner and this crate recover the guard through [`LockExt`] and [`RwLockExt`], and keep
//! serving. The panic itself is not hidden: the panic hook has logged it and the task that panicked
//! has failed.
//!
//! That is sound only because every std lock here guards a section that leaves its data valid
//! wherever it stops: no `.await` inside (clippy's `await_holding_lock` is denied), no function
//! code, counters updated with saturating arithmetic, collections changed by single insertions or
//! removals, whole values replaced (the TLS config, the runner list). The one section that does I/O,
//! the LB's SQLite connection (on a blocking thread), is safe for another reason: an unwinding
//! panic drops the open transaction, which rolls it back. A lock whose section can stop between two
//! changes that must go together must not use these helpers: restructure the section, or `expect`
//! with a comment saying why. Tests keep `.lock().unwrap()`: there, a poisoned lock is
//! another test thread's panic and should fail the test.
//!
//! Not `parking_lot` (no poisoning at all, the same behaviour): a dependency in three crates for two
//! small traits. Not `tokio::sync::Mutex`: it is for guards held across an `.await`, which these
//! sections never are.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`] under the workspace's poison policy (see the module doc).
pub trait LockExt<T: ?Sized> {
    /// Locks, taking the guard even if a panic poisoned the lock.
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`] under the workspace's poison policy (see the module doc).
pub trait RwLockExt<T: ?Sized> {
    /// Read-locks, taking the guard even if a panic poisoned the lock.
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    /// Write-locks, taking the guard even if a panic poisoned the lock.
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use super::*;

    /// Runs `f` and swallows its panic (the lock it holds is poisoned on the way out).
    fn panic_inside(f: impl FnOnce()) {
        assert!(catch_unwind(AssertUnwindSafe(f)).is_err());
    }

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let m = Mutex::new(vec![1]);
        panic_inside(|| {
            let mut v = m.lock_unpoisoned();
            v.push(2);
            panic!("while holding the lock");
        });
        assert!(m.is_poisoned());
        m.lock_unpoisoned().push(3);
        assert_eq!(*m.lock_unpoisoned(), [1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let l = RwLock::new(1);
        panic_inside(|| {
            *l.write_unpoisoned() = 2;
            let _held = l.write_unpoisoned();
            panic!("while holding the lock");
        });
        assert!(l.is_poisoned());
        *l.write_unpoisoned() += 1;
        assert_eq!(*l.read_unpoisoned(), 3);
    }
}
