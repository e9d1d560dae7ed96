//! Pusher compatibility fixtures shared by the Pusher tests (HTTP API and server SDKs here; the
//! WebSocket front end's pusher-js tests use the same credential helper): a real `aviary dev`
//! with a tenant, an app, an API key and a Pusher credential, and runners for the real Pusher
//! SDKs in `aviary/tests/pusher/` (npm `pusher` installed there by `npm ci`, PyPI `pusher` in
//! the venv `scripts/test` creates under `target/`).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{Proc, send};

/// A Pusher credential as the control plane answers its creation.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The numeric `app_id` Pusher SDKs put in their URLs.
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl Credential {
    fn from_answer(answer: &Value) -> Credential {
        let field = |name: &str| answer[name].as_str().unwrap_or_else(|| panic!("{name} in {answer}")).to_owned();
        Credential { app_id: field("app_id"), key: field("key"), secret: field("secret") }
    }
}

/// A running `aviary dev` with one app ready for Pusher clients.
pub struct PusherApp {
    pub proc: Proc,
    data_dir: PathBuf,
    pub http: reqwest::Client,
    /// The Aviary app id (`app_...`).
    pub app_id: String,
    /// The tenant admin key, for control-plane calls.
    pub admin: String,
    /// An API key of the app allowed everything (mints Aviary connection tokens).
    pub api_key: String,
    /// The app's first Pusher credential, allowed every channel.
    pub credential: Credential,
}

