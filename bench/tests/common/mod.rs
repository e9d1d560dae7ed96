//! What the bench crate's integration tests share.

use std::path::PathBuf;
use std::process::Command;

/// The `aviary` binary: `AVIARY_BIN` if set, else built into this test's target directory (the
/// profile of this crate's binaries).
pub fn aviary_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AVIARY_BIN") {
        return PathBuf::from(bin);
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_aviary-bench"));
    let profile_dir = bench.parent().expect("the bench binary lives in a target profile dir").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "aviary", "--bin", "aviary"]);
    if release {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the aviary binary failed");
    profile_dir.join("aviary")
}
