//! ferrofn-runner: the pure runner. It serves Fn's `RunnerProtocol` over gRPC and runs each call in a
//! hot Docker container through the FDK `http-stream` contract.
//!
//! A call flows one way: [`service`] (gRPC) -> [`engage`] (one stream's state machine) -> [`agent`]
//! (slot queues, resources, eviction, hot containers) -> [`driver`] (Docker) and [`fdk`] (HTTP over the
//! container's unix socket, found through [`iofs`]).
#![forbid(unsafe_code)]

pub mod agent;
pub mod config;
pub mod drain;
pub mod driver;
pub mod engage;
pub mod fdk;
pub mod health;
pub mod iofs;
pub mod metrics;
pub mod service;
pub mod status;

pub use config::RunnerSettings;
pub use service::{RunningRunner, start};
