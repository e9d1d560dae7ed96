//! Runs `aviary-chaos` for a few fixed seeds against a real cluster (its own redis-server, the
//! control plane on a fresh Postgres database, three data-plane nodes behind fault proxies):
//! node kills and restarts, SIGSTOP/SIGCONT, proxy resets, stalls and delays, Redis restarts, while resuming
//! subscribers and retrying publishers run and the oracle checks every delivery. Fixed seeds
//! mean fixed fault schedules; the oracle is exact (no timing is asserted), and every bound in
//! the runner is generous so a loaded machine only makes the run slower.

use std::path::PathBuf;
use std::process::Command;

/// The `aviary` binary: `AVIARY_BIN` if set, else built into this test's target directory.
fn aviary_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AVIARY_BIN") {
        return PathBuf::from(bin);
    }
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_aviary-chaos"));
    let profile_dir = chaos.parent().expect("the chaos binary lives in a target profile dir").to_path_buf();
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

#[test]
fn fixed_seeds_keep_every_invariant_under_faults() {
    let aviary = aviary_bin();
    for seed in [1, 2, 3] {
        let output = Command::new(env!("CARGO_BIN_EXE_aviary-chaos"))
            .args(["--seed", &seed.to_string(), "--duration", "15", "--nodes", "3"])
            .arg("--aviary-bin")
            .arg(&aviary)
            .output()
            .expect("aviary-chaos runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "seed {seed} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains(&format!("OK seed {seed}")), "{stdout}");
        // The schedule printed is the one the seed names, and faults were injected.
        assert!(stdout.contains("faults injected: ") && !stdout.contains("faults injected: 0"), "{stdout}");
    }
}
