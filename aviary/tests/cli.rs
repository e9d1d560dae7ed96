//! The operator's commands as an operator runs them: `aviary config check`, the `--config`
//! file and its precedence, `aviary token` against a running `aviary dev`, shell completions and
//! `aviary healthcheck`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Proc, connect};

/// Runs `aviary <args>` to completion with `envs` (and no inherited AVIARY_* variables).
fn aviary(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aviary"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AVIARY_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(envs.iter().copied()).output().expect("the aviary binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A file in a fresh temporary directory, removed on drop.
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("aviary-cli-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The line of `key` in `config check`'s output.
fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no `{key}` line in:\n{out}"))
}

#[test]
fn config_check_accepts_a_good_config_and_prints_it_with_secrets_redacted() {
    let file = TempFile::new(
        "aviary.toml",
        r#"
log = "info"
database-url = "postgres://aviary:hunter2@db/aviary"   # the control plane's; data-plane ignores it
trusted-proxies = ["10.0.0.0/8", "127.0.0.1"]
otlp-endpoint = "http://otel-collector:4318"

[data-plane]
control-plane = "http://cp:8071"
node-token = "node-secret-xyz"
redis-url = ["redis://:redis-pw@r1:6379", "redis://r2:6379"]
heartbeat-s = 15
"#,
    );
    let out = aviary(&["config", "check", "data-plane", "--config", file.path()], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.starts_with("# aviary data-plane: the configuration is valid"), "{text}");
    assert_eq!(line(&text, "node-token"), r#"node-token = "<redacted>"  # file"#);
    assert_eq!(line(&text, "control-plane"), r#"control-plane = "http://cp:8071"  # file"#);
    assert_eq!(line(&text, "heartbeat-s"), "heartbeat-s = 15  # file");
    assert_eq!(line(&text, "trusted-proxies"), r#"trusted-proxies = ["10.0.0.0/8", "127.0.0.1"]  # file"#);
    assert_eq!(line(&text, "redis-url"), r#"redis-url = ["redis://:<redacted>@r1:6379", "redis://r2:6379"]  # file"#);
    assert_eq!(line(&text, "listen"), r#"listen = "0.0.0.0:8080"  # default"#);
    assert_eq!(line(&text, "otlp-endpoint"), r#"otlp-endpoint = "http://otel-collector:4318"  # file"#);
    assert!(text.contains("# keys for other commands, not used here: database-url"), "{text}");
    assert!(!text.contains("node-secret-xyz") && !text.contains("redis-pw") && !text.contains("hunter2"), "{text}");

    // The same check for the control plane reads the same file's top level.
    let out = aviary(
        &["config", "check", "control-plane", "--config", file.path()],
        &[("AVIARY_OPERATOR_TOKEN", "op-secret")],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert_eq!(line(&text, "database-url"), r#"database-url = "postgres://aviary:<redacted>@db/aviary"  # file"#);
    assert_eq!(line(&text, "operator-token"), r#"operator-token = "<redacted>"  # env AVIARY_OPERATOR_TOKEN"#);
    assert_eq!(line(&text, "otlp-endpoint"), r#"otlp-endpoint = "http://otel-collector:4318"  # file"#);
}

#[test]
fn config_check_rejects_a_bad_value_naming_the_flag() {
    // A value clap accepts but the node could not use: exit 1, the flag named.
    let out = aviary(&["config", "check", "data-plane", "--control-plane", "cp:8071", "--node-token", "t"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("error: --control-plane: `cp:8071` is not an http:// or https:// URL"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "nothing printed as effective on failure");

    let out = aviary(&["config", "check", "dev", "--credentials-key", "abc", "--log", "aviary=notalevel"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error: --credentials-key: ") && err.contains("64 hex characters"), "{err}");
    assert!(err.contains("error: --log: not a log filter"), "{err}");
    let out = aviary(&["config", "check", "dev", "--otlp-endpoint", "otel-collector:4318"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("error: --otlp-endpoint: `otel-collector:4318` is not an http://"),
        "{}",
        stderr(&out)
    );

    // A malformed value from the file: clap's message names the flag (exit 2).
    let file = TempFile::new("bad.toml", "listen = \"nowhere\"\n");
    let out = aviary(&["config", "check", "dev", "--config", file.path()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--listen"), "{}", stderr(&out));

    // A key that is no flag is named.
    let file = TempFile::new("typo.toml", "[data-plane]\nredis-urls = [\"redis://r:6379\"]\n");
    let out = aviary(&["config", "check", "data-plane", "--config", file.path(), "--node-token", "t"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out)
            .contains("unknown key `redis-urls` in `[data-plane]`: `aviary data-plane` has no --redis-urls flag"),
        "{}",
        stderr(&out)
    );

    // A missing required value is clap's error, naming the flag.
    let out = aviary(&["config", "check", "data-plane"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--node-token"), "{}", stderr(&out));
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let file = TempFile::new("aviary.toml", "heartbeat-s = 7\n[dev]\noutbound-queue = 99\n");
    let check = |args: &[&str], envs: &[(&str, &str)]| {
        let mut all = vec!["config", "check", "dev"];
        all.extend_from_slice(args);
        let out = aviary(&all, envs);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let by_flag = ["--config", file.path()];
    let text = check(&by_flag, &[]);
    assert_eq!(line(&text, "heartbeat-s"), "heartbeat-s = 7  # file");
    assert_eq!(line(&text, "outbound-queue"), "outbound-queue = 99  # file");
    assert_eq!(line(&text, "presence-ttl-s"), "presence-ttl-s = 25  # default");
    // AVIARY_CONFIG names the file as well as --config does.
    let text = check(&[], &[("AVIARY_CONFIG", file.path()), ("AVIARY_HEARTBEAT_S", "8")]);
    assert_eq!(line(&text, "heartbeat-s"), "heartbeat-s = 8  # env AVIARY_HEARTBEAT_S");
    assert_eq!(line(&text, "outbound-queue"), "outbound-queue = 99  # file");
    let text = check(&["--config", file.path(), "--heartbeat-s", "9"], &[("AVIARY_HEARTBEAT_S", "8")]);
    assert_eq!(line(&text, "heartbeat-s"), "heartbeat-s = 9  # flag");
}

#[test]
fn a_config_file_configures_a_running_dev_and_the_command_line_overrides_it() {
    let data_dir = std::env::temp_dir().join(format!("aviary-cli-dev-{}", uuid::Uuid::new_v4().simple()));
    let file = TempFile::new(
        "aviary.toml",
        &format!(
            "[dev]\nlisten = \"127.0.0.1:1\"\ngrpc-listen = \"127.0.0.1:0\"\ndata-dir = {:?}\n",
            data_dir.to_str().unwrap()
        ),
    );
    // Port 1 is privileged: the start only succeeds because the flag overrides the file.
    let proc =
        Proc::spawn(&["dev", "--config", file.path(), "--listen", "127.0.0.1:0"], &[("AVIARY_OPERATOR_TOKEN", "")]);
    assert_ne!(proc.addr.port(), 1);
    assert!(data_dir.join("operator-token").exists(), "the data dir came from the file");
    drop(proc);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn token_minted_by_the_cli_connects_a_websocket() {
    let data_dir = std::env::temp_dir().join(format!("aviary-cli-dev-{}", uuid::Uuid::new_v4().simple()));
    let proc = Proc::spawn(
        &["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", data_dir.to_str().unwrap()],
        &[("AVIARY_OPERATOR_TOKEN", "")],
    );
    let app = proc.banner_value("app id").expect("dev printed the demo app");
    let key = proc.banner_value("API key").expect("dev printed the demo key");
    let url = proc.url("");
    let mint = |args: &[&str], key: &str| {
        let mut all = vec!["token", "--url", &url, "--app", &app, "--client-id", "cli-alice"];
        all.extend_from_slice(args);
        aviary(&all, &[("AVIARY_API_KEY", key)])
    };

    let out = mint(&["--ttl-s", "120", "--capability", "chat:*=subscribe"], &key);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a compact JWS: {token}");
    let mut ws = connect(&proc.ws_url(), &token).await;
    let reply = common::request(&mut ws, 1, serde_json::json!({"type": "subscribe", "channel": "chat:lobby"})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    // The token carries only what was asked: publishing is refused.
    let reply = common::request(
        &mut ws,
        2,
        serde_json::json!({"type": "publish", "channel": "chat:lobby", "data": {"text": "hi"}}),
    )
    .await;
    assert_eq!(reply["type"], "error", "{reply}");

    let out = mint(&["--json"], &key);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("--json prints JSON");
    assert!(answer["token"].is_string() && answer["expires_at"].is_string(), "{answer}");

    // A wrong key: the control plane's refusal, non-zero.
    let out = mint(&[], "avk_not_a_key");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("the control plane refused the token (401"), "{}", stderr(&out));
    drop(proc);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn completions_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = aviary(&["completions", shell], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        for word in ["data-plane", "control-plane", "config", "token", "redis-url", "trusted-proxies"] {
            assert!(text.contains(word), "{shell} completions lack {word}");
        }
    }
}
