//! Runs `aviary-chaos` for a few fixed seeds against a real cluster (its own redis-server, the
//! control plane on a fresh Postgres database, three data-plane nodes behind fault proxies):
//! node kills and restarts, SIGSTOP/SIGCONT, proxy resets, stalls and delays, Redis restarts and
//! pauses, faults of the links to Redis, the control plane down, tokens expiring, keys and
//! clients revoked, while resuming subscribers and retrying publishers run and the oracle
//! checks every delivery. Fixed seeds
//! mean fixed fault schedules; the oracle is exact (no timing is asserted), and every bound in
//! the runner is generous so a loaded machine only makes the run slower.

mod common;

use std::process::Command;

use common::aviary_bin;

#[test]
fn fixed_seeds_keep_every_invariant_under_faults() {
    let aviary = aviary_bin();
    for seed in [1, 2, 3, 9] {
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
