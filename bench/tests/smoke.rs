//! Runs `aviary-bench smoke` against a real `aviary dev` so the load generator cannot rot: it
//! must connect, subscribe, publish over WebSocket and REST, mint tokens, and account for every
//! delivery, once over Aviary's protocol and once over Pusher's (`--targets aviary-pusher`).
//! No timing is asserted, only that everything sent arrived. Where Redis answers, the
//! multi-node scenario also runs over 2 nodes of each installed peer (the Socket.io peer once
//! `npm ci` was run in bench/peers/socketio; Sockudo only if its binary is found).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::aviary_bin;

/// Runs `aviary-bench smoke` with `args`; returns the outcomes of its results.json.
fn smoke(args: &[&str]) -> Vec<serde_json::Value> {
    let aviary = aviary_bin();
    let out = std::env::temp_dir().join(format!("aviary-bench-smoke-{}-{}", std::process::id(), args.join("-")));
    let output = Command::new(env!("CARGO_BIN_EXE_aviary-bench"))
        .arg("smoke")
        .args(args)
        .arg("--aviary-bin")
        .arg(&aviary)
        .arg("--out")
        .arg(&out)
        .arg("--socketio-dir")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/socketio"))
        .output()
        .expect("aviary-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "smoke run failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results.json written"))
            .expect("results.json is JSON");
    let outcomes = results["outcomes"].as_array().expect("outcomes").clone();
    for scenario in ["idle", "fanout", "rooms", "rest"] {
        assert!(outcomes.iter().any(|o| o["scenario"] == scenario), "{scenario} missing from {results}");
    }
    // Multi-node outcomes are there only for the peers installed here; each must be lossless too.
    for o in outcomes.iter().filter(|o| ["fanout", "rooms", "multinode"].iter().any(|s| o["scenario"] == *s)) {
        let metric = |name: &str| {
            o["metrics"]
                .as_array()
                .and_then(|ms| ms.iter().find(|m| m["name"] == name))
                .and_then(|m| m["value"].as_f64())
        };
        let expected = metric("deliveries expected").expect("expected deliveries reported");
        assert!(expected > 0.0, "{o}");
        assert_eq!(metric("deliveries"), Some(expected), "{o}");
        assert_eq!(metric("lost"), Some(0.0), "{o}");
    }
    assert!(out.join("results.md").exists());
    let _ = std::fs::remove_dir_all(&out);
    outcomes
}

#[test]
fn smoke_run_delivers_every_publication_to_every_subscriber() {
    smoke(&[]);
}

/// The Pusher mode: Aviary driven over `/app/<key>` and the signed Pusher HTTP API (a Pusher
/// credential of the bench app), with the client code used for Sockudo; the rooms scenario
/// publishes through `POST /apps/{app_id}/events`.
#[test]
fn smoke_run_over_the_pusher_protocol_delivers_every_publication() {
    let outcomes = smoke(&["--targets", "aviary-pusher"]);
    assert!(outcomes.iter().all(|o| o["target"] == "Aviary (Pusher)"), "{outcomes:?}");
    let rooms = outcomes.iter().find(|o| o["scenario"] == "rooms").expect("rooms ran");
    let published = rooms["metrics"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == "publications"))
        .and_then(|m| m["value"].as_f64());
    assert!(published.is_some_and(|p| p > 0.0), "{rooms}");
}
