//! `ferrofn-bench`: a load and measurement tool for Fn-style load balancers (ferrofn's LB or Fn's
//! own), and the measure of the physical floor beneath them: the function image run and called
//! directly on the local Docker engine. Scenarios: sequential, sparse and concurrent warm calls,
//! cold starts through the v2 API, streaming echo, a load step on a fresh fn; results as tables and JSON, with the
//! performance contract's checks against the floor, and the TARGETS table of a whole run.
#![forbid(unsafe_code)]

pub mod client;
pub mod cold;
pub mod cpu;
pub mod floor;
pub mod load;
pub mod pattern;
pub mod progress;
pub mod relay;
pub mod report;
pub mod rss;
pub mod sim;
pub mod stats;
pub mod step;
pub mod stream;
pub mod targets;
#[cfg(test)]
mod test_support;
pub mod units;
