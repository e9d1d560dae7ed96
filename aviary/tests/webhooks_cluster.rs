//! Webhooks across a real cluster: a control plane and three `aviary data-plane` processes on
//! Redis, clients on every node, a real HTTP receiver started by the test. Checks that
//! occupancy and membership events are exactly one per cluster-wide transition under
//! interleaved joins and leaves, and that a node killed with SIGKILL has its members removed and
//! its channels vacated, and loses none of the events it had accepted.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aviary_data_plane::webhooks::body::aviary_signature;
use serde_json::{Value, json};

use common::{Database, Proc, Provisioned, Ws, connect, provision, request, send};

const REDIS: &str = "redis://127.0.0.1:6379";
const OPERATOR: &str = "avo_webhook_cluster_operator_token_0123456789";
const NODE_TOKEN: &str = "avn_webhook_cluster_node_token_0123456789";
const PRESENCE_TTL_S: u64 = 3;
const LEASE_TTL_S: u64 = 2;
const RETRY_WINDOW_S: u64 = 60;

/// What the receiver got (events of successful deliveries, in arrival order), and its switch.
#[derive(Clone, Default)]
struct Receiver {
    url: String,
    events: Arc<std::sync::Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts a receiver on 127.0.0.1:0 checking every delivery's `aviary-signature` with `secret`
/// (set once the endpoint exists); answers 500 while `failing`.
async fn receiver(secret: Arc<std::sync::OnceLock<String>>) -> Receiver {
    let rx = Receiver::default();
    let (events, failing, failed) = (rx.events.clone(), rx.failing.clone(), rx.failed.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (events, failing, failed, secret) = (events.clone(), failing.clone(), failed.clone(), secret.clone());
            async move {
                if failing.load(Ordering::SeqCst) {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let header = headers.get("aviary-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
                let t: i64 =
                    header.strip_prefix("t=").and_then(|s| s.split(',').next()).unwrap_or("0").parse().unwrap_or(0);
                let secret = secret.get().expect("the endpoint exists before events");
                assert_eq!(header, aviary_signature(secret, t, &body), "every delivery is signed");
                let body: Value = serde_json::from_slice(&body).unwrap();
                events.lock().unwrap().extend(body["events"].as_array().cloned().unwrap_or_default());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    Receiver { url: format!("http://{addr}/hook"), ..rx }
}

impl Receiver {
    /// Received events with duplicates (same id, at-least-once) removed, in arrival order.
    fn unique(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
            .cloned()
            .collect()
    }

    async fn until(&self, what: &str, within: Duration, done: impl Fn(&[Value]) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.unique();
            if done(&got) {
                return started.elapsed();
            }
            assert!(started.elapsed() < within, "timed out waiting for {what}; got {got:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Cluster {
    _db: Database,
    _cp: Proc,
    nodes: Vec<Proc>,
    prefix: String,
    app_id: String,
    api_key: String,
    admin: String,
    webhook_id: String,
    cp_url: String,
    rx: Receiver,
}

impl Cluster {
    async fn start() -> Cluster {
        let db = Database::create().await;
        let credentials_key = "5e".repeat(32);
        let prefix = format!("wh{}", uuid::Uuid::new_v4().simple());
        let cp = Proc::spawn(
            &[
                "control-plane",
                "--database-url",
                &db.url(),
                "--listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--operator-token",
                OPERATOR,
                "--node-token",
                NODE_TOKEN,
                "--credentials-key",
                &credentials_key,
                "--webhook-allow-private-targets",
                "--redis-url",
                REDIS,
                "--redis-prefix",
                &prefix,
            ],
            &[],
        );
        let grpc = cp.banner_value("grpc on").expect("the control plane prints its gRPC address");
        let http = reqwest::Client::new();
        let Provisioned { admin_key: admin, app_id, api_key, .. } =
            provision(&http, &cp, OPERATOR, json!({"name": "hooks"}), json!({"name": "app"})).await;

        let secret = Arc::new(std::sync::OnceLock::new());
        let rx = receiver(secret.clone()).await;
        let events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "message_published"];
        let (status, hook) = send(
            http.post(cp.url(&format!("/v1/apps/{app_id}/webhooks")))
                .bearer_auth(&admin)
                .json(&json!({"url": rx.url, "events": events, "format": "aviary"})),
        )
        .await;
        assert_eq!(status, 201, "{hook}");
        secret.set(hook["secret"].as_str().unwrap().to_owned()).unwrap();
        let webhook_id = hook["id"].as_str().unwrap().to_owned();
        let nodes = (0..3)
            .map(|i| {
                let cache = std::env::temp_dir().join(format!("aviary-node-cache-{prefix}-{i}"));
                Proc::spawn(
                    &[
                        "data-plane",
                        "--control-plane",
                        &grpc,
                        "--node-token",
                        NODE_TOKEN,
                        "--node-id",
                        &format!("node-{i}"),
                        "--listen",
                        "127.0.0.1:0",
                        "--redis-url",
                        REDIS,
                        "--redis-prefix",
                        &prefix,
                        "--cache-dir",
                        cache.to_str().unwrap(),
                        "--heartbeat-s",
                        "60",
                        "--presence-ttl-s",
                        &PRESENCE_TTL_S.to_string(),
                        "--webhook-allow-private-targets",
                        "--webhook-lease-ttl-s",
                        &LEASE_TTL_S.to_string(),
                        "--webhook-retry-window-s",
                        &RETRY_WINDOW_S.to_string(),
                    ],
                    &[],
                )
            })
            .collect();
        Cluster { _db: db, cp_url: cp.url(""), _cp: cp, nodes, prefix, app_id, api_key, admin, webhook_id, rx }
    }

    async fn client(&self, node: usize, client_id: &str) -> Ws {
        let (status, minted) = send(
            reqwest::Client::new()
                .post(format!("{}/v1/apps/{}/tokens", self.cp_url, self.app_id))
                .bearer_auth(&self.api_key)
                .json(&json!({"client_id": client_id, "ttl_s": 600})),
        )
        .await;
        assert_eq!(status, 200, "{minted}");
        connect(&self.nodes[node].ws_url(), minted["token"].as_str().unwrap()).await
    }

    /// Subscribes `ws` to `channel` and enters its presence.
    async fn join(ws: &mut Ws, channel: &str) {
        let ok = request(ws, 1, json!({"type": "subscribe", "channel": channel})).await;
        assert_eq!(ok["type"], "ok", "{ok}");
        let ok = request(ws, 2, json!({"type": "presence.enter", "channel": channel})).await;
        assert_eq!(ok["type"], "ok", "{ok}");
    }

    /// The node holding the app's delivery lease, from Redis.
    fn lease_holder(&self) -> Option<usize> {
        let key = format!("{}:wk:{{w|{}}}", self.prefix, self.app_id);
        let out = std::process::Command::new("redis-cli").args(["-u", REDIS, "GET", &key]).output().ok()?;
        let holder = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        holder.strip_prefix("node-").and_then(|i| i.parse().ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for i in 0..self.nodes.len() {
            let _ =
                std::fs::remove_dir_all(std::env::temp_dir().join(format!("aviary-node-cache-{}-{i}", self.prefix)));
        }
    }
}

/// Per key, the event names in arrival order.
fn sequences(events: &[Value], key: impl Fn(&Value) -> Option<String>) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in events {
        if let Some(k) = key(e) {
            out.entry(k).or_default().push(e["name"].as_str().unwrap().to_owned());
        }
    }
    out
}

/// `up, down, up, down, ...` ending with `down`.
fn alternates(seq: &[String], up: &str, down: &str) -> bool {
    !seq.is_empty() && seq.len().is_multiple_of(2) && seq.chunks(2).all(|p| p[0] == up && p[1] == down)
}

fn occupancy(events: &[Value]) -> HashMap<String, Vec<String>> {
    sequences(events, |e| {
        matches!(e["name"].as_str(), Some("channel_occupied" | "channel_vacated"))
            .then(|| e["channel"].as_str().unwrap().to_owned())
    })
}

fn membership(events: &[Value]) -> HashMap<String, Vec<String>> {
    sequences(events, |e| {
        matches!(e["name"].as_str(), Some("member_added" | "member_removed"))
            .then(|| format!("{}/{}", e["channel"].as_str().unwrap(), e["user_id"].as_str().unwrap()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_joins_and_leaves_on_three_nodes_give_one_event_per_transition() {
    let cluster = Cluster::start().await;
    let channels = ["room:a", "room:b", "room:c"];
    let users = ["ann", "ben", "cat", "dan"];
    // Two rounds; in each, every user joins every channel from two nodes (a user in two tabs),
    // in an order that interleaves nodes, channels and users; then all leave in another order.
    for round in 0..2 {
        let mut open: Vec<Ws> = Vec::new();
        for (i, (channel, user)) in channels.iter().flat_map(|c| users.iter().map(move |u| (c, u))).enumerate() {
            for tab in 0..2 {
                let mut ws = cluster.client((i + tab + round) % 3, user).await;
                Cluster::join(&mut ws, channel).await;
                open.push(ws);
            }
        }
        // Leave: odd positions first, then even ones backwards.
        let (odd, mut even): (Vec<_>, Vec<_>) = open.into_iter().enumerate().partition(|(i, _)| i % 2 == 1);
        even.reverse();
        for (_, mut ws) in odd.into_iter().chain(even) {
            let _ = futures::SinkExt::close(&mut ws).await;
        }
    }
    let waited = cluster
        .rx
        .until("every channel vacated and every member removed", Duration::from_secs(60), |got| {
            let occ = occupancy(got);
            let mem = membership(got);
            occ.len() == channels.len()
                && occ.values().all(|s| s.last().map(String::as_str) == Some("channel_vacated"))
                && mem.len() == channels.len() * users.len()
                && mem.values().all(|s| s.last().map(String::as_str) == Some("member_removed"))
        })
        .await;
    // Anything late would show up now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = cluster.rx.unique();
    for (channel, seq) in occupancy(&got) {
        assert!(alternates(&seq, "channel_occupied", "channel_vacated"), "{channel}: {seq:?}");
    }
    for (member, seq) in membership(&got) {
        assert!(alternates(&seq, "member_added", "member_removed"), "{member}: {seq:?}");
    }
    eprintln!("all transitions delivered {waited:?} after the last leave; {} events", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_its_members_and_channels_and_no_accepted_event() {
    let mut cluster = Cluster::start().await;
    // Find who delivers: publish until some node holds the lease (they race for it at start).
    let http = reqwest::Client::new();
    let publish = |node: usize, data: Value| {
        let url = cluster.nodes[node].url(&format!("/v1/apps/{}/channels/room:warm/messages", cluster.app_id));
        let req = http.post(url).bearer_auth(&cluster.api_key).json(&json!({"data": data}));
        async move {
            let (status, body) = send(req).await;
            assert_eq!(status, 201, "{body}");
        }
    };
    publish(0, json!("warm-up")).await;
    cluster.rx.until("the warm-up message", Duration::from_secs(30), |got| !got.is_empty()).await;
    let doomed_node = cluster.lease_holder().expect("a node holds the delivery lease");
    let other = (doomed_node + 1) % 3;

    // The receiver fails from now on, so what the doomed node reads stays unacknowledged.
    cluster.rx.failing.store(true, Ordering::SeqCst);
    let mut doomed = cluster.client(doomed_node, "doomed").await;
    Cluster::join(&mut doomed, "room:k").await;
    let mut survivor = cluster.client(other, "survivor").await;
    Cluster::join(&mut survivor, "room:s").await;
    for i in 0..10 {
        publish(other, json!(i)).await;
    }
    // Let the doomed node read (and fail to deliver) what is queued.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.rx.failed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the lease holder tried to deliver");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[doomed_node].kill(); // SIGKILL
    let killed_at = Instant::now();
    cluster.rx.failing.store(false, Ordering::SeqCst);

    let within = Duration::from_secs(PRESENCE_TTL_S + LEASE_TTL_S + RETRY_WINDOW_S);
    cluster
        .rx
        .until("the dead node's member_removed and channel_vacated, and every earlier event", within, |got| {
            let names = |n: &str, ch: &str| got.iter().filter(|e| e["name"] == n && e["channel"] == ch).count();
            let messages =
                got.iter().filter(|e| e["name"] == "message_published" && e["channel"] == "room:warm").count();
            names("channel_occupied", "room:k") == 1
                && names("member_added", "room:k") == 1
                && names("member_removed", "room:k") == 1
                && names("channel_vacated", "room:k") == 1
                && names("channel_occupied", "room:s") == 1
                && messages == 11
        })
        .await;
    let took = killed_at.elapsed();
    let got = cluster.rx.unique();
    let removed = got.iter().find(|e| e["name"] == "member_removed").unwrap();
    assert_eq!(removed["user_id"], "doomed");
    assert!(
        !got.iter().any(|e| e["channel"] == "room:s" && e["name"] != "channel_occupied" && e["name"] != "member_added"),
        "the survivor's channel stays occupied: {got:#?}"
    );
    eprintln!("a SIGKILLed node's member_removed and channel_vacated arrived {took:?} after the kill");
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_sends_test_events_and_lists_every_nodes_attempts() {
    let cluster = Cluster::start().await;
    let http = reqwest::Client::new();
    let hook = format!("{}/v1/apps/{}/webhooks/{}", cluster.cp_url, cluster.app_id, cluster.webhook_id);
    // A node delivers a message (whichever holds the lease) ...
    let url = cluster.nodes[1].url(&format!("/v1/apps/{}/channels/room:t/messages", cluster.app_id));
    let (status, body) = send(http.post(url).bearer_auth(&cluster.api_key).json(&json!({"data": "hello"}))).await;
    assert_eq!(status, 201, "{body}");
    cluster.rx.until("the message", Duration::from_secs(30), |got| got.iter().any(|e| e["data"] == "hello")).await;
    // ... and the control plane sends a test event, signed like a delivery (the receiver checks).
    let (status, attempt) = send(http.post(format!("{hook}/test")).bearer_auth(&cluster.admin)).await;
    assert_eq!(status, 200, "{attempt}");
    assert_eq!(attempt["status"], 200, "{attempt}");
    assert_eq!(attempt["test"], true);
    assert!(attempt["error"].is_null(), "{attempt}");
    let test_id = attempt["events"][0]["id"].as_str().unwrap().to_owned();
    let got = cluster.rx.unique();
    let test = got.iter().find(|e| e["id"] == test_id.as_str()).expect("the receiver got the test event");
    assert_eq!(test["name"], "test");

    // Deliveries: the node's attempt and the control plane's test, newest first, read from Redis.
    let (status, list) = send(http.get(format!("{hook}/deliveries")).bearer_auth(&cluster.admin)).await;
    assert_eq!(status, 200, "{list}");
    let attempts = list["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["events"][0]["id"], test_id.as_str(), "newest first: {list}");
    let delivered = attempts
        .iter()
        .find(|a| {
            a["test"] == false && a["events"].as_array().unwrap().iter().any(|e| e["name"] == "message_published")
        })
        .unwrap_or_else(|| panic!("a node's attempt is listed: {list}"));
    assert_eq!(delivered["status"], 200);
    assert!(delivered["latency_ms"].is_u64() && delivered["time_ms"].as_i64().unwrap() > 0);

    // A failing receiver: the test answers 200 with the failure; unknown endpoints are 404.
    cluster.rx.failing.store(true, Ordering::SeqCst);
    let (status, failed) = send(http.post(format!("{hook}/test")).bearer_auth(&cluster.admin)).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["status"], 500);
    assert!(failed["error"].as_str().unwrap().contains("500"), "{failed}");
    let missing = format!("{}/v1/apps/{}/webhooks/whk_nope", cluster.cp_url, cluster.app_id);
    let (status, problem) = send(http.post(format!("{missing}/test")).bearer_auth(&cluster.admin)).await;
    assert_eq!(status, 404, "{problem}");
    let (status, problem) = send(http.get(format!("{missing}/deliveries")).bearer_auth(&cluster.admin)).await;
    assert_eq!(status, 404, "{problem}");
}
