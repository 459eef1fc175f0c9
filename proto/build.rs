//! Generates the Rust code for `runner.proto` without a system `protoc`: protox parses the file into a
//! descriptor set, which is both handed to tonic-prost-build and written out for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["runner.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("runner_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[allow(clippy::all)]")
        // Body chunks are sliced out of larger buffers and handed on without copying.
        .bytes(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
