//! With the `grpc` feature, generates the gRPC client (client only: the SDK never serves) for the
//! control plane's `aviary.v1.ControlPlane` service, from the one `.proto` the server compiles
//! too: `proto/aviary/v1/control_plane.proto` here is a symlink to the `aviary-proto` crate's
//! (`/proto/aviary/v1/control_plane.proto` in the repository). `cargo package` stores the file
//! the link points to, so the published crate carries a real copy and builds on its own.
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
