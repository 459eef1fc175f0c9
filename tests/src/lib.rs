//! Support code for ferrofn integration tests.
#![forbid(unsafe_code)]
