//! Support code for ferrofn's integration tests (one file per behaviour under `tests/tests/`) and the
//! tools built from this crate: Docker access, function image builds, process harnesses.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod docker;
pub mod images;
pub mod lb_fixture;
pub mod lb_proc;
pub mod load;
pub mod nginx;
pub mod pg_server;
pub mod runner_proc;
pub mod testfn;
