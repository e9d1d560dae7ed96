//! The Docker files without Docker (none runs here): `infra/docker-compose.yml`'s shape (a
//! health check on every long-running service, start order waiting on health and on the
//! migration's success), `infra/Dockerfile`'s EXPOSE and HEALTHCHECK, `.dockerignore`, and
//! every health-check command of ours run for real against a live `aviary dev`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use common::Proc;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn compose() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo("infra/docker-compose.yml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).expect("the compose file is YAML");
    let services = doc["services"].as_mapping().expect("services");
    services.iter().map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone())).collect()
}

/// A health check's `test` as argv (the `CMD` form; `CMD-SHELL` strings are refused: they need
/// a shell the image may not have).
fn health_argv(service: &str, spec: &Value) -> Option<Vec<String>> {
    let test = &spec["healthcheck"]["test"];
    if spec["healthcheck"]["disable"].as_bool() == Some(true) {
        return None;
    }
    let items: Vec<String> = test
        .as_sequence()
        .unwrap_or_else(|| panic!("{service}: healthcheck.test must be a list"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(items.first().map(String::as_str), Some("CMD"), "{service}: use the CMD form");
    Some(items[1..].to_vec())
}

#[test]
fn every_compose_service_is_health_checked_and_started_in_order() {
    let services = compose();
    assert!(services.len() >= 6, "{:?}", services.keys());
    let one_shot: Vec<&str> = services
        .iter()
        .filter(|(_, s)| s["healthcheck"]["disable"].as_bool() == Some(true))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(one_shot, ["migrate"], "only the migration runs to completion");
    for (name, spec) in &services {
        if !one_shot.contains(&name.as_str()) {
            let argv = health_argv(name, spec).unwrap();
            assert!(!argv.is_empty(), "{name}: empty health check");
            for key in ["interval", "timeout", "retries"] {
                assert!(!spec["healthcheck"][key].is_null(), "{name}: healthcheck.{key}");
            }
        }
        let Some(deps) = spec.get("depends_on") else { continue };
        let deps = deps.as_mapping().unwrap_or_else(|| panic!("{name}: depends_on must name conditions"));
        for (dep, condition) in deps {
            let dep = dep.as_str().unwrap();
            assert!(services.contains_key(dep), "{name} depends on unknown {dep}");
            let wanted = if one_shot.contains(&dep) { "service_completed_successfully" } else { "service_healthy" };
            assert_eq!(condition["condition"].as_str(), Some(wanted), "{name} -> {dep}");
        }
    }
    // Nothing Aviary starts before the schema exists, nor a node before its control plane.
    assert_eq!(services["control-plane"]["depends_on"]["migrate"]["condition"], "service_completed_successfully");
    assert_eq!(services["data-plane"]["depends_on"]["control-plane"]["condition"], "service_healthy");
    assert_eq!(services["migrate"]["depends_on"]["postgres"]["condition"], "service_healthy");
}

#[test]
fn dockerfile_exposes_the_ports_and_dockerignore_keeps_the_context_small() {
    let dockerfile = std::fs::read_to_string(repo("infra/Dockerfile")).unwrap();
    let expose = dockerfile.lines().find(|l| l.starts_with("EXPOSE ")).expect("EXPOSE");
    for port in ["8080", "8070", "8071"] {
        assert!(expose.split_whitespace().any(|p| p == port), "{expose}");
    }
    let ignore = std::fs::read_to_string(repo(".dockerignore")).expect(".dockerignore at the root");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for entry in [".git", "/target", "**/node_modules"] {
        assert!(lines.contains(&entry), ".dockerignore lacks {entry}");
    }
    // What the build compiles in must not be ignored.
    for needed in ["aviary", "examples", "migrations", "openapi"] {
        assert!(!lines.iter().any(|l| l.trim_start_matches('/') == needed), "{needed} is ignored");
    }
}

/// The Dockerfile's HEALTHCHECK argv.
fn dockerfile_healthcheck() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo("infra/Dockerfile")).unwrap();
    let line = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK ")).expect("HEALTHCHECK");
    let cmd = line.split_once(" CMD ").expect("HEALTHCHECK ... CMD [...]").1;
    serde_json::from_str(cmd).expect("the exec (JSON) form")
}

/// Runs a health-check argv with `aviary` meaning the binary under test; true on exit 0.
fn passes(argv: &[String], envs: &[(&str, String)]) -> bool {
    let program = if argv[0] == "aviary" { env!("CARGO_BIN_EXE_aviary").to_owned() } else { argv[0].clone() };
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        .env_remove("AVIARY_LISTEN")
        .env_remove("AVIARY_HEALTHCHECK_URL")
        .env_remove("AVIARY_CONFIG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.status().expect("the health check runs").success()
}

#[test]
fn the_health_checks_pass_against_a_live_process_and_fail_without_one() {
    let data_dir = std::env::temp_dir().join(format!("aviary-docker-test-{}", uuid::Uuid::new_v4().simple()));
    let dev = Proc::spawn(
        &["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()],
        &[("AVIARY_OPERATOR_TOKEN", "")],
    );
    let port = dev.addr.port().to_string();

    // The image's HEALTHCHECK finds the process through AVIARY_LISTEN, as in a container.
    let image_check = dockerfile_healthcheck();
    assert_eq!(image_check, ["aviary", "healthcheck"]);
    assert!(passes(&image_check, &[("AVIARY_LISTEN", format!("0.0.0.0:{port}"))]));

    // Each compose check, pointed at the live process's port instead of its container's.
    for (name, spec) in compose() {
        let Some(argv) = health_argv(&name, &spec) else { continue };
        let ours = argv[0] == "aviary" || (name == "nginx" && argv[0] == "bash");
        if !ours {
            continue; // pg_isready, redis-cli: the images' own tools.
        }
        let argv: Vec<String> = argv
            .iter()
            .map(|a| {
                a.replace(":8070/", &format!(":{port}/"))
                    .replace(":8080/", &format!(":{port}/"))
                    .replace("/127.0.0.1/80 ", &format!("/127.0.0.1/{port} "))
            })
            .collect();
        assert!(argv.iter().any(|a| a.contains(&port)), "{name}: its check names no port: {argv:?}");
        assert!(passes(&argv, &[]), "{name}: {argv:?} failed against a live process");
    }

    // And fails when nothing answers (the process gone).
    drop(dev);
    assert!(!passes(&image_check, &[("AVIARY_LISTEN", format!("0.0.0.0:{port}"))]));
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn the_health_check_refuses_a_not_ready_answer() {
    // A listener that answers 503 (a draining node): the check exits non-zero.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut socket, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = socket.read(&mut buf);
        let body = r#"{"status":"draining"}"#;
        let _ = write!(
            socket,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let argv =
        ["aviary".to_owned(), "healthcheck".to_owned(), "--url".to_owned(), format!("http://127.0.0.1:{port}/readyz")];
    assert!(!passes(&argv, &[]));
    server.join().unwrap();
}
