//! ferrofn-lb: the LB node. It serves Fn's v2 management API from a [`registry`] (an embedded SQLite
//! file, or a Postgres database shared by several LBs; it also holds Fn's app / fn / trigger models
//! and their validation), and the invoke and trigger fronts, which turn an HTTP request into a call
//! model ([`call`]), place it on a runner of the [`pool`] with a [`placer`] and stream it over
//! Engage ([`engage`]).
#![forbid(unsafe_code)]

pub mod call;
pub mod config;
pub mod engage;
pub mod http;
pub mod placer;
pub mod pool;
pub mod registry;
pub mod server;

pub use config::LbSettings;
pub use server::{LbHandle, start, start_with_resolver};
