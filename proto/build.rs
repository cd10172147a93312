//! Compiles `proto/ferry.proto` with protox (pure Rust), so building needs
//! no `protoc` on the machine, and writes a descriptor set for gRPC
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ferry.proto");
    let fds = protox::compile(["proto/ferry.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("ferry_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
