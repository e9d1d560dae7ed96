//! With the `grpc` feature, generates the gRPC client (client only: the SDK never serves) for the
//! control plane's `aviary.v1.ControlPlane` service. The proto travels with the crate
//! (`proto/`, a copy of `control-plane/proto` that `tests/proto_copy.rs` keeps identical), so the
//! published crate builds on its own.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate so building needs no system protobuf
//! compiler and downloads nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
        let proto = "proto/aviary/v1/control_plane.proto";
        println!("cargo:rerun-if-changed={proto}");
        tonic_prost_build::configure().build_client(true).build_server(false).compile_protos(&[proto], &["proto"])?;
    }
    Ok(())
}
