//! The shipped routing, exercised: `infra/local-cluster/start.sh` starts a control plane on
//! Postgres, three data-plane nodes on Redis and nginx (Debian's package) with
//! `infra/nginx.conf`, on free loopback ports with the test's own database and Redis prefix.
//! Every operation of `openapi/aviary.json` is then driven through nginx and must get its
//! documented success status: an operation routed to the plane that does not serve it answers
//! 404 (unknown route) or 405 instead, so a routing rule that drifts from the API fails here.
//! `infra/nginx.docker.conf` gets the same treatment, and a WebSocket and an SSE client receive
//! a publication through nginx.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use common::{Database, WAIT, connect, next_of_type, send};

const OPERATOR: &str = "avo_nginx_test_operator_token_0123456789";
const NODE_TOKEN: &str = "avn_nginx_test_node_token_0123456789";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn require_nginx() {
    let found = Command::new("nginx").arg("-v").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "nginx is not installed: `apt-get install -y nginx` (scripts/test installs it when missing)");
}

/// A cluster started by `infra/local-cluster/start.sh`, stopped by `stop.sh` on drop (and by
/// the script's own watcher if this test process dies first).
struct LocalCluster {
    dir: PathBuf,
    endpoints: BTreeMap<String, String>,
    _db: Database,
}

