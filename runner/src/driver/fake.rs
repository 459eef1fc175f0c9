//! A test driver whose engine answers pings, up or down at will, and fails every container
//! operation: enough for the health loop and for services that never start a container.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{ContainerSpec, Driver, DriverError, DriverFuture, StartedContainer};

/// See the module doc.
pub(crate) struct PingOnlyDriver {
    /// What [`Driver::ping`] answers.
    pub(crate) engine_up: AtomicBool,
}

impl PingOnlyDriver {
    /// A driver whose engine answers.
    pub(crate) fn up() -> Self {
        PingOnlyDriver {
            engine_up: AtomicBool::new(true),
        }
    }
}

fn gone<'a, T: Send + 'a>() -> DriverFuture<'a, Result<T, DriverError>> {
    Box::pin(async { Err(DriverError::WaitEnded { id: "none".into() }) })
}

impl Driver for PingOnlyDriver {
    fn ensure_image<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        gone()
    }
    fn start<'a>(&'a self, _: &'a ContainerSpec) -> DriverFuture<'a, Result<StartedContainer, DriverError>> {
        gone()
    }
    fn wait<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<i64, DriverError>> {
        gone()
    }
    fn pause<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        gone()
    }
    fn unpause<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        gone()
    }
    fn remove<'a>(&'a self, _: &'a str) -> DriverFuture<'a, Result<(), DriverError>> {
        gone()
    }
    fn sweep(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        gone()
    }
    fn sweep_own(&self) -> DriverFuture<'_, Result<usize, DriverError>> {
        gone()
    }
    fn ping(&self) -> DriverFuture<'_, bool> {
        let up = self.engine_up.load(Ordering::SeqCst);
        Box::pin(async move { up })
    }
}
