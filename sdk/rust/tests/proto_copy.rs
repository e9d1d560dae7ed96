//! The SDK carries its own copy of the control plane's proto so the published crate builds on
//! its own; this keeps the copy identical to the one the control plane serves.

#[test]
fn the_sdk_proto_is_the_control_planes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert!(
        read("proto/aviary/v1/control_plane.proto") == read("../../control-plane/proto/aviary/v1/control_plane.proto"),
        "sdk/rust/proto differs from control-plane/proto: copy control-plane/proto/aviary/v1/control_plane.proto over it"
    );
}
