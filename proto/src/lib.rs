//! Wire types of ferrofn, identical to the Fn Project's.
//!
//! `runner.proto` has no `package`, so its service is `RunnerProtocol` and the gRPC paths are
//! `/RunnerProtocol/Engage`, `/RunnerProtocol/Status`, ... exactly as Fn's Go code expects. The generated
//! module is re-exported at the crate root. `grpc.health.v1` comes from tonic-health; the encoded
//! descriptor set of `runner.proto` is exported for gRPC server reflection.
#![forbid(unsafe_code)]

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]
    tonic::include_proto!("_");
}

pub use generated::*;

/// `grpc.health.v1`, as served by tonic-health.
pub use tonic_health::pb as health;

/// Encoded `FileDescriptorSet` of `runner.proto` (and its imports) for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("runner_descriptor");

/// Largest data chunk on an Engage stream, in either direction (Fn's `MaxDataChunk`).
pub const MAX_DATA_CHUNK: usize = 10 * 1024;

/// Full gRPC service name (no package).
pub const SERVICE_NAME: &str = "RunnerProtocol";

/// ferrofn's additions to the Engage protocol, carried in fields Fn already has (`TryCall.extensions`,
/// `RunnerStatus.customStatus`), so that a Go LB or runner ignores them (decisions.md (2)).
pub mod ext {
    /// TryCall extension with which an LB asks the runner to acknowledge acceptance (a zero-length
    /// DataFrame once the call holds a slot) before it streams the body; value [`ON`].
    pub const ACCEPT_ACK: &str = "ferrofn-accept-ack";
    /// TryCall extension with which an LB in accept-ack mode says that the whole request body
    /// follows right behind the TryCall, without waiting for the ack; the value is its length in
    /// bytes (decimal, at most [`MAX_INLINE_BODY`]). A runner that knows it reads that body at once
    /// and hands it to the function with a `Content-Length`; one that does not just reads the
    /// frames early (they wait in its HTTP/2 window until it does).
    pub const INLINE_BODY: &str = "ferrofn-inline-body";
    /// Largest body an LB sends inline ([`INLINE_BODY`]).
    pub const MAX_INLINE_BODY: u64 = 64 * 1024;
    /// The value that switches an extension on.
    pub const ON: &str = "1";
    /// `RunnerStatus.customStatus` key listing the runner's capabilities, comma separated.
    pub const CAPABILITIES_KEY: &str = "ferrofn-capabilities";
    /// Capability: the runner honours [`ACCEPT_ACK`].
    pub const CAPABILITY_ACCEPT_ACK: &str = "accept-ack";
    /// Capability: the runner takes and sends data frames larger than Fn's 10 KiB, up to the size
    /// an LB asks for with [`FRAME_BYTES`].
    pub const CAPABILITY_FRAMES: &str = "frames";
    /// TryCall extension: the largest data frame (bytes, decimal) this LB sends and wants back on
    /// this stream, between [`crate::MAX_DATA_CHUNK`] and [`MAX_FRAME_BYTES`]. Only sent to a runner
    /// that advertises [`CAPABILITY_FRAMES`]; without it frames stay at 10 KiB both ways.
    pub const FRAME_BYTES: &str = "ferrofn-frame-bytes";
    /// Largest frame size an LB may ask for (well under gRPC's 4 MiB message limit).
    pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
    /// `RunnerStatus.customStatus` key with the runner's version.
    pub const VERSION_KEY: &str = "ferrofn-version";
}