impl PusherApp {
    /// Starts `aviary dev` and creates a tenant, an app with `namespaces` (the default
    /// namespace is added when missing), an API key and a Pusher credential created with
    /// `credential_body` (`{}` allows everything).
    pub async fn start(namespaces: Value, credential_body: Value) -> PusherApp {
        let data_dir = std::env::temp_dir().join(format!("aviary-pusher-test-{}", uuid::Uuid::new_v4().simple()));
        let dir = data_dir.to_str().expect("temp dirs are UTF-8").to_owned();
        let proc = Proc::spawn(
            &["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", &dir],
            &[("AVIARY_OPERATOR_TOKEN", "")],
        );
        let operator = proc.banner_value("operator token").expect("aviary dev printed the operator token");
        let http = reqwest::Client::new();
        let (status, tenant) =
            send(http.post(proc.url("/v1/tenants")).bearer_auth(&operator).json(&json!({"name": "pusher-compat"})))
                .await;
        assert_eq!(status, 201, "{tenant}");
        let tenant_id = tenant["tenant"]["id"].as_str().unwrap().to_owned();
        let admin = tenant["admin_key"]["secret"].as_str().unwrap().to_owned();
        let mut namespaces = namespaces.as_array().cloned().unwrap_or_default();
        if !namespaces.iter().any(|n| n["name"] == "") {
            namespaces.push(json!({"name": ""}));
        }
        let (status, app) = send(
            http.post(proc.url(&format!("/v1/tenants/{tenant_id}/apps")))
                .bearer_auth(&admin)
                .json(&json!({"name": "pusher-app", "namespaces": namespaces})),
        )
        .await;
        assert_eq!(status, 201, "{app}");
        let app_id = app["id"].as_str().unwrap().to_owned();
        let (status, key) =
            send(http.post(proc.url(&format!("/v1/apps/{app_id}/keys"))).bearer_auth(&admin).json(
                &json!({"name": "backend", "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}}),
            ))
            .await;
        assert_eq!(status, 201, "{key}");
        let api_key = key["secret"].as_str().unwrap().to_owned();
        let mut fixture = PusherApp {
            proc,
            data_dir,
            http,
            app_id,
            admin,
            api_key,
            credential: Credential { app_id: String::new(), key: String::new(), secret: String::new() },
        };
        fixture.credential = fixture.create_credential(credential_body).await;
        fixture
    }

    pub fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    /// Creates another Pusher credential of the app (`{}`: every channel).
    pub async fn create_credential(&self, body: Value) -> Credential {
        let (status, answer) = send(
            self.http
                .post(self.url(&format!("/v1/apps/{}/pusher-credentials", self.app_id)))
                .bearer_auth(&self.admin)
                .json(&body),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
        Credential::from_answer(&answer)
    }

    /// Revokes a credential (at once, in `aviary dev`).
    pub async fn revoke_credential(&self, key: &str) {
        let res = self
            .http
            .delete(self.url(&format!("/v1/apps/{}/pusher-credentials/{key}", self.app_id)))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("revoke sent");
        assert!(res.status().is_success(), "revoke: {}", res.status());
    }

    /// Changes the app's quotas (`PATCH /v1/apps/{id}` with `{"quotas": quotas}`).
    pub async fn set_quotas(&self, quotas: Value) {
        let (status, answer) = send(
            self.http
                .patch(self.url(&format!("/v1/apps/{}", self.app_id)))
                .bearer_auth(&self.admin)
                .json(&json!({"quotas": quotas})),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }

    /// An Aviary connection token for `client_id`, allowed everything.
    pub async fn token(&self, client_id: &str) -> String {
        let (status, minted) = send(
            self.http
                .post(self.url(&format!("/v1/apps/{}/tokens", self.app_id)))
                .bearer_auth(&self.api_key)
                .json(&json!({"client_id": client_id, "ttl_s": 600})),
        )
        .await;
        assert_eq!(status, 200, "{minted}");
        minted["token"].as_str().unwrap().to_owned()
    }

    /// The environment the SDK runners read: where Aviary is and the credential to sign with.
    fn sdk_env(&self, credential: &Credential) -> Vec<(&'static str, String)> {
        vec![
            ("PUSHER_HOST", self.proc.addr.ip().to_string()),
            ("PUSHER_PORT", self.proc.addr.port().to_string()),
            ("PUSHER_APP_ID", credential.app_id.clone()),
            ("PUSHER_KEY", credential.key.clone()),
            ("PUSHER_SECRET", credential.secret.clone()),
        ]
    }

    /// Runs one call of the npm `pusher` SDK (`aviary/tests/pusher/node_sdk.mjs`) signed with
    /// `credential`; returns `{"status", "body"}` or `{"status", "error"}`.
    pub async fn node_sdk(&self, credential: &Credential, call: &str, args: Value) -> Value {
        let dir = sdk_dir();
        assert!(
            dir.join("node_modules/pusher").is_dir(),
            "the npm pusher SDK is not installed: run scripts/test, or `npm ci` in {}",
            dir.display()
        );
        run(tokio::process::Command::new("node").arg(dir.join("node_sdk.mjs")), call, &args, &self.sdk_env(credential))
            .await
    }

    /// Runs one call of the PyPI `pusher` SDK (`aviary/tests/pusher/python_sdk.py`) with the
    /// venv's Python; same answers as [`PusherApp::node_sdk`].
    pub async fn python_sdk(&self, credential: &Credential, call: &str, args: Value) -> Value {
        let python = python_venv().join("bin/python");
        assert!(
            python.exists(),
            "the PyPI pusher SDK is not installed: run scripts/test (it creates {})",
            python_venv().display()
        );
        run(
            tokio::process::Command::new(python).arg(sdk_dir().join("python_sdk.py")),
            call,
            &args,
            &self.sdk_env(credential),
        )
        .await
    }
}

impl Drop for PusherApp {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// `aviary/tests/pusher/`: the SDK runners and the npm package they need.
pub fn sdk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher")
}

/// The venv holding the PyPI `pusher` SDK (`scripts/test` creates it).
pub fn python_venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-pusher")
}

async fn run(command: &mut tokio::process::Command, call: &str, args: &Value, env: &[(&str, String)]) -> Value {
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        command.arg(call).arg(args.to_string()).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output(),
    )
    .await
    .expect("the SDK runner finishes within 60 s")
    .expect("the SDK runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{call} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{call} printed {stdout:?}: {e}"))
}

/// A request to Pusher's HTTP API signed by hand (what the SDKs do), for the refusals the SDKs
/// cannot be made to send: stale timestamps, bad signatures, a wrong `body_md5`. `timestamp`
/// is Unix seconds.
pub fn signed_url(
    base: &str,
    credential: &Credential,
    method: &str,
    path: &str,
    body: &[u8],
    timestamp: i64,
    extra: &[(&str, &str)],
) -> String {
    use aviary_core::pusher::signature::{ApiRequest, body_md5, sign};
    let mut query: Vec<(String, String)> = vec![
        ("auth_key".into(), credential.key.clone()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        query.push(("body_md5".into(), body_md5(body)));
    }
    query.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let request = ApiRequest { method, path, query: &query, body };
    let signature = sign(&credential.secret, &request.string_to_sign().expect("no duplicate parameters"));
    query.push(("auth_signature".into(), signature));
    let encoded: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
    format!("{base}{path}?{}", encoded.join("&"))
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
