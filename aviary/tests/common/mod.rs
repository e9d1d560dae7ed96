//! Helpers shared by the binary's end-to-end tests: start real `aviary` processes, talk to them
//! over HTTP and WebSocket, await frames with a timeout (never sleep for them).

#![allow(dead_code)]

pub mod pusher;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(10);

/// The shared Postgres; tests create their own databases in it.
pub const ADMIN_DB: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A running `aviary` process, killed on drop.
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The metrics listener, when the process printed `metrics on http://ADDR/metrics`.
    pub metrics: Option<SocketAddr>,
    /// `label value` lines printed before `listening on`, e.g. `operator token`.
    pub banner: Vec<String>,
    /// Whether the process listens with TLS (`listening on https://`).
    pub tls: bool,
}

impl Proc {
    /// Spawns `aviary <args>` and waits for its `listening on http://ADDR` line.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Proc {
        Proc::spawn_with_nofile(args, envs, None)
    }

    /// As [`Proc::spawn`], with the child's descriptor limit (`ulimit -n`) lowered to `nofile`.
    pub fn spawn_with_nofile(args: &[&str], envs: &[(&str, &str)], nofile: Option<u64>) -> Proc {
        // AVIARY_TEST_BIN runs the same attack against another build (before/after figures).
        let bin = std::env::var("AVIARY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_aviary").to_owned());
        let mut command = Command::new(bin);
        if let Some(nofile) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
            // touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // Tests run many processes at once, some on fixed ports: each gets its own metrics port.
        command
            .args(args)
            .env("AVIARY_LOG", "warn")
            .env("AVIARY_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("the aviary binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let mut addr = None;
        let mut metrics = None;
        let mut tls = false;
        for line in lines.by_ref() {
            let line = line.expect("stdout is readable");
            let listening = line.strip_prefix("listening on http://");
            let listening_tls = line.strip_prefix("listening on https://");
            if let Some(v) = listening.or(listening_tls) {
                addr = Some(v.trim().parse().expect("a socket address"));
                tls = listening_tls.is_some();
                break;
            }
            if let Some(v) = line.strip_prefix("metrics on http://") {
                metrics = v.trim().strip_suffix("/metrics").and_then(|a| a.parse().ok());
            }
            banner.push(line.trim().to_owned());
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proc { child, addr: addr.unwrap_or_else(|| panic!("aviary {args:?} printed no address")), metrics, banner, tls }
    }

    /// The first word after `label` in the start banner.
    pub fn banner_value(&self, label: &str) -> Option<String> {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix(label).and_then(|v| v.split_whitespace().next()).map(str::to_owned))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The metrics listener's URL of `path`: from `metrics on ...`, or `aviary dev`'s banner.
    pub fn metrics_url(&self, path: &str) -> String {
        let addr = self.metrics.map(|a| a.to_string()).unwrap_or_else(|| {
            let url = self.banner_value("metrics").expect("the process printed its metrics address");
            url.trim_start_matches("http://").trim_end_matches("/metrics").to_owned()
        });
        format!("http://{addr}{path}")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/connect", self.addr)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`provision`] made on a control plane.
pub struct Provisioned {
    pub tenant_id: String,
    pub admin_key: String,
    pub app_id: String,
    /// A backend API key with every operation on every channel.
    pub api_key: String,
}

/// Creates a tenant (`tenant` is the operator's request body), one app in it (`app` is the
/// tenant admin's request body) and a backend API key, asserting each answer is 201.
pub async fn provision(http: &reqwest::Client, cp: &Proc, operator: &str, tenant: Value, app: Value) -> Provisioned {
    let (status, tenant) = send(http.post(cp.url("/v1/tenants")).bearer_auth(operator).json(&tenant)).await;
    assert_eq!(status, 201, "{tenant}");
    let tenant_id = tenant["tenant"]["id"].as_str().unwrap().to_owned();
    let admin_key = tenant["admin_key"]["secret"].as_str().unwrap().to_owned();
    let (status, app) =
        send(http.post(cp.url(&format!("/v1/tenants/{tenant_id}/apps"))).bearer_auth(&admin_key).json(&app)).await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (status, key) = send(
        http.post(cp.url(&format!("/v1/apps/{app_id}/keys")))
            .bearer_auth(&admin_key)
            .json(&json!({"name": "backend", "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}})),
    )
    .await;
    assert_eq!(status, 201, "{key}");
    let api_key = key["secret"].as_str().unwrap().to_owned();
    Provisioned { tenant_id, admin_key, app_id, api_key }
}

pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let body = res.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg =
            tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").expect("socket open").expect("frame");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
            Message::Close(frame) => panic!("socket closed by the server: {frame:?}"),
            _ => {}
        }
    }
}

pub async fn next_of_type(ws: &mut Ws, kind: &str) -> Value {
    next_matching(ws, |f| f["type"] == kind).await
}

pub async fn next_matching(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = next_json(ws).await;
        if pred(&frame) {
            return frame;
        }
    }
}

pub async fn send_frame(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.expect("frame sent");
}

/// Sends a command with `id` and returns its `ok`/`error` reply (pushed frames are skipped).
pub async fn request(ws: &mut Ws, id: u64, mut frame: Value) -> Value {
    frame["id"] = json!(id);
    send_frame(ws, frame).await;
    next_matching(ws, |f| (f["type"] == "ok" || f["type"] == "error") && f["id"] == id).await
}

/// Opens a WebSocket to `url` and completes the `connect` handshake.
pub async fn connect(url: &str, token: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("WebSocket connects");
    send_frame(&mut ws, json!({"type": "connect", "token": token})).await;
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    ws
}

/// A fresh Postgres database, dropped when the test ends.
pub struct Database {
    pub name: String,
}

impl Database {
    pub async fn create() -> Database {
        let name = format!("aviary_t_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(ADMIN_DB).await.expect("Postgres at 127.0.0.1:5432 answers");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("database created");
        admin.close().await;
        Database { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime guarantee; use a private one on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(ADMIN_DB).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}
