//! ferrofn-lb.
#![forbid(unsafe_code)]
