//! TLS without a proxy (`--tls-cert`/`--tls-key`): `https://` and `wss://` against the real
//! binary, certificates swapped under a running process (SIGHUP, file change) without dropping
//! open connections, a data-plane node following its control plane over gRPC with TLS and a CA
//! file, and clear start errors. Certificates are made by each test with the `openssl` commands
//! docs/deploying.md gives an operator.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

use common::{Database, Proc, WAIT, send};

/// A WebSocket over a TLS stream this test opened itself (so it can see the certificate).
type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

const OPERATOR: &str = "avo_tls_test_operator_token_0123456789";
const NODE_TOKEN: &str = "avn_tls_test_node_token_0123456789";

/// A directory with a CA and server certificates it signed, made with the `openssl` CLI.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A fresh CA (`ca.pem`, `ca.key`).
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!("aviary-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let pki = Pki { dir };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Aviary test CA",
        ]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A server key and certificate for `localhost` and 127.0.0.1 signed by the CA, written as
    /// `<name>.key` and `<name>.pem`.
    fn server(&self, name: &str) -> (PathBuf, PathBuf) {
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        std::fs::write(self.path("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "30",
            "-extfile",
            "san.ext",
        ]);
        (self.path(&pem), self.path(&key))
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.pem")).expect("the CA certificate")
    }

    /// A client configuration trusting this CA only.
    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem()) {
            roots.add(cert.expect("a PEM certificate")).expect("the CA is usable");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem()).unwrap())
            .build()
            .unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces `dest` with `src`'s content in one step (what certbot and cert-manager do).
fn install(src: &Path, dest: &Path) {
    let tmp = dest.with_extension("tmp");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dest).unwrap();
}