impl LocalCluster {
    async fn start() -> LocalCluster {
        require_nginx();
        let db = Database::create().await;
        let dir = std::env::temp_dir().join(format!("aviary-nginx-test-{}", uuid::Uuid::new_v4().simple()));
        let lb_port = free_port();
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let out = Command::new(repo_root().join("infra/local-cluster/start.sh"))
            .env("AVIARY_CLUSTER_DIR", &dir)
            .env("AVIARY_BIN", env!("CARGO_BIN_EXE_aviary"))
            .env("AVIARY_CLUSTER_DB", &db.name)
            .env("AVIARY_DATABASE_URL", db.url())
            .env("AVIARY_CLUSTER_LB_PORT", lb_port.to_string())
            .env("AVIARY_CLUSTER_CP_PORT", "0")
            .env("AVIARY_CLUSTER_GRPC_PORT", "0")
            .env("AVIARY_CLUSTER_NODE_PORTS", "0 0 0")
            .env("AVIARY_REDIS_PREFIX", &prefix)
            .env("AVIARY_CLUSTER_OWNER_PID", std::process::id().to_string())
            .env("AVIARY_OPERATOR_TOKEN", OPERATOR)
            .env("AVIARY_NODE_TOKEN", NODE_TOKEN)
            .env("AVIARY_LOG", "warn")
            .output()
            .expect("start.sh runs");
        let mut cluster = LocalCluster { endpoints: BTreeMap::new(), dir, _db: db };
        assert!(
            out.status.success(),
            "start.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let endpoints = std::fs::read_to_string(cluster.dir.join("endpoints")).expect("start.sh wrote its endpoints");
        cluster.endpoints =
            endpoints.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        cluster
    }

    fn endpoint(&self, name: &str) -> &str {
        self.endpoints.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", self.endpoints))
    }

    fn nodes(&self) -> Vec<String> {
        self.endpoint("data_plane").split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("infra/local-cluster/stop.sh"))
            .env("AVIARY_CLUSTER_DIR", &self.dir)
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A second nginx running `infra/nginx.docker.conf` against the same processes: the Docker
/// service names and port become the local addresses; main-context paths go to a temp dir.
struct DockerConfNginx {
    dir: PathBuf,
    url: String,
}

impl DockerConfNginx {
    fn start(cluster: &LocalCluster) -> DockerConfNginx {
        let dir = std::env::temp_dir().join(format!("aviary-nginx-docker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let conf = std::fs::read_to_string(repo_root().join("infra/nginx.docker.conf")).unwrap();
        let nodes: String = cluster.nodes().iter().map(|a| format!("server {a}; ")).collect();
        let cp = cluster.endpoint("control_plane").trim_start_matches("http://").to_owned();
        let rendered = conf
            .replace("server data-plane:8080;", &nodes)
            .replace("control-plane:8070", &cp)
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
        assert_ne!(rendered, conf, "nginx.docker.conf no longer names data-plane:8080 / control-plane:8070 / port 80");
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, rendered).unwrap();
        let d = dir.display();
        let globals = format!("pid {d}/nginx.pid; error_log {d}/error.log warn;");
        let temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("{t}_temp_path {d}/{t};"))
            .collect::<String>();
        // Temp paths belong to `http`: prepend them to the rendered file's http block.
        let with_temp = std::fs::read_to_string(&conf_path).unwrap().replacen("http {", &format!("http {{ {temp}"), 1);
        std::fs::write(&conf_path, with_temp).unwrap();
        let status = Command::new("nginx")
            .args(["-e", &format!("{d}/error.log"), "-c", conf_path.to_str().unwrap(), "-g", &globals])
            .status()
            .expect("nginx runs");
        assert!(
            status.success(),
            "nginx refused nginx.docker.conf: {:?}",
            std::fs::read_to_string(dir.join("error.log"))
        );
        DockerConfNginx { url: format!("http://127.0.0.1:{port}"), dir }
    }
}

impl Drop for DockerConfNginx {
    fn drop(&mut self) {
        let conf = self.dir.join("nginx.conf");
        let d = self.dir.display();
        let _ = Command::new("nginx")
            .args(["-e", &format!("{d}/error.log"), "-c", conf.to_str().unwrap()])
            .args(["-g", &format!("pid {d}/nginx.pid; error_log {d}/error.log warn;"), "-s", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One operation of the OpenAPI document.
#[derive(Debug, Clone)]
struct Operation {
    method: String,
    path: String,
    security: Option<String>,
    body_schema: Option<String>,
    success: u16,
}

impl Operation {
    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

/// Every operation of the committed document (which `aviary/tests/dev.rs` keeps equal to the
/// served one), with its first security scheme, body schema and documented 2xx status.
fn documented_operations() -> Vec<Operation> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("openapi/aviary.json")).unwrap()).unwrap();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let successes: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .filter_map(|s| s.parse().ok())
                .filter(|s| (200..300).contains(s))
                .collect();
            assert_eq!(successes.len(), 1, "{method} {path} documents one success status: {successes:?}");
            ops.push(Operation {
                method: method.clone(),
                path: path.clone(),
                security: op["security"]
                    .as_array()
                    .and_then(|s| s.first())
                    .and_then(|s| s.as_object())
                    .and_then(|s| s.keys().next().cloned()),
                body_schema: op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                    .map(|r| r.rsplit('/').next().unwrap().to_owned()),
                success: successes[0],
            });
        }
    }
    ops
}

/// What the operations act on: a tenant, its admin key, an app, an API key that may do
/// anything, a spare admin key, API key and Pusher credential to revoke, and a webhook endpoint.
#[derive(Debug, Clone)]
struct Fixture {
    tenant_id: String,
    admin_key: String,
    app_id: String,
    api_key: String,
    spare_admin_key_id: String,
    spare_api_key_id: String,
    spare_pusher_key: String,
    webhook_id: String,
}

impl Fixture {
    /// Made directly on the control plane, so a routing fault shows up in the operation under
    /// test, not here.
    async fn create(http: &reqwest::Client, cp: &str) -> Fixture {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        let (status, tenant) =
            send(http.post(format!("{cp}/v1/tenants")).bearer_auth(OPERATOR).json(&json!({"name": name}))).await;
        assert_eq!(status, 201, "{tenant}");
        let tenant_id = tenant["tenant"]["id"].as_str().unwrap().to_owned();
        let admin_key = tenant["admin_key"]["secret"].as_str().unwrap().to_owned();
        let (status, spare) =
            send(http.post(format!("{cp}/v1/tenants/{tenant_id}/admin-keys")).bearer_auth(OPERATOR)).await;
        assert_eq!(status, 201, "{spare}");
        let (status, app) = send(
            http.post(format!("{cp}/v1/tenants/{tenant_id}/apps"))
                .bearer_auth(&admin_key)
                .json(&json!({"name": "app", "namespaces": [{"name": "", "history_size": 100, "presence": true}]})),
        )
        .await;
        assert_eq!(status, 201, "{app}");
        let app_id = app["id"].as_str().unwrap().to_owned();
        let mut keys = Vec::new();
        for name in ["backend", "spare"] {
            let (status, key) =
                send(http.post(format!("{cp}/v1/apps/{app_id}/keys")).bearer_auth(&admin_key).json(
                    &json!({"name": name, "capabilities": {"*": ["subscribe", "publish", "presence", "history"]}}),
                ))
                .await;
            assert_eq!(status, 201, "{key}");
            keys.push(key);
        }
        let (status, pusher) = send(
            http.post(format!("{cp}/v1/apps/{app_id}/pusher-credentials")).bearer_auth(&admin_key).json(&json!({})),
        )
        .await;
        assert_eq!(status, 201, "{pusher}");
        let (status, webhook) = send(
            http.post(format!("{cp}/v1/apps/{app_id}/webhooks"))
                .bearer_auth(&admin_key)
                .json(&body_for("CreateWebhook")),
        )
        .await;
        assert_eq!(status, 201, "{webhook}");
        Fixture {
            webhook_id: webhook["id"].as_str().unwrap().to_owned(),
            spare_pusher_key: pusher["key"].as_str().unwrap().to_owned(),
            tenant_id,
            admin_key,
            app_id,
            api_key: keys[0]["secret"].as_str().unwrap().to_owned(),
            spare_admin_key_id: spare["key_id"].as_str().unwrap().to_owned(),
            spare_api_key_id: keys[1]["key"]["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Waits until every node has the fixture's app (config streams within milliseconds).
    async fn wait_on_nodes(&self, http: &reqwest::Client, nodes: &[String]) {
        let deadline = Instant::now() + WAIT;
        for node in nodes {
            loop {
                let res = http
                    .get(format!("http://{node}/v1/apps/{}/channels", self.app_id))
                    .bearer_auth(&self.api_key)
                    .send()
                    .await
                    .unwrap();
                if res.status() == 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "node {node} never received app {}", self.app_id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    fn credential(&self, scheme: &str) -> &str {
        match scheme {
            "operator" => OPERATOR,
            "tenant_admin" => &self.admin_key,
            "api_key" => &self.api_key,
            other => panic!("no credential for security scheme {other}: add it to Fixture::credential"),
        }
    }

    fn path(&self, template: &str) -> String {
        let key_id = if template.contains("/admin-keys/") { &self.spare_admin_key_id } else { &self.spare_api_key_id };
        let mut path = template.to_owned();
        for (param, value) in [
            ("{tenant_id}", self.tenant_id.as_str()),
            ("{app_id}", &self.app_id),
            ("{key_id}", key_id),
            ("{client_id}", "alice"),
            ("{key}", &self.spare_pusher_key),
            ("{webhook_id}", &self.webhook_id),
            ("{channel}", "chat:lobby"),
        ] {
            path = path.replace(param, value);
        }
        assert!(!path.contains('{'), "no value for a parameter of {template}: add it to Fixture::path");
        path
    }
}

/// A valid body for each request schema of the document (names are unique: the operations run
/// once per nginx config).
fn body_for(schema: &str) -> Value {
    let unique = || format!("n-{}", uuid::Uuid::new_v4().simple());
    match schema {
        "CreateTenant" => json!({"name": unique()}),
        "UpdateTenant" => json!({"name": unique()}),
        "CreateApp" => json!({"name": unique()}),
        "UpdateApp" => json!({"name": unique()}),
        "CreateApiKey" => json!({"name": unique(), "capabilities": {"chat:*": ["publish"]}}),
        "TokenRequest" => json!({"client_id": "alice", "ttl_s": 60}),
        "PublishBody" => json!({"data": {"text": "hello"}}),
        "CreatePusherCredential" => json!({"client_events": true}),
        "CreateWebhook" => {
            json!({"url": "https://hooks.example.com/aviary", "events": ["channel_occupied"], "format": "aviary"})
        }
        "UpdateWebhook" => json!({"events": ["channel_vacated"]}),
        "BatchBody" => json!({"messages": [{"channel": "chat:lobby", "data": {"text": "batched"}}]}),
        other => panic!("no request body for schema {other}: add one to body_for"),
    }
}

/// Drives every documented operation through `base` and returns the operations that did not
/// get their documented success status, with what they got instead.
async fn drive_every_operation(base: &str, cluster: &LocalCluster, shared: &Fixture) -> Vec<String> {
    let http = reqwest::Client::new();
    let cp = cluster.endpoint("control_plane");
    let mut failures = Vec::new();
    for op in documented_operations() {
        // A destructive operation gets a fixture of its own, so order does not matter.
        let fixture = if op.method == "delete" { Fixture::create(&http, cp).await } else { shared.clone() };
        let method = reqwest::Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let mut req = http.request(method, format!("{base}{}", fixture.path(&op.path)));
        if let Some(scheme) = &op.security {
            req = req.bearer_auth(fixture.credential(scheme));
        }
        if let Some(schema) = &op.body_schema {
            req = req.json(&body_for(schema));
        }
        let res = req.send().await.expect("nginx answers");
        let status = res.status().as_u16();
        if status != op.success {
            let body = res.text().await.unwrap_or_default();
            failures.push(format!("{}: expected {}, got {status} {body}", op.name(), op.success));
        }
    }
    failures
}

#[tokio::test]
async fn every_documented_operation_reaches_its_plane_through_the_shipped_nginx_configs() {
    let started = Instant::now();
    let cluster = LocalCluster::start().await;
    let http = reqwest::Client::new();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 3, "{:?}", cluster.endpoints);
    let fixture = Fixture::create(&http, cluster.endpoint("control_plane")).await;
    fixture.wait_on_nodes(&http, &nodes).await;

    // The operations each plane serves, as its own document says, add up to the published one.
    let served: BTreeSet<String> = [aviary_control_plane::api::openapi(), aviary_data_plane::openapi()]
        .iter()
        .flat_map(|doc| {
            doc.paths.paths.iter().flat_map(|(path, item)| {
                serde_json::to_value(item)
                    .unwrap()
                    .as_object()
                    .unwrap()
                    .keys()
                    .filter(|m| ["get", "post", "put", "patch", "delete"].contains(&m.as_str()))
                    .map(|m| format!("{} {path}", m.to_uppercase()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let documented: BTreeSet<String> = documented_operations().iter().map(Operation::name).collect();
    assert_eq!(served, documented, "openapi/aviary.json is not the union of the two planes' documents");

    let lb = cluster.endpoint("load_balancer").to_owned();
    let failures = drive_every_operation(&lb, &cluster, &fixture).await;
    assert!(failures.is_empty(), "through infra/nginx.conf:\n{}", failures.join("\n"));

    let docker = DockerConfNginx::start(&cluster);
    let failures = drive_every_operation(&docker.url, &cluster, &fixture).await;
    assert!(failures.is_empty(), "through infra/nginx.docker.conf:\n{}", failures.join("\n"));

    // Real-time clients through nginx: a WebSocket and an SSE stream receive a REST publication.
    let (status, minted) = send(
        http.post(format!("{lb}/v1/apps/{}/tokens", fixture.app_id))
            .bearer_auth(&fixture.api_key)
            .json(&json!({"client_id": "bob", "ttl_s": 600})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let mut ws = connect(&format!("{}/v1/connect", lb.replace("http://", "ws://")), token).await;
    common::send_frame(&mut ws, json!({"type": "subscribe", "channel": "room:live", "id": 1})).await;
    common::next_matching(&mut ws, |f| f["type"] == "ok" && f["id"] == 1).await;
    let sse = http
        .get(format!("{lb}/v1/sse?channels=room:live"))
        .bearer_auth(token)
        .send()
        .await
        .expect("SSE stream opens through nginx");
    assert_eq!(sse.status(), 200);
    let mut sse = sse.bytes_stream();
    let mut seen = String::new();
    read_sse_until(&mut sse, &mut seen, "event: subscribed").await;
    let (status, published) = send(
        http.post(format!("{lb}/v1/apps/{}/channels/room:live/messages", fixture.app_id))
            .bearer_auth(&fixture.api_key)
            .json(&json!({"data": {"text": "through nginx"}})),
    )
    .await;
    assert_eq!(status, 201, "{published}");
    let message = next_of_type(&mut ws, "message").await;
    assert_eq!(message["data"]["text"], "through nginx", "{message}");
    read_sse_until(&mut sse, &mut seen, "through nginx").await;

    // Pusher's HTTP API goes to the nodes through both configs: an unsigned request is refused
    // there in Pusher's words (the control plane would answer a problem document).
    for base in [&lb, &docker.url] {
        for request in [
            http.get(format!("{base}/apps/1234567/channels")),
            http.post(format!("{base}/apps/1234567/events")),
            // The PyPI SDK's terminate path has no app id.
            http.post(format!("{base}/users/alice/terminate_connections")),
        ] {
            let answer = request.send().await.unwrap();
            let (status, url) = (answer.status(), answer.url().clone());
            let body = answer.text().await.unwrap();
            assert_eq!((status.as_u16(), body.as_str()), (401, "missing auth_key"), "{url}");
        }
    }

    // Pusher's WebSocket goes to the nodes through both configs: the node answers in Pusher's
    // frames (`connection_established`, or 4001 once the driven operations revoked the key).
    for base in [&lb, &docker.url] {
        let url = format!("{}/app/{}?protocol=7", base.replace("http://", "ws://"), fixture.spare_pusher_key);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("Pusher WebSocket through nginx");
        let frame = common::next_json(&mut ws).await;
        let event = frame["event"].as_str().unwrap_or_default();
        assert!(
            event == "pusher:connection_established" || (event == "pusher:error" && frame["data"]["code"] == 4001),
            "through {base}: {frame}"
        );
    }

    // Two clients behind nginx (from 127.0.0.2 and 127.0.0.3; start.sh trusts nginx at
    // 127.0.0.1 to name them in X-Forwarded-For) have separate budgets: one spending its failed
    // credential checks on either plane is refused, the other still gets its own answer.
    let (guesser, neighbour) = (client_from(2), client_from(3));
    let tenants = format!("{lb}/v1/tenants");
    let refused = until_refused(200, || guesser.get(&tenants).bearer_auth("avo_wrong")).await;
    assert!(refused, "the control plane limited the guessing client behind nginx");
    let answer = neighbour.get(&tenants).bearer_auth("avo_wrong").send().await.unwrap();
    assert_eq!(answer.status(), 401, "the control plane put the neighbour in the guesser's bucket");
    let channels = format!("{lb}/v1/apps/{}/channels", fixture.app_id);
    // Well formed (a malformed key is refused before any check is charged), of no key.
    let guess = format!("avk_{}_{}", "0".repeat(32), "a".repeat(40));
    let refused = until_refused(400, || guesser.get(&channels).bearer_auth(&guess)).await;
    assert!(refused, "a node limited the guessing client behind nginx");
    for _ in 0..nodes.len() {
        let answer = neighbour.get(&channels).bearer_auth(&guess).send().await.unwrap();
        assert_eq!(answer.status(), 401, "a node put the neighbour in the guesser's bucket");
    }

    drop(docker);
    drop(cluster);
    eprintln!("nginx routing test took {:.1} s", started.elapsed().as_secs_f64());
}

/// An HTTP client whose connections leave from 127.0.0.`last`.
fn client_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, last])).build().unwrap()
}

/// Sends `req()` until one is refused with 429, at most `limit` times.
async fn until_refused(limit: usize, req: impl Fn() -> reqwest::RequestBuilder) -> bool {
    for _ in 0..limit {
        if req().send().await.expect("nginx answers").status() == 429 {
            return true;
        }
    }
    false
}

/// Reads the SSE body until `needle` has arrived (within [`WAIT`]).
async fn read_sse_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    seen: &mut String,
    needle: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} on the SSE stream in time; got {seen:?}"))
            .expect("SSE stream open")
            .expect("SSE chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}
