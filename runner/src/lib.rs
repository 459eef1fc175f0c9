//! ferrofn-runner.
#![forbid(unsafe_code)]