/// SHA-256 of the first certificate of a PEM file.
fn fingerprint_of_file(pem: &Path) -> String {
    let cert = CertificateDer::pem_file_iter(pem).unwrap().next().unwrap().unwrap();
    hex(&Sha256::digest(cert.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Opens TCP and TLS to `addr`, checking the certificate against the test's CA.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Fingerprint of the certificate a TLS stream was served.
fn peer_fingerprint(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let cert = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].clone();
    hex(&Sha256::digest(cert.as_ref()))
}

/// Completes a TLS handshake with `addr` and returns the fingerprint of the certificate served.
async fn served_fingerprint(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    peer_fingerprint(&tls_connect(addr, config).await)
}

/// Polls new handshakes until the certificate served is `expected`.
async fn await_served(addr: SocketAddr, config: Arc<rustls::ClientConfig>, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let served = served_fingerprint(addr, config.clone()).await;
        if served == expected {
            return;
        }
        assert!(Instant::now() < deadline, "still serving {served}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `wss://` to `addr` and sends Aviary's `connect`; returns the socket and the answer.
async fn open_wss(addr: SocketAddr, config: Arc<rustls::ClientConfig>, token: &str) -> (Wss, Value) {
    let tls = tls_connect(addr, config).await;
    let url = format!("wss://localhost:{}/v1/connect", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("wss connects");
    send_frame(&mut ws, json!({"type": "connect", "token": token})).await;
    let answer = next_json(&mut ws).await;
    (ws, answer)
}

/// Opens `wss://` to `addr` and completes Aviary's `connect`.
async fn connect_wss(addr: SocketAddr, config: Arc<rustls::ClientConfig>, token: &str) -> Wss {
    let (ws, connected) = open_wss(addr, config, token).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    ws
}

async fn send_frame(ws: &mut Wss, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.expect("frame sent");
}

async fn next_json(ws: &mut Wss) -> Value {
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

async fn next_of_type(ws: &mut Wss, kind: &str) -> Value {
    loop {
        let frame = next_json(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

/// Sends a command with `id` and returns its `ok`/`error` reply.
async fn request(ws: &mut Wss, id: u64, mut frame: Value) -> Value {
    frame["id"] = json!(id);
    send_frame(ws, frame).await;
    loop {
        let reply = next_json(ws).await;
        if (reply["type"] == "ok" || reply["type"] == "error") && reply["id"] == id {
            return reply;
        }
    }
}

/// `aviary dev` with TLS, and the demo app it created.
struct Dev {
    proc: Proc,
    data_dir: PathBuf,
    app_id: String,
    api_key: String,
}

impl Dev {
    fn start(cert: &Path, key: &Path, extra: &[&str]) -> Dev {
        let data_dir = std::env::temp_dir().join(format!("aviary-tls-dev-{}", uuid::Uuid::new_v4().simple()));
        let dir = data_dir.to_str().unwrap().to_owned();
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", &dir];
        args.extend_from_slice(extra);
        let proc = Proc::spawn(
            &args,
            &[
                ("AVIARY_OPERATOR_TOKEN", OPERATOR),
                ("AVIARY_TLS_CERT", cert.to_str().unwrap()),
                ("AVIARY_TLS_KEY", key.to_str().unwrap()),
            ],
        );
        assert!(proc.tls, "aviary dev prints an https:// address with TLS");
        Dev {
            app_id: proc.banner_value("app id").expect("the demo app"),
            api_key: proc.banner_value("API key").expect("the demo API key"),
            proc,
            data_dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.proc.addr.port())
    }

    async fn token(&self, http: &reqwest::Client) -> String {
        let (status, minted) = send(
            http.post(self.url(&format!("/v1/apps/{}/tokens", self.app_id)))
                .bearer_auth(&self.api_key)
                .json(&json!({"client_id": "alice", "ttl_s": 600})),
        )
        .await;
        assert_eq!(status, 200, "{minted}");
        minted["token"].as_str().unwrap().to_owned()
    }

    async fn publish(&self, http: &reqwest::Client, channel: &str, data: Value) {
        let (status, body) = send(
            http.post(self.url(&format!("/v1/apps/{}/channels/{channel}/messages", self.app_id)))
                .bearer_auth(&self.api_key)
                .json(&json!({"data": data})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Subscribes `ws` to `channel`.
async fn subscribe(ws: &mut Wss, id: u64, channel: &str) {
    let ok = request(ws, id, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
}

/// Publishes `text` over REST and awaits it on `ws`.
async fn publish_and_receive(dev: &Dev, http: &reqwest::Client, ws: &mut Wss, channel: &str, text: &str) {
    dev.publish(http, channel, json!({"text": text})).await;
    let message = next_of_type(ws, "message").await;
    assert_eq!(message["data"]["text"], text, "{message}");
}

#[tokio::test]
async fn dev_serves_https_rest_and_wss_without_a_proxy() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server");
    let dev = Dev::start(&cert, &key, &[]);
    let http = pki.http_client();

    let health = http.get(dev.url("/healthz")).send().await.expect("https answers");
    assert_eq!(health.status(), 200);
    let token = dev.token(&http).await;
    let mut ws = connect_wss(dev.proc.addr, pki.client_config(), &token).await;
    subscribe(&mut ws, 1, "chat:tls").await;
    publish_and_receive(&dev, &http, &mut ws, "chat:tls", "over wss").await;

    // SSE over https too.
    let sse =
        http.get(dev.url(&format!("/v1/sse?channels=chat:tls&token={token}"))).send().await.expect("SSE over https");
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");

    // The served certificate is the one configured, and plain HTTP on the TLS port gets no answer.
    assert_eq!(served_fingerprint(dev.proc.addr, pki.client_config()).await, fingerprint_of_file(&cert));
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", dev.proc.addr)).send().await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true), "plain HTTP is not served on a TLS port");
}

/// A certificate rotation under way: two certificates of one CA, the first installed as the
/// live files `aviary dev` serves, and a client connected and subscribed over it before anything
/// changes (to show that open connections survive the swap).
struct Rotation {
    dev: Dev,
    before: Wss,
    http: reqwest::Client,
    config: Arc<rustls::ClientConfig>,
    token: String,
    /// The files the process reads: certificate, key.
    live: (PathBuf, PathBuf),
    first: PathBuf,
    /// The certificate and key to rotate to.
    second: (PathBuf, PathBuf),
    /// Holds the certificates' directory until the test ends.
    _pki: Pki,
}

impl Rotation {
    /// Starts `aviary dev` on the first certificate with `--tls-reload-interval-s reload_s` and
    /// subscribes a client to `channel`.
    async fn start(reload_s: &str, channel: &str) -> Rotation {
        let pki = Pki::new();
        let (first, first_key) = pki.server("first");
        let second = pki.server("second");
        let live = (pki.path("live.pem"), pki.path("live.key"));
        install(&first, &live.0);
        install(&first_key, &live.1);
        let dev = Dev::start(&live.0, &live.1, &["--tls-reload-interval-s", reload_s]);
        let http = pki.http_client();
        let config = pki.client_config();
        let token = dev.token(&http).await;
        let mut before = connect_wss(dev.proc.addr, config.clone(), &token).await;
        subscribe(&mut before, 1, channel).await;
        Rotation { dev, before, http, config, token, live, first, second, _pki: pki }
    }

    /// The fingerprint of the certificate a new handshake gets.
    async fn served(&self) -> String {
        served_fingerprint(self.dev.proc.addr, self.config.clone()).await
    }

    /// A second client, connected and subscribed to `channel` after the swap.
    async fn connect_after(&self, channel: &str) -> Wss {
        let mut after = connect_wss(self.dev.proc.addr, self.config.clone(), &self.token).await;
        subscribe(&mut after, 1, channel).await;
        after
    }
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_handshakes_and_keeps_open_connections() {
    // No polling: only SIGHUP reloads, so the swap below is the signal's doing.
    let mut r = Rotation::start("0", "chat:swap").await;
    assert_eq!(r.served().await, fingerprint_of_file(&r.first));

    install(&r.second.0, &r.live.0);
    install(&r.second.1, &r.live.1);
    // Nothing re-reads the files until asked.
    assert_eq!(r.served().await, fingerprint_of_file(&r.first));
    r.dev.proc.signal("-HUP");
    await_served(r.dev.proc.addr, r.config.clone(), &fingerprint_of_file(&r.second.0)).await;

    // The connection opened before the swap is still open and still receiving.
    publish_and_receive(&r.dev, &r.http, &mut r.before, "chat:swap", "after the swap").await;
    let mut after = r.connect_after("chat:swap").await;
    r.dev.publish(&r.http, "chat:swap", json!({"text": "both"})).await;
    for ws in [&mut r.before, &mut after] {
        assert_eq!(next_of_type(ws, "message").await["data"]["text"], "both");
    }
    // The process is alive: SIGHUP is a reload, not the default termination.
    assert_eq!(r.http.get(r.dev.url("/healthz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_changed_certificate_file_is_served_without_a_signal_and_a_broken_one_is_not() {
    let mut r = Rotation::start("1", "chat:watch").await;

    // A certificate whose key is not there yet (a half-done rotation) is not served: every
    // handshake over several polls still completes with the first certificate.
    install(&r.second.0, &r.live.0);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(r.served().await, fingerprint_of_file(&r.first));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and once its key arrives, it is.
    install(&r.second.1, &r.live.1);
    await_served(r.dev.proc.addr, r.config.clone(), &fingerprint_of_file(&r.second.0)).await;
    publish_and_receive(&r.dev, &r.http, &mut r.before, "chat:watch", "still here").await;
    let mut after = r.connect_after("chat:watch").await;
    publish_and_receive(&r.dev, &r.http, &mut after, "chat:watch", "new handshake").await;
}

/// Runs an operator tool (`aviary <args>`) to completion with `envs` and no inherited
/// AVIARY_* variable; returns whether it succeeded, its stdout and its stderr.
fn operator_tool(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aviary"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("AVIARY_")) {
        command.env_remove(key);
    }
    let out = command.args(args).envs(envs.iter().copied()).output().expect("the aviary binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn healthcheck_and_token_speak_https_to_a_process_serving_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server");
    let (other, _) = pki.server("other");
    let dev = Dev::start(&cert, &key, &[]);
    let port = dev.proc.addr.port();
    let listen = format!("0.0.0.0:{port}");
    let (cert, other, ca) = (cert.to_str().unwrap(), other.to_str().unwrap(), pki.path("ca.pem"));
    let ca = ca.to_str().unwrap();

    // The image's HEALTHCHECK (`aviary healthcheck`, no flag) in a container started with TLS:
    // AVIARY_LISTEN and AVIARY_TLS_CERT are the process's own.
    let (ok, _, err) = operator_tool(&["healthcheck"], &[("AVIARY_LISTEN", &listen), ("AVIARY_TLS_CERT", cert)]);
    assert!(ok, "{err}");
    // Exactly that certificate: another one of the same CA is refused.
    let (ok, _, err) = operator_tool(&["healthcheck"], &[("AVIARY_LISTEN", &listen), ("AVIARY_TLS_CERT", other)]);
    assert!(!ok && err.contains("not the one in --tls-cert"), "{err}");
    // Plain http to a TLS port is no answer (the check before it knew TLS).
    let (ok, _, _) = operator_tool(&["healthcheck"], &[("AVIARY_LISTEN", &listen)]);
    assert!(!ok);
    // An explicit https URL is checked by name against --ca (or AVIARY_CA)...
    let url = format!("https://localhost:{port}/readyz");
    let (ok, _, err) = operator_tool(&["healthcheck", "--url", &url, "--ca", ca], &[]);
    assert!(ok, "{err}");
    let (ok, _, err) = operator_tool(&["healthcheck", "--url", &url], &[("AVIARY_CA", ca)]);
    assert!(ok, "{err}");
    // ...and the system's roots do not know the test's CA.
    let (ok, _, err) = operator_tool(&["healthcheck", "--url", &url], &[]);
    assert!(!ok && err.contains("certificate"), "{err}");

    // `aviary token` over https with the CA; the token it prints connects over wss.
    let base = format!("https://localhost:{port}");
    let mint = ["token", "--url", &base, "--app", &dev.app_id, "--client-id", "cli-bob"];
    let (ok, token, err) = operator_tool(&mint, &[("AVIARY_API_KEY", &dev.api_key), ("AVIARY_CA", ca)]);
    assert!(ok, "{err}");
    let mut ws = connect_wss(dev.proc.addr, pki.client_config(), token.trim()).await;
    subscribe(&mut ws, 1, "chat:cli").await;
    let (ok, _, err) = operator_tool(&mint, &[("AVIARY_API_KEY", &dev.api_key)]);
    assert!(!ok && err.contains("cannot reach the control plane"), "{err}");
}

#[tokio::test]
async fn a_node_follows_its_control_plane_over_grpc_tls_with_a_ca_file() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server");
    let (cert, key) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
    let db = Database::create().await;
    let cache = pki.path("node-cache");
    let cp = Proc::spawn(
        &[
            "control-plane",
            "--database-url",
            &db.url(),
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("AVIARY_OPERATOR_TOKEN", OPERATOR), ("AVIARY_NODE_TOKEN", NODE_TOKEN)],
    );
    let grpc = cp.banner_value("grpc on").expect("the control plane prints its gRPC address");
    assert!(grpc.starts_with("https://"), "{grpc}");
    let node = Proc::spawn(
        &[
            "data-plane",
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            &grpc,
            "--control-plane-ca",
            pki.path("ca.pem").to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--usage-interval-s",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
        &[("AVIARY_NODE_TOKEN", NODE_TOKEN)],
    );
    assert!(cp.tls && node.tls);
    let http = pki.http_client();
    let cp_url = |path: &str| format!("https://127.0.0.1:{}{path}", cp.addr.port());
    let node_url = |path: &str| format!("https://127.0.0.1:{}{path}", node.addr.port());

    // Config arrives over the TLS stream: an app created now reaches the node.
    let (status, tenant) =
        send(http.post(cp_url("/v1/tenants")).bearer_auth(OPERATOR).json(&json!({"name": "t"}))).await;
    assert_eq!(status, 201, "{tenant}");
    let tenant_id = tenant["tenant"]["id"].as_str().unwrap().to_owned();
    let admin = tenant["admin_key"]["secret"].as_str().unwrap().to_owned();
    let (status, app) = send(
        http.post(cp_url(&format!("/v1/tenants/{tenant_id}/apps")))
            .bearer_auth(&admin)
            .json(&json!({"name": "a", "namespaces": [{"name": ""}]})),
    )
    .await;
    assert_eq!(status, 201, "{app}");
    let app_id = app["id"].as_str().unwrap().to_owned();
    let (status, api_key) = send(
        http.post(cp_url(&format!("/v1/apps/{app_id}/keys")))
            .bearer_auth(&admin)
            .json(&json!({"name": "k", "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}})),
    )
    .await;
    assert_eq!(status, 201, "{api_key}");
    let api_key = api_key["secret"].as_str().unwrap().to_owned();
    let (status, minted) = send(
        http.post(cp_url(&format!("/v1/apps/{app_id}/tokens")))
            .bearer_auth(&api_key)
            .json(&json!({"client_id": "bob", "ttl_s": 600})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();

    let ready: Value = http.get(node_url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert!(ready.to_string().contains("stream"), "the node's config comes from the live stream: {ready}");
    // The app reaches the node over the stream (polling: it is asynchronous).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ws = loop {
        let (ws, answer) = open_wss(node.addr, pki.client_config(), &token).await;
        if answer["type"] == "connected" {
            break ws;
        }
        assert!(Instant::now() < deadline, "the node never learned the app: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    subscribe(&mut ws, 1, "room").await;
    // REST publish on the node checks the API key with the control plane over gRPC TLS.
    let (status, body) = send(
        http.post(node_url(&format!("/v1/apps/{app_id}/channels/room/messages")))
            .bearer_auth(&api_key)
            .json(&json!({"data": "through TLS"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(next_of_type(&mut ws, "message").await["data"], "through TLS");

    // Usage reports travel over the same link.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, usage) =
            send(http.get(cp_url(&format!("/v1/tenants/{tenant_id}/usage"))).bearer_auth(&admin)).await;
        assert_eq!(status, 200, "{usage}");
        if usage["totals"]["messages_published"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no usage reported: {usage}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `aviary <args>` expecting it to stop at once with an error; returns its stderr.
fn start_error(args: &[&str]) -> String {
    let bin = env!("CARGO_BIN_EXE_aviary");
    let mut child = Command::new(bin)
        .args(args)
        .env("AVIARY_LOG", "warn")
        .env("AVIARY_OPERATOR_TOKEN", OPERATOR)
        .env("AVIARY_NODE_TOKEN", NODE_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "aviary {args:?} should not start");
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("aviary {args:?} started instead of failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_with_a_clear_error() {
    let pki = Pki::new();
    let (cert, key) = pki.server("server");
    let (_, other_key) = pki.server("other");
    let data_dir = pki.path("data");
    let (cert, key, other_key, data_dir) =
        (cert.to_str().unwrap(), key.to_str().unwrap(), other_key.to_str().unwrap(), data_dir.to_str().unwrap());
    let missing = pki.path("missing.pem");
    let missing = missing.to_str().unwrap();
    let dev = |tls: &[&str]| {
        let mut args = vec!["dev", "--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--data-dir", data_dir];
        args.extend_from_slice(tls);
        start_error(&args)
    };

    let err = dev(&["--tls-cert", missing, "--tls-key", key]);
    assert!(err.contains(&format!("reading the TLS certificate {missing} (--tls-cert)")), "{err}");
    assert!(err.contains("No such file"), "{err}");
    let err = dev(&["--tls-cert", cert, "--tls-key", missing]);
    assert!(err.contains(&format!("reading the TLS private key {missing} (--tls-key)")), "{err}");
    let err = dev(&["--tls-cert", cert, "--tls-key", other_key]);
    assert!(err.contains(&format!("the TLS key {other_key} does not fit the certificate {cert}")), "{err}");
    let err = dev(&["--tls-cert", key, "--tls-key", key]);
    assert!(err.contains("no certificate in"), "{err}");
    let err = dev(&["--tls-cert", cert, "--tls-key", cert]);
    assert!(err.contains("no private key in"), "{err}");
    let err = dev(&["--tls-cert", cert]);
    assert!(err.contains("--tls-key"), "{err}");

    // A data-plane node: its own certificate, and the CA it is told to trust.
    let node = |extra: &[&str]| {
        let mut args = vec!["data-plane", "--listen", "127.0.0.1:0", "--cache-dir", data_dir];
        args.extend_from_slice(extra);
        start_error(&args)
    };
    let err = node(&["--control-plane", "https://127.0.0.1:1", "--control-plane-ca", missing]);
    assert!(err.contains(&format!("reading the control plane's CA {missing} (--control-plane-ca)")), "{err}");
    let err = node(&["--control-plane", "http://127.0.0.1:1", "--control-plane-ca", cert]);
    assert!(err.contains("needs an https:// URL"), "{err}");
    let err = node(&["--control-plane", "https://127.0.0.1:1", "--tls-cert", missing, "--tls-key", key]);
    assert!(err.contains("(--tls-cert)"), "{err}");
}
