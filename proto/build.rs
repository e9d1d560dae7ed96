//! Generates the gRPC messages, server and client for `aviary/v1/control_plane.proto`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate so building needs no system protobuf
//! compiler and downloads nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let proto = "aviary/v1/control_plane.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(&[proto], &["."])?;
    Ok(())
}
