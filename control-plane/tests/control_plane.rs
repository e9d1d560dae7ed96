//! Control plane tests against real things: the store contract on Postgres (a private schema per
//! test) and SQLite (a fresh file per test), the REST API over real HTTP on 127.0.0.1:0 on both
//! stores, and the gRPC service through a real tonic client.
//!
//! One file on purpose: every test binary links the whole dependency tree, which is slow here.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aviary_control_plane::grpc::{ControlPlaneClient, pb};
use aviary_control_plane::store::{MAX_PAGE, PageRequest, contract};
use aviary_control_plane::{ControlPlaneConfig, ControlPlaneState, RateLimitConfig, Store};
use aviary_core::sealing::SecretBox;
use aviary_core::token::{Jwks, verify};
use aviary_core::{Registry, TokenError};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{TestStore, pg_store, sqlite_store};

const OPERATOR: &str = "operator-secret-for-tests";

// ---------- fixtures ----------

/// A running control plane (REST and gRPC) on loopback ports.
struct Server {
    _store: TestStore,
    state: ControlPlaneState,
    base: String,
    grpc: SocketAddr,
    http: reqwest::Client,
}

async fn start(store: TestStore, tweak: impl FnOnce(&mut ControlPlaneConfig)) -> Server {
    let mut config = ControlPlaneConfig::new(OPERATOR);
    config.rate_limits = RateLimitConfig::unlimited();
    tweak(&mut config);
    let state = ControlPlaneState::new(store.store.clone(), Arc::new(Registry::new()), config).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = aviary_control_plane::api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = grpc_listener.local_addr().unwrap();
    let routes = aviary_control_plane::grpc::grpc_router(state.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc_listener))
            .await
    });
    Server { _store: store, state, base: format!("http://{addr}"), grpc, http: reqwest::Client::new() }
}

/// What a refused request must leave untouched.
#[derive(Debug, PartialEq)]
struct Snapshot {
    tenants: Vec<Value>,
    apps: Vec<Value>,
    keys: Vec<(String, String, Option<String>)>,
}

async fn snapshot(store: &dyn Store) -> Snapshot {
    let tenants = store.list_tenants(&PageRequest::first(MAX_PAGE)).await.unwrap().items;
    let apps = store.all_apps().await.unwrap();
    let mut keys = Vec::new();
    for app in &apps {
        for k in store.list_api_keys(&app.id, &PageRequest::first(MAX_PAGE)).await.unwrap().items {
            keys.push((k.id, k.name, k.revoked_at.map(|t| t.to_rfc3339())));
        }
    }
    Snapshot {
        tenants: tenants.iter().map(|t| serde_json::to_value(t).unwrap()).collect(),
        apps: apps.iter().map(|a| serde_json::to_value(a).unwrap()).collect(),
        keys,
    }
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }

    #[track_caller]
    fn expect(self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "body: {}", self.body);
        self.body
    }

    #[track_caller]
    fn expect_problem(&self, status: StatusCode, slug: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "problem bodies carry the problem media type"
        );
        assert_eq!(self.problem_type(), format!("https://aviary.dev/problems/{slug}"), "body: {}", self.body);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(self.body["status"], status.as_u16());
    }
}

impl Server {
    async fn call(&self, method: reqwest::Method, path: &str, auth: Option<&str>, body: Option<Value>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(auth) = auth {
            req = req.bearer_auth(auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        Self::answer(req.send().await.unwrap()).await
    }

    async fn raw(&self, path: &str, auth: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Answer {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(auth)
            .header("content-type", content_type)
            .body(body);
        Self::answer(req.send().await.unwrap()).await
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Answer { status, headers, body }
    }

    async fn post(&self, path: &str, auth: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, path, Some(auth), Some(body)).await
    }

    /// The app's key list once the first key's `last_used_at` is set: the verifier records a
    /// use in the background (once per cache miss), so the answer to the request that used
    /// the key can come first.
    async fn keys_once_used(&self, app_id: &str, admin: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let keys = self.get(&format!("/v1/apps/{app_id}/keys"), admin).await.expect(StatusCode::OK);
            if keys["items"][0]["last_used_at"].is_string() {
                return keys;
            }
            assert!(std::time::Instant::now() < deadline, "the key's use was never recorded: {keys}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str, auth: &str) -> Answer {
        self.call(reqwest::Method::GET, path, Some(auth), None).await
    }

    /// Creates a tenant, an app and a key with `caps`; returns (tenant_id, admin_key, app_id, api_key).
    async fn tenant_with_key(&self, name: &str, caps: Value) -> (String, String, String, String) {
        let t = self.post("/v1/tenants", OPERATOR, json!({ "name": name })).await.expect(StatusCode::CREATED);
        let tenant_id = t["tenant"]["id"].as_str().unwrap().to_owned();
        let admin = t["admin_key"]["secret"].as_str().unwrap().to_owned();
        let app = self
            .post(&format!("/v1/tenants/{tenant_id}/apps"), &admin, json!({ "name": "web" }))
            .await
            .expect(StatusCode::CREATED);
        let app_id = app["id"].as_str().unwrap().to_owned();
        let key = self
            .post(&format!("/v1/apps/{app_id}/keys"), &admin, json!({ "name": "backend", "capabilities": caps }))
            .await
            .expect(StatusCode::CREATED);
        (tenant_id, admin, app_id, key["secret"].as_str().unwrap().to_owned())
    }

    async fn jwks_registry(&self) -> Registry {
        let jwks: Jwks =
            serde_json::from_value(self.call(reqwest::Method::GET, "/.well-known/jwks.json", None, None).await.body)
                .unwrap();
        let registry = Registry::new();
        registry.set_verifying_keys(jwks.keys.iter().map(|k| k.verifying_key().expect("Ed25519 JWK")));
        registry
    }
}

fn chat_caps() -> Value {
    json!({ "chat:*": ["subscribe", "publish", "presence", "history"], "notifications:user-42": ["subscribe"] })
}

// ---------- store contract, on both stores ----------

macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod store_contract_postgres {
            use super::*;
            $( #[tokio::test] async fn $name() { let s = pg_store().await; contract::$name(&*s.store).await; } )*
        }
        mod store_contract_sqlite {
            use super::*;
            $( #[tokio::test] async fn $name() { let s = sqlite_store().await; contract::$name(&*s.store).await; } )*
        }
    };
}

contract_tests!(
    tenants_round_trip_and_names_are_unique,
    pusher_credentials_share_one_app_id_and_revoke_once,
    webhooks_round_trip_and_stop_at_the_tenant_limit,
    lists_paginate_without_gaps_or_repeats,
    apps_are_unique_per_tenant_and_need_a_tenant,
    deletes_cascade,
    api_key_revocation_is_recorded_once,
    signing_key_rotation_retires_and_purges,
    markers_are_set_once,
    sql_looking_values_are_stored_literally,
    client_revocations_keep_the_latest_cutoff,
    usage_batches_count_once_into_hourly_buckets,
);

// ---------- REST behaviour, on both stores ----------

macro_rules! api_tests {
    ($($name:ident),* $(,)?) => {
        mod api_postgres {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(pg_store().await).await; } )*
        }
        mod api_sqlite {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(sqlite_store().await).await; } )*
        }
    };
}

api_tests!(
    newcomer_flow_mints_a_token_that_verifies_against_the_jwks,
    another_tenants_resources_answer_404,
    forged_expired_and_wrong_kind_credentials_are_refused,
    capability_escalation_on_mint_is_forbidden,
    bad_bodies_are_refused_and_change_nothing,
    sql_looking_names_are_refused_or_stored_literally,
    revocation_takes_effect_at_once_despite_the_cache,
    registry_follows_every_mutation,
    rotation_keeps_the_previous_key_in_the_jwks,
    a_second_replica_converges_on_resync,
    pusher_credentials_are_created_once_listed_without_secrets_and_revoked,
    webhooks_are_created_with_a_secret_shown_once_and_managed_by_their_tenant,
    webhook_targets_on_private_networks_are_refused_unless_allowed,
);

async fn webhooks_are_created_with_a_secret_shown_once_and_managed_by_their_tenant(store: TestStore) {
    let s = start(store, |c| {
        c.credentials_key = Some(credentials_key());
        c.max_webhooks_per_tenant = 2;
    })
    .await;
    let (_, admin, app_id, _) = s.tenant_with_key("hooks", chat_caps()).await;
    let (_, other_admin, _, _) = s.tenant_with_key("hooks-other", chat_caps()).await;
    let path = format!("/v1/apps/{app_id}/webhooks");

    let body = json!({
        "url": "https://hooks.example.com/aviary",
        "events": ["channel_occupied", "channel_vacated", "member_added"],
        "channels": "chat:*",
        "format": "aviary",
    });
    let created = s.post(&path, &admin, body.clone()).await.expect(StatusCode::CREATED);
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(id.starts_with("whk_"), "{created}");
    assert!(secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{created}");
    assert_eq!(
        (&created["url"], &created["events"], &created["channels"], &created["format"], &created["app_id"]),
        (&body["url"], &body["events"], &body["channels"], &body["format"], &json!(app_id)),
    );

    // At rest the secret is sealed under the credentials key, bound to the endpoint id.
    let stored = s.state.store().webhook(&app_id, &id).await.unwrap().unwrap();
    assert!(!stored.sealed_secret.windows(secret.len()).any(|w| w == secret.as_bytes()), "no secret in clear");
    assert_eq!(credentials_key().open_str(&stored.sealed_secret, &id).as_deref(), Some(secret.as_str()));

    // Read and list, never with the secret.
    let one = format!("{path}/{id}");
    let read = s.get(&one, &admin).await.expect(StatusCode::OK);
    assert!(read.get("secret").is_none() && !read.to_string().contains(&secret), "{read}");
    assert_eq!(read["id"], id.as_str());
    let listed = s.get(&path, &admin).await.expect(StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&secret), "{listed}");

    // Change: given fields replaced, absent ones kept, `null` clears the channel filter.
    let patched = s
        .call(
            reqwest::Method::PATCH,
            &one,
            Some(&admin),
            Some(json!({ "events": ["message_published"], "channels": null, "format": "pusher" })),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched["url"], body["url"]);
    assert_eq!(patched["events"], json!(["message_published"]));
    assert!(patched["channels"].is_null());
    assert_eq!(patched["format"], "pusher");
    let stored_after = s.state.store().webhook(&app_id, &id).await.unwrap().unwrap();
    assert_eq!(stored_after.sealed_secret, stored.sealed_secret, "the secret survives a change");

    // Bad input is a problem document and changes nothing.
    for bad in [
        json!({ "url": "https://hooks.example.com/", "events": [], "format": "aviary" }),
        json!({ "url": "https://hooks.example.com/", "events": ["channel_opened"], "format": "aviary" }),
        json!({ "url": "https://hooks.example.com/", "events": ["member_added", "member_added"], "format": "aviary" }),
        json!({ "url": "https://hooks.example.com/", "events": ["member_added"], "format": "xml" }),
        json!({ "url": "https://hooks.example.com/", "events": ["member_added"] }),
        json!({ "url": "https://hooks.example.com/", "events": ["member_added"], "format": "aviary", "channels": "a b" }),
        json!({ "url": "ftp://hooks.example.com/", "events": ["member_added"], "format": "aviary" }),
        json!({ "url": "not a url", "events": ["member_added"], "format": "aviary" }),
        json!({ "url": "https://hooks.example.com/", "events": ["member_added"], "format": "aviary", "secret": "x" }),
    ] {
        s.post(&path, &admin, bad).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    s.call(reqwest::Method::PATCH, &one, Some(&admin), Some(json!({ "url": "http://127.0.0.1/" })))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert_eq!(s.get(&path, &admin).await.expect(StatusCode::OK)["items"].as_array().unwrap().len(), 1);

    // Another tenant sees nothing and changes nothing.
    s.post(&path, &other_admin, body.clone()).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.get(&one, &other_admin).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.call(reqwest::Method::PATCH, &one, Some(&other_admin), Some(json!({ "format": "aviary" })))
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.call(reqwest::Method::DELETE, &one, Some(&other_admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");

    // The per-tenant limit (2 here).
    s.post(&path, &admin, body.clone()).await.expect(StatusCode::CREATED);
    s.post(&path, &admin, body.clone()).await.expect_problem(StatusCode::CONFLICT, "limit-reached");

    // Delete: gone at once, a second delete is 404, and its place is free again.
    s.call(reqwest::Method::DELETE, &one, Some(&admin), None).await.expect(StatusCode::NO_CONTENT);
    s.get(&one, &admin).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.call(reqwest::Method::DELETE, &one, Some(&admin), None).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.post(&path, &admin, body).await.expect(StatusCode::CREATED);

    // Without a credentials key no secret can be sealed: refused before anything is written.
    let keyless = start(sqlite_store().await, |_| {}).await;
    let (_, admin, app_id, _) = keyless.tenant_with_key("keyless", chat_caps()).await;
    let path = format!("/v1/apps/{app_id}/webhooks");
    keyless
        .post(
            &path,
            &admin,
            json!({ "url": "https://hooks.example.com/", "events": ["client_event"], "format": "aviary" }),
        )
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE, "credentials-key-missing");
    assert!(keyless.get(&path, &admin).await.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty());
}

async fn webhook_targets_on_private_networks_are_refused_unless_allowed(store: TestStore) {
    let s = start(store, |c| c.credentials_key = Some(credentials_key())).await;
    let (_, admin, app_id, _) = s.tenant_with_key("hooks-private", chat_caps()).await;
    let path = format!("/v1/apps/{app_id}/webhooks");
    for url in [
        "http://127.0.0.1:9000/in",
        "http://localhost/in",
        "http://10.0.0.7/",
        "http://169.254.169.254/",
        "http://[::1]/",
    ] {
        s.post(&path, &admin, json!({ "url": url, "events": ["channel_vacated"], "format": "pusher" }))
            .await
            .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    assert!(s.get(&path, &admin).await.expect(StatusCode::OK)["items"].as_array().unwrap().is_empty());

    let allowing = start(sqlite_store().await, |c| {
        c.credentials_key = Some(credentials_key());
        c.webhook_allow_private_targets = true;
    })
    .await;
    let (_, admin, app_id, _) = allowing.tenant_with_key("hooks-private", chat_caps()).await;
    let created = allowing
        .post(
            &format!("/v1/apps/{app_id}/webhooks"),
            &admin,
            json!({ "url": "http://127.0.0.1:9000/in", "events": ["channel_vacated"], "format": "pusher" }),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(created["url"], "http://127.0.0.1:9000/in");
}

/// The credentials key the Pusher tests seal secrets with.
fn credentials_key() -> Arc<SecretBox> {
    Arc::new(SecretBox::parse(&"5a".repeat(32)).unwrap())
}

async fn pusher_credentials_are_created_once_listed_without_secrets_and_revoked(store: TestStore) {
    let s = start(store, |c| c.credentials_key = Some(credentials_key())).await;
    let (_, admin, app_id, _) = s.tenant_with_key("pusher", chat_caps()).await;
    let (_, other_admin, _, _) = s.tenant_with_key("pusher-other", chat_caps()).await;
    let path = format!("/v1/apps/{app_id}/pusher-credentials");

    let first = s.post(&path, &admin, json!({})).await.expect(StatusCode::CREATED);
    let pusher_app_id = first["app_id"].as_str().unwrap().to_owned();
    assert!(pusher_app_id.len() >= 7 && pusher_app_id.bytes().all(|b| b.is_ascii_digit()), "{first}");
    let key = first["key"].as_str().unwrap().to_owned();
    let secret = first["secret"].as_str().unwrap().to_owned();
    assert!(key.len() == 20 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert!(secret.len() == 40 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_eq!(first["aviary_app_id"], app_id.as_str());
    assert_eq!(first["capabilities"], json!({ "*": ["subscribe", "publish", "presence", "history"] }));
    assert_eq!(first["client_events"], false);

    let second = s
        .post(
            &path,
            &admin,
            json!({ "capabilities": { "presence-room:*": ["subscribe", "presence"] }, "client_events": true }),
        )
        .await
        .expect(StatusCode::CREATED);
    assert_eq!(second["app_id"], pusher_app_id.as_str(), "one numeric app id per app");
    assert_ne!(second["key"], key.as_str());

    // The registry (what the data plane reads, and what is streamed to nodes) has the secret.
    let live = s.state.registry().pusher_credential(&key).expect("pushed to the registry");
    assert_eq!((live.secret.as_str(), live.app_id.as_str()), (secret.as_str(), app_id.as_str()));
    assert_eq!(live.pusher_app_id.to_string(), pusher_app_id);
    assert!(s.state.registry().pusher_credential(second["key"].as_str().unwrap()).unwrap().client_events);

    // At rest the secret is sealed under the credentials key, bound to its key.
    let stored = s.state.store().list_pusher_credentials(&app_id, &PageRequest::first(10)).await.unwrap().items;
    let sealed = &stored.iter().find(|c| c.key == key).unwrap().sealed_secret;
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()), "no secret in clear at rest");
    assert_eq!(credentials_key().open_str(sealed, &key).as_deref(), Some(secret.as_str()));

    // Listing never shows a secret.
    let listed = s.get(&path, &admin).await.expect(StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains(&secret) && listed["items"][0].get("secret").is_none());
    assert_eq!(listed["items"][0]["key"], key.as_str(), "listed in creation order");

    // Bad input and other tenants.
    s.post(&path, &admin, json!({ "capabilities": {} })).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&path, &admin, json!({ "capabilities": { "a b": ["subscribe"] } }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&path, &admin, json!({ "secret": "mine" })).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&path, &other_admin, json!({})).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    s.get(&path, &other_admin).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    let revoke = format!("{path}/{key}");
    s.call(reqwest::Method::DELETE, &revoke, Some(&other_admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");

    // Revocation: at once in the registry, listed with its time, idempotent; unknown keys 404.
    let mut events = s.state.registry().subscribe();
    s.call(reqwest::Method::DELETE, &revoke, Some(&admin), None).await.expect(StatusCode::NO_CONTENT);
    assert!(s.state.registry().pusher_credential(&key).is_none());
    assert!(matches!(
        events.try_recv(),
        Ok(aviary_core::ConfigEvent::PusherCredentialRevoked { key: k, .. }) if k == key
    ));
    s.call(reqwest::Method::DELETE, &revoke, Some(&admin), None).await.expect(StatusCode::NO_CONTENT);
    s.call(reqwest::Method::DELETE, &format!("{path}/0000"), Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
    let listed = s.get(&path, &admin).await.expect(StatusCode::OK);
    assert!(listed["items"][0]["revoked_at"].is_string());

    // A restarted control plane loads the live credential with the same key, none without it.
    let restarted = Arc::new(Registry::new());
    let mut config = ControlPlaneConfig::new(OPERATOR);
    config.credentials_key = Some(credentials_key());
    let _again = ControlPlaneState::new(s.state.store().clone(), restarted.clone(), config).await.unwrap();
    let loaded: Vec<String> = restarted.pusher_credentials().iter().map(|c| c.key.clone()).collect();
    assert_eq!(loaded, vec![second["key"].as_str().unwrap().to_owned()]);
    let keyless = Arc::new(Registry::new());
    let _keyless = ControlPlaneState::new(s.state.store().clone(), keyless.clone(), ControlPlaneConfig::new(OPERATOR))
        .await
        .unwrap();
    assert!(keyless.pusher_credentials().is_empty());

    // The same operations over gRPC.
    let mut client = ControlPlaneClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let created = client
        .create_pusher_credential(with_auth(
            pb::CreatePusherCredentialRequest { app_id: app_id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let info = created.credential.unwrap();
    assert_eq!(info.app_id, pusher_app_id);
    assert_eq!(created.secret.len(), 40);
    let listed = client
        .list_pusher_credentials(with_auth(
            pb::ListPusherCredentialsRequest { app_id: app_id.clone(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), 3);
    client
        .revoke_pusher_credential(with_auth(
            pb::RevokePusherCredentialRequest { app_id: app_id.clone(), key: info.key.clone() },
            &admin,
        ))
        .await
        .unwrap();
    assert!(s.state.registry().pusher_credential(&info.key).is_none());
    let hidden = client
        .create_pusher_credential(with_auth(
            pb::CreatePusherCredentialRequest { app_id: app_id.clone(), ..Default::default() },
            &other_admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_grpc_follow_the_rest_rules() {
    let s = start(sqlite_store().await, |c| c.credentials_key = Some(credentials_key())).await;
    let (_, admin, app_id, _) = s.tenant_with_key("grpc-hooks", chat_caps()).await;
    let (_, other_admin, _, _) = s.tenant_with_key("grpc-hooks-other", chat_caps()).await;
    let mut client = ControlPlaneClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let request = |app_id: &str, url: &str, events: &[&str], format: &str| pb::CreateWebhookRequest {
        app_id: app_id.to_owned(),
        url: url.to_owned(),
        events: events.iter().map(|e| e.to_string()).collect(),
        channels: "chat:*".into(),
        format: format.into(),
    };
    let created = client
        .create_webhook(with_auth(
            request(&app_id, "https://hooks.example.com/g", &["channel_occupied", "client_event"], "pusher"),
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let info = created.webhook.unwrap();
    assert_eq!(created.secret.len(), 64);
    assert_eq!(
        (info.events.clone(), info.format.as_str(), info.channels.as_str()),
        (vec!["channel_occupied".to_owned(), "client_event".to_owned()], "pusher", "chat:*")
    );
    assert_eq!(s.state.registry().webhook(&info.id).unwrap().secret, created.secret, "pushed to the registry");
    for (bad, code) in [
        (request(&app_id, "https://hooks.example.com/", &["channel_opened"], "aviary"), tonic::Code::InvalidArgument),
        (request(&app_id, "https://hooks.example.com/", &["client_event"], "xml"), tonic::Code::InvalidArgument),
        (request(&app_id, "http://127.0.0.1/", &["client_event"], "aviary"), tonic::Code::InvalidArgument),
    ] {
        assert_eq!(client.create_webhook(with_auth(bad, &admin)).await.unwrap_err().code(), code);
    }
    let hidden = request(&app_id, "https://hooks.example.com/", &["client_event"], "aviary");
    assert_eq!(client.create_webhook(with_auth(hidden, &other_admin)).await.unwrap_err().code(), tonic::Code::NotFound);
    let listed = client
        .list_webhooks(with_auth(pb::ListWebhooksRequest { app_id: app_id.clone(), ..Default::default() }, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.webhooks.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(), [info.id.as_str()]);
    assert!(!format!("{listed:?}").contains(&created.secret), "never a secret in a listing");
    client
        .delete_webhook(with_auth(
            pb::DeleteWebhookRequest { app_id: app_id.clone(), webhook_id: info.id.clone() },
            &admin,
        ))
        .await
        .unwrap();
    assert!(s.state.registry().webhook(&info.id).is_none());
    let again = pb::DeleteWebhookRequest { app_id, webhook_id: info.id };
    assert_eq!(client.delete_webhook(with_auth(again, &admin)).await.unwrap_err().code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_credentials_need_a_credentials_key() {
    let s = start(sqlite_store().await, |_| {}).await;
    let (_, admin, app_id, _) = s.tenant_with_key("keyless", chat_caps()).await;
    s.post(&format!("/v1/apps/{app_id}/pusher-credentials"), &admin, json!({}))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE, "credentials-key-missing");
    let before = snapshot(&**s.state.store()).await;
    assert!(s.state.store().live_pusher_credentials().await.unwrap().is_empty(), "nothing written");
    assert_eq!(before, snapshot(&**s.state.store()).await);
}

async fn newcomer_flow_mints_a_token_that_verifies_against_the_jwks(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (tenant_id, admin, app_id, api_key) = s.tenant_with_key("acme", chat_caps()).await;
    assert!(api_key.starts_with("avk_") && admin.starts_with("avt_"));

    let minted = s
        .post(
            &format!("/v1/apps/{app_id}/tokens"),
            &api_key,
            json!({ "client_id": "user-42", "ttl_s": 600, "capabilities": { "chat:lobby": ["subscribe"] }, "info": { "name": "Ada" } }),
        )
        .await
        .expect(StatusCode::OK);
    let token = minted["token"].as_str().unwrap();
    assert!(minted["expires_at"].as_str().is_some());

    let claims = verify(token, &s.jwks_registry().await).expect("token verifies with the published JWKS");
    assert_eq!(claims.sub, "user-42");
    assert_eq!(claims.tid, tenant_id);
    assert_eq!(claims.app, app_id);
    assert_eq!(claims.akid, api_key[4..36]);
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(claims.info, Some(json!({ "name": "Ada" })));
    assert_eq!(serde_json::to_value(&claims.cap).unwrap(), json!({ "chat:lobby": ["subscribe"] }));

    // Without explicit capabilities the token carries the key's.
    let minted = s
        .post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": "user-7" }))
        .await
        .expect(StatusCode::OK);
    let claims = verify(minted["token"].as_str().unwrap(), &s.jwks_registry().await).unwrap();
    assert_eq!(serde_json::to_value(&claims.cap).unwrap(), chat_caps());

    // The key list shows metadata, never the secret; the mint above was the key's first use.
    let keys = s.keys_once_used(&app_id, &admin).await;
    assert_eq!(keys["items"].as_array().unwrap().len(), 1);
    assert!(keys["items"][0]["created_at"].is_string());
    let at =
        |field: &str| keys["items"][0][field].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
    assert!(at("last_used_at").is_some() && at("last_used_at") >= at("created_at"), "{keys}");
    assert!(!keys.to_string().contains(&api_key[37..]), "secret must never be listed");

    // Listing, reading, patching, usage.
    let apps = s.get(&format!("/v1/tenants/{tenant_id}/apps"), &admin).await.expect(StatusCode::OK);
    assert_eq!(apps["items"][0]["namespaces"][0]["name"], "");
    assert_eq!(apps["next_cursor"], Value::Null);
    let patched = s
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/apps/{app_id}"),
            Some(&admin),
            Some(json!({ "allowed_origins": ["https://acme.example"], "max_token_ttl_s": 120 })),
        )
        .await
        .expect(StatusCode::OK);
    assert_eq!(patched["max_token_ttl_s"], 120);
    let usage = s.get(&format!("/v1/tenants/{tenant_id}/usage"), &admin).await.expect(StatusCode::OK);
    assert_eq!(usage["apps"][0]["app_id"], app_id.as_str());
    assert_eq!(usage["totals"]["peak_connections"], 0);
    assert_eq!(usage["granularity"], "hour");

    // TTL above the app maximum is refused, not clamped.
    s.post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": "u", "ttl_s": 121 }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "token-ttl-too-long");

    // Pagination over HTTP.
    for i in 0..3 {
        s.post(&format!("/v1/tenants/{tenant_id}/apps"), &admin, json!({ "name": format!("extra {i}") }))
            .await
            .expect(StatusCode::CREATED);
    }
    let page1 = s.get(&format!("/v1/tenants/{tenant_id}/apps?limit=3"), &admin).await.expect(StatusCode::OK);
    let cursor = page1["next_cursor"].as_str().expect("a second page").to_owned();
    let page2 =
        s.get(&format!("/v1/tenants/{tenant_id}/apps?limit=3&cursor={cursor}"), &admin).await.expect(StatusCode::OK);
    assert_eq!(page1["items"].as_array().unwrap().len() + page2["items"].as_array().unwrap().len(), 4);
    assert_eq!(page2["next_cursor"], Value::Null);
    s.get(&format!("/v1/tenants/{tenant_id}/apps?cursor=garbage"), &admin)
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");

    // Operator deletes the tenant: everything goes, the registry forgets the app.
    assert!(s.state.registry().app(&app_id).is_some());
    s.call(reqwest::Method::DELETE, &format!("/v1/tenants/{tenant_id}"), Some(OPERATOR), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(s.state.registry().app(&app_id).is_none());
    s.post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": "u" }))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}

async fn another_tenants_resources_answer_404(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (tenant_a, admin_a, app_a, _key_a) = s.tenant_with_key("alpha", chat_caps()).await;
    let (tenant_b, admin_b, app_b, key_b) = s.tenant_with_key("beta", chat_caps()).await;
    let before = snapshot(&**s.state.store()).await;

    for (method, path, body) in [
        (reqwest::Method::GET, format!("/v1/apps/{app_a}"), None),
        (reqwest::Method::PATCH, format!("/v1/apps/{app_a}"), Some(json!({ "enabled": false }))),
        (reqwest::Method::DELETE, format!("/v1/apps/{app_a}"), None),
        (reqwest::Method::GET, format!("/v1/apps/{app_a}/keys"), None),
        (
            reqwest::Method::POST,
            format!("/v1/apps/{app_a}/keys"),
            Some(json!({ "name": "x", "capabilities": chat_caps() })),
        ),
        (reqwest::Method::GET, format!("/v1/tenants/{tenant_a}"), None),
        (reqwest::Method::GET, format!("/v1/tenants/{tenant_a}/apps"), None),
        (reqwest::Method::POST, format!("/v1/tenants/{tenant_a}/apps"), Some(json!({ "name": "intruder" }))),
        (reqwest::Method::GET, format!("/v1/tenants/{tenant_a}/usage"), None),
    ] {
        let answer = s.call(method.clone(), &path, Some(&admin_b), body.clone()).await;
        answer.expect_problem(StatusCode::NOT_FOUND, "not-found");
        // Indistinguishable from a resource that does not exist at all.
        let ghost = path.replace(&app_a, "app_0000").replace(&tenant_a, "ten_0000");
        let ghost_answer = s.call(method, &ghost, Some(&admin_b), body).await;
        assert_eq!(ghost_answer.status, StatusCode::NOT_FOUND, "{path}");
    }
    // Revoking another app's key through your own app: 404 too.
    let key_b_id = &key_b[4..36];
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_a}/keys/{key_b_id}"), Some(&admin_a), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
    // A key of app B minting for app A.
    s.post(&format!("/v1/apps/{app_a}/tokens"), &key_b, json!({ "client_id": "u" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
    assert_eq!(snapshot(&**s.state.store()).await, before, "nothing changed");
    // B still works on its own resources.
    s.get(&format!("/v1/apps/{app_b}"), &admin_b).await.expect(StatusCode::OK);
    s.get(&format!("/v1/tenants/{tenant_b}"), &admin_b).await.expect(StatusCode::OK);
}

async fn forged_expired_and_wrong_kind_credentials_are_refused(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (tenant_id, admin, app_id, api_key) = s.tenant_with_key("creds", chat_caps()).await;
    let before = snapshot(&**s.state.store()).await;
    let forged_secret = format!("{}{}", &api_key[..37], "x".repeat(40));
    let forged_admin = format!("{}{}", &admin[..37], "y".repeat(40));
    let unknown_id = format!("avk_{}_{}", "0".repeat(32), "z".repeat(40));

    // Operator routes: only the operator token.
    for bad in ["", "wrong", &admin, &api_key, &format!("{OPERATOR}x")] {
        s.post("/v1/tenants", bad, json!({ "name": "nope" }))
            .await
            .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let missing = s.call(reqwest::Method::GET, "/v1/tenants", None, None).await;
    missing.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(missing.headers.get("www-authenticate").unwrap(), "Bearer");
    s.call(reqwest::Method::DELETE, &format!("/v1/tenants/{tenant_id}"), Some(&admin), None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");

    // Tenant admin routes: forged admin key, API key instead of admin key.
    for bad in [&forged_admin, &api_key, &forged_secret] {
        s.get(&format!("/v1/apps/{app_id}"), bad).await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Token minting: forged secret, unknown id, admin key, operator token.
    for bad in [&forged_secret, &unknown_id, &admin, &OPERATOR.to_owned()] {
        s.post(&format!("/v1/apps/{app_id}/tokens"), bad, json!({ "client_id": "u" }))
            .await
            .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(snapshot(&**s.state.store()).await, before, "nothing changed");

    // An expired connection token does not verify; neither does one signed by a stranger.
    let key = s.state.keyring().current();
    let registry = s.jwks_registry().await;
    let mut claims = aviary_core::token::claims_for(&tenant_id, &app_id, &api_key[4..36], "u", -60, Default::default());
    assert_eq!(verify(&key.sign(&claims), &registry), Err(TokenError::Expired));
    claims.exp += 3600;
    let stranger = aviary_core::SigningKey::generate();
    assert_eq!(verify(&stranger.sign(&claims), &registry), Err(TokenError::UnknownKey));
}

async fn capability_escalation_on_mint_is_forbidden(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (_, _, app_id, api_key) = s.tenant_with_key("caps", json!({ "chat:*": ["subscribe"] })).await;
    let path = format!("/v1/apps/{app_id}/tokens");
    for caps in [
        json!({ "chat:*": ["publish"] }),
        json!({ "*": ["subscribe"] }),
        json!({ "chat:*": ["subscribe"], "admin": ["subscribe"] }),
        json!({ "c*": ["subscribe"] }),
    ] {
        s.post(&path, &api_key, json!({ "client_id": "u", "capabilities": caps }))
            .await
            .expect_problem(StatusCode::FORBIDDEN, "capability-escalation");
    }
    s.post(&path, &api_key, json!({ "client_id": "u", "capabilities": { "chat:room-1": ["subscribe"] } }))
        .await
        .expect(StatusCode::OK);
    // Bad globs and unknown operations are input errors, not escalations.
    s.post(&path, &api_key, json!({ "client_id": "u", "capabilities": { "chat room": ["subscribe"] } }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&path, &api_key, json!({ "client_id": "u", "capabilities": { "chat:*": ["admin"] } }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
}

async fn bad_bodies_are_refused_and_change_nothing(store: TestStore) {
    let s = start(store, |c| c.body_limit_bytes = 4096).await;
    let (tenant_id, admin, app_id, api_key) = s.tenant_with_key("bodies", chat_caps()).await;
    let before = snapshot(&**s.state.store()).await;
    let apps = format!("/v1/tenants/{tenant_id}/apps");

    let malformed = s.raw(&apps, &admin, "application/json", "{\"name\": \"x\",").await;
    malformed.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(malformed.body["detail"].as_str().unwrap().contains("malformed JSON"));

    let unknown = s.post(&apps, &admin, json!({ "name": "x", "colour": "red" })).await;
    unknown.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    assert!(unknown.body["detail"].as_str().unwrap().contains("colour"), "detail names the field: {}", unknown.body);

    s.post("/v1/tenants", OPERATOR, json!({ "name": "t", "quotas": { "max_connections": 1 } }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&apps, &admin, json!({ "name": 42 })).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&apps, &admin, json!({})).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");

    let huge = json!({ "name": "x".repeat(8192) }).to_string();
    s.raw(&apps, &admin, "application/json", huge.clone())
        .await
        .expect_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    s.raw(&format!("/v1/apps/{app_id}/tokens"), &api_key, "application/json", huge)
        .await
        .expect_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
    s.raw(&apps, &admin, "text/plain", "{\"name\":\"x\"}")
        .await
        .expect_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type");

    // Validation rules.
    for body in [
        json!({ "name": "" }),
        json!({ "name": "x".repeat(65) }),
        json!({ "name": "ok", "allowed_origins": ["not an origin"] }),
        json!({ "name": "ok", "max_token_ttl_s": 0 }),
        json!({ "name": "ok", "max_token_ttl_s": 10_000_000 }),
        json!({ "name": "ok", "namespaces": [{ "name": "a" }, { "name": "a" }] }),
        json!({ "name": "ok", "quotas": { "max_connections": 1_000_000, "max_messages_per_s": 1, "max_message_bytes": 1,
                "max_subscriptions_per_connection": 1, "max_presence_members": 1 } }),
    ] {
        s.post(&apps, &admin, body).await.expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    s.post(&format!("/v1/apps/{app_id}/keys"), &admin, json!({ "name": "k", "capabilities": {} }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(
        &format!("/v1/apps/{app_id}/keys"),
        &admin,
        json!({ "name": "k", "capabilities": { "bad glob": ["subscribe"] } }),
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": "has space" }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    s.post("/v1/tenants", OPERATOR, json!({ "name": "bodies" })).await.expect_problem(StatusCode::CONFLICT, "conflict");
    s.get("/v1/nowhere", OPERATOR).await.expect_problem(StatusCode::NOT_FOUND, "not-found");

    assert_eq!(snapshot(&**s.state.store()).await, before, "nothing changed");
}

async fn sql_looking_names_are_refused_or_stored_literally(store: TestStore) {
    let s = start(store, |_| {}).await;
    let before = snapshot(&**s.state.store()).await;
    for name in ["x'); DROP TABLE tenants; --", "a\" OR \"1\"=\"1", "x; DELETE FROM apps"] {
        s.post("/v1/tenants", OPERATOR, json!({ "name": name }))
            .await
            .expect_problem(StatusCode::BAD_REQUEST, "bad-request");
    }
    assert_eq!(snapshot(&**s.state.store()).await, before);
    // Legal characters that spell SQL are just a name.
    let t = s.post("/v1/tenants", OPERATOR, json!({ "name": "DROP TABLE tenants" })).await.expect(StatusCode::CREATED);
    let id = t["tenant"]["id"].as_str().unwrap();
    let read = s.get(&format!("/v1/tenants/{id}"), OPERATOR).await.expect(StatusCode::OK);
    assert_eq!(read["name"], "DROP TABLE tenants");
    s.get("/v1/tenants/' OR '1'='1", OPERATOR).await.expect_problem(StatusCode::NOT_FOUND, "not-found");
    let listed = s.get("/v1/tenants", OPERATOR).await.expect(StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "the tenants table is intact");
}

async fn revocation_takes_effect_at_once_despite_the_cache(store: TestStore) {
    let s = start(store, |c| c.key_cache_ttl = Duration::from_secs(3600)).await;
    let (_, admin, app_id, api_key) = s.tenant_with_key("revoke", chat_caps()).await;
    let mint = format!("/v1/apps/{app_id}/tokens");
    // Warm the cache.
    for _ in 0..3 {
        s.post(&mint, &api_key, json!({ "client_id": "u" })).await.expect(StatusCode::OK);
    }
    let key_id = &api_key[4..36];
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}/keys/{key_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    s.post(&mint, &api_key, json!({ "client_id": "u" })).await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(s.state.registry().api_key_revoked(key_id), "the data plane sees the revocation");
    // Revoked, and the uses before the revocation were recorded.
    let keys = s.keys_once_used(&app_id, &admin).await;
    assert!(keys["items"][0]["revoked_at"].is_string(), "{keys}");
    // Idempotent; unknown keys are 404.
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}/keys/{key_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}/keys/nope"), Some(&admin), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
    // The ApiKeyAuthority the data plane uses agrees.
    let authority = s.state.api_key_authority();
    assert_eq!(authority.verify_api_key(&api_key).await, Err(aviary_core::ApiKeyError::Invalid));

    // Admin keys too: a second key, used (cached), revoked by the operator, refused at once.
    let tenant_id = s.get(&format!("/v1/apps/{app_id}"), &admin).await.expect(StatusCode::OK)["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = s.post(&format!("/v1/tenants/{tenant_id}/admin-keys"), OPERATOR, json!({})).await;
    let second = second.expect(StatusCode::CREATED);
    let (second_id, second_secret) = (second["key_id"].as_str().unwrap(), second["secret"].as_str().unwrap());
    s.get(&format!("/v1/apps/{app_id}"), second_secret).await.expect(StatusCode::OK);
    let revoke = format!("/v1/tenants/{tenant_id}/admin-keys/{second_id}");
    s.call(reqwest::Method::DELETE, &revoke, Some(&admin), None)
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    s.call(reqwest::Method::DELETE, &revoke, Some(OPERATOR), None).await.expect(StatusCode::NO_CONTENT);
    s.get(&format!("/v1/apps/{app_id}"), second_secret).await.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    s.get(&format!("/v1/apps/{app_id}"), &admin).await.expect(StatusCode::OK);
    s.call(reqwest::Method::DELETE, &format!("/v1/tenants/{tenant_id}/admin-keys/nope"), Some(OPERATOR), None)
        .await
        .expect_problem(StatusCode::NOT_FOUND, "not-found");
}

async fn registry_follows_every_mutation(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (tenant_id, admin, app_id, api_key) = s.tenant_with_key("registry", chat_caps()).await;
    let registry = s.state.registry().clone();
    let app = registry.app(&app_id).expect("created apps are published");
    assert!(app.enabled);
    assert_eq!(app.quotas, aviary_core::Quotas::default());

    // App quotas tighten the tenant's; tenant quotas lower still win field by field.
    let q = json!({ "max_connections": 50, "max_messages_per_s": 10, "max_message_bytes": 1000,
                    "max_subscriptions_per_connection": 5, "max_presence_members": 5 });
    s.call(reqwest::Method::PATCH, &format!("/v1/apps/{app_id}"), Some(&admin), Some(json!({ "quotas": q })))
        .await
        .expect(StatusCode::OK);
    assert_eq!(registry.app(&app_id).unwrap().quotas.max_connections, 50);
    let tq = json!({ "max_connections": 20, "max_messages_per_s": 1000, "max_message_bytes": 65536,
                     "max_subscriptions_per_connection": 128, "max_presence_members": 1000 });
    s.call(reqwest::Method::PATCH, &format!("/v1/tenants/{tenant_id}"), Some(OPERATOR), Some(json!({ "quotas": tq })))
        .await
        .expect(StatusCode::OK);
    let cfg = registry.app(&app_id).unwrap();
    assert_eq!((cfg.quotas.max_connections, cfg.quotas.max_messages_per_s), (20, 10));
    assert_eq!(cfg.tenant_quotas.max_connections, 20);

    // `"quotas": null` drops the app's override: the tenant's apply.
    let cleared = s
        .call(reqwest::Method::PATCH, &format!("/v1/apps/{app_id}"), Some(&admin), Some(json!({ "quotas": null })))
        .await
        .expect(StatusCode::OK);
    assert_eq!(cleared["quotas"], Value::Null);
    assert_eq!(registry.app(&app_id).unwrap().quotas, registry.app(&app_id).unwrap().tenant_quotas);

    // Disabling the tenant disables its apps, and minting stops.
    s.call(
        reqwest::Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(OPERATOR),
        Some(json!({ "enabled": false })),
    )
    .await
    .expect(StatusCode::OK);
    assert!(!registry.app(&app_id).unwrap().enabled);
    s.post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": "u" }))
        .await
        .expect_problem(StatusCode::FORBIDDEN, "app-disabled");
    s.call(
        reqwest::Method::PATCH,
        &format!("/v1/tenants/{tenant_id}"),
        Some(OPERATOR),
        Some(json!({ "enabled": true })),
    )
    .await
    .expect(StatusCode::OK);
    assert!(registry.app(&app_id).unwrap().enabled);

    // A fresh state (a restart) loads the same picture, revocations included.
    let key_id = &api_key[4..36];
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}/keys/{key_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    let restarted = Arc::new(Registry::new());
    let state2 = ControlPlaneState::new(s.state.store().clone(), restarted.clone(), ControlPlaneConfig::new(OPERATOR))
        .await
        .unwrap();
    assert_eq!(restarted.app(&app_id), registry.app(&app_id));
    assert!(restarted.api_key_revoked(key_id));
    assert_eq!(state2.keyring().current().kid, s.state.keyring().current().kid, "signing key persisted");

    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(registry.app(&app_id).is_none());
}

async fn rotation_keeps_the_previous_key_in_the_jwks(store: TestStore) {
    let s = start(store, |_| {}).await;
    let (_, _, app_id, api_key) = s.tenant_with_key("rotate", chat_caps()).await;
    let mint = format!("/v1/apps/{app_id}/tokens");
    let old = s.post(&mint, &api_key, json!({ "client_id": "u" })).await.expect(StatusCode::OK);
    let old_kid = s.state.keyring().current().kid.clone();

    s.post("/v1/signing-keys/rotate", &api_key, json!({}))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    let rotated = s.post("/v1/signing-keys/rotate", OPERATOR, json!({})).await.expect(StatusCode::OK);
    assert_ne!(rotated["kid"].as_str().unwrap(), old_kid);

    let new = s.post(&mint, &api_key, json!({ "client_id": "u" })).await.expect(StatusCode::OK);
    let jwks = s.jwks_registry().await;
    assert!(jwks.verifying_key(&old_kid).is_some(), "the old key stays published");
    verify(old["token"].as_str().unwrap(), &jwks).expect("tokens of the old key still verify");
    let claims = verify(new["token"].as_str().unwrap(), &jwks).expect("new tokens verify");
    assert!(verify(new["token"].as_str().unwrap(), s.state.registry()).is_ok(), "the in-process registry has both");
    assert_eq!(claims.app, app_id);
}

async fn a_second_replica_converges_on_resync(store: TestStore) {
    let s = start(store, |_| {}).await;
    let replica_registry = Arc::new(Registry::new());
    let replica =
        ControlPlaneState::new(s.state.store().clone(), replica_registry.clone(), ControlPlaneConfig::new(OPERATOR))
            .await
            .unwrap();
    assert_eq!(replica.resync_registry().await.unwrap(), 0, "nothing to do when in step");

    // On Postgres the replica also hears each change through NOTIFY (tests/streaming.rs times
    // that); an explicit resync must converge either way, whether or not it still finds work.
    let (_, admin, app_id, api_key) = s.tenant_with_key("replicas", chat_caps()).await;
    // The replica verifies (and caches) the key before it is revoked elsewhere.
    assert!(replica.keys().verify_api_key(&api_key).await.is_ok());

    s.call(reqwest::Method::PATCH, &format!("/v1/apps/{app_id}"), Some(&admin), Some(json!({ "enabled": false })))
        .await
        .expect(StatusCode::OK);
    let key_id = &api_key[4..36];
    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}/keys/{key_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(replica.resync_registry().await.unwrap() <= 1);
    assert_eq!(replica_registry.app(&app_id), s.state.registry().app(&app_id));
    assert!(!replica_registry.app(&app_id).unwrap().enabled);
    assert!(replica_registry.api_key_revoked(key_id));
    assert!(replica.keys().verify_api_key(&api_key).await.is_err(), "the replica's cache forgot the revoked key");

    s.call(reqwest::Method::DELETE, &format!("/v1/apps/{app_id}"), Some(&admin), None)
        .await
        .expect(StatusCode::NO_CONTENT);
    assert!(replica.resync_registry().await.unwrap() <= 1);
    assert!(replica_registry.app(&app_id).is_none());

    // A rotation on one replica reaches the other's JWKS on its next reload.
    let kid = s.state.rotate_signing_key().await.unwrap();
    replica.keyring().reload().await.unwrap();
    assert_eq!(replica.keyring().current().kid, kid);
    assert!(replica_registry.verifying_key(&kid).is_some());
}

// ---------- single-store behaviour ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_bootstrap_runs_once_and_its_key_mints() {
    let s = start(sqlite_store().await, |_| {}).await;
    assert!(s.state.ready().await);
    let demo = s.state.bootstrap_demo().await.unwrap().expect("first start creates the demo");
    assert!(s.state.bootstrap_demo().await.unwrap().is_none(), "second start does not");
    let app = s.state.registry().app(&demo.app_id).unwrap();
    let names: Vec<_> = app.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["", "chat", "cursors"]);
    let minted = s
        .post(
            &format!("/v1/apps/{}/tokens", demo.app_id),
            &demo.api_key,
            json!({ "client_id": "demo-user", "capabilities": { "anything:*": ["publish"] } }),
        )
        .await
        .expect(StatusCode::OK);
    assert!(verify(minted["token"].as_str().unwrap(), s.state.registry()).is_ok());
    s.get(&format!("/v1/tenants/{}", demo.tenant_id), &demo.admin_key).await.expect(StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_a_cold_key_all_mints() {
    let s = Arc::new(start(sqlite_store().await, |_| {}).await);
    let (_, _, app_id, api_key) = s.tenant_with_key("burst", chat_caps()).await;
    let mints: Vec<_> = (0..16)
        .map(|i| {
            let (s, app_id, api_key) = (s.clone(), app_id.clone(), api_key.clone());
            tokio::spawn(async move {
                s.post(&format!("/v1/apps/{app_id}/tokens"), &api_key, json!({ "client_id": format!("user-{i}") }))
                    .await
                    .status
            })
        })
        .collect();
    for mint in mints {
        assert_eq!(mint.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let s = start(sqlite_store().await, |c| {
        c.rate_limits = RateLimitConfig { per_ip_per_s: 1000, per_ip_burst: 1000, per_key_per_s: 1, per_key_burst: 3 }
    })
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let answer = s.get("/v1/tenants", "some-guess").await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(answer);
            break;
        }
        answer.expect_problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let limited = limited.expect("the per-key limit kicks in");
    limited.expect_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    let retry: u64 = limited.headers.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another credential has its own bucket.
    s.get("/v1/tenants", OPERATOR).await.expect(StatusCode::OK);

    // gRPC shares the rules.
    let mut client = ControlPlaneClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let mut codes = Vec::new();
    for _ in 0..10 {
        let request = with_auth(pb::ListAppsRequest { tenant_id: "ten_x".into(), ..Default::default() }, "grpc-guess");
        let code = client.list_apps(request).await.unwrap_err().code();
        codes.push(code);
        if code == tonic::Code::ResourceExhausted {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&tonic::Code::ResourceExhausted), "{codes:?}");
    assert!(codes[..codes.len() - 1].iter().all(|c| *c == tonic::Code::Unauthenticated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_and_security_scheme() {
    let doc = serde_json::to_value(aviary_control_plane::api::openapi()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/tenants",
        "/v1/tenants/{tenant_id}",
        "/v1/tenants/{tenant_id}/admin-keys",
        "/v1/tenants/{tenant_id}/admin-keys/{key_id}",
        "/v1/tenants/{tenant_id}/apps",
        "/v1/tenants/{tenant_id}/usage",
        "/v1/apps/{app_id}",
        "/v1/apps/{app_id}/keys",
        "/v1/apps/{app_id}/keys/{key_id}",
        "/v1/apps/{app_id}/tokens",
        "/v1/apps/{app_id}/clients/{client_id}/revoke",
        "/v1/apps/{app_id}/pusher-credentials",
        "/v1/apps/{app_id}/pusher-credentials/{key}",
        "/v1/tenants/over-quota",
        "/v1/signing-keys/rotate",
        "/.well-known/jwks.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    for scheme in ["operator", "tenant_admin", "api_key"] {
        assert!(doc["components"]["securitySchemes"].get(scheme).is_some(), "{scheme} documented");
    }
    let usage_params: Vec<&str> = doc["paths"]["/v1/tenants/{tenant_id}/usage"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["tenant_id", "from", "to", "granularity"] {
        assert!(usage_params.contains(&name), "usage parameter {name} documented: {usage_params:?}");
    }
}

// ---------- gRPC ----------

fn with_auth<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

fn ops(list: &[&str]) -> pb::Operations {
    pb::Operations { operations: list.iter().map(|s| s.to_string()).collect() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_flow_creates_an_app_and_key_and_mints_a_verifiable_token() {
    let s = start(pg_store().await, |_| {}).await;
    let t = s.post("/v1/tenants", OPERATOR, json!({ "name": "grpc" })).await.expect(StatusCode::CREATED);
    let tenant_id = t["tenant"]["id"].as_str().unwrap().to_owned();
    let admin = t["admin_key"]["secret"].as_str().unwrap().to_owned();
    let mut client = ControlPlaneClient::connect(format!("http://{}", s.grpc)).await.unwrap();

    let app = client
        .create_app(with_auth(
            pb::CreateAppRequest { tenant_id: tenant_id.clone(), name: "svc".into(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(app.namespaces.len(), 1);
    let listed = client
        .list_apps(with_auth(pb::ListAppsRequest { tenant_id: tenant_id.clone(), ..Default::default() }, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.apps.len(), 1);
    assert!(listed.next_cursor.is_empty());

    let caps = BTreeMap::from([("chat:*".to_owned(), ops(&["subscribe", "publish"]))]);
    let key = client
        .create_api_key(with_auth(
            pb::CreateApiKeyRequest {
                app_id: app.id.clone(),
                name: "backend".into(),
                capabilities: caps.into_iter().collect(),
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(key.secret.starts_with("avk_"));

    let issued = client
        .issue_token(with_auth(
            pb::IssueTokenRequest {
                app_id: app.id.clone(),
                client_id: "user-1".into(),
                ttl_s: 300,
                capabilities: [("chat:lobby".to_owned(), ops(&["subscribe"]))].into_iter().collect(),
                info_json: Some(r#"{"name":"Grace"}"#.into()),
            },
            &key.secret,
        ))
        .await
        .unwrap()
        .into_inner();
    let claims = verify(&issued.token, &s.jwks_registry().await).unwrap();
    assert_eq!((claims.sub.as_str(), claims.exp), ("user-1", issued.expires_at));

    // Same rules as REST.
    let escalate = client
        .issue_token(with_auth(
            pb::IssueTokenRequest {
                app_id: app.id.clone(),
                client_id: "u".into(),
                capabilities: [("*".to_owned(), ops(&["history"]))].into_iter().collect(),
                ..Default::default()
            },
            &key.secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(escalate.code(), tonic::Code::PermissionDenied);
    let unauth = client
        .list_apps(with_auth(pb::ListAppsRequest { tenant_id: tenant_id.clone(), ..Default::default() }, "avt_forged"))
        .await
        .unwrap_err();
    assert_eq!(unauth.code(), tonic::Code::Unauthenticated);
    let (_, other_admin, _, _) = s.tenant_with_key("grpc-other", chat_caps()).await;
    let hidden = client
        .list_apps(with_auth(pb::ListAppsRequest { tenant_id: tenant_id.clone(), ..Default::default() }, &other_admin))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let bad_name = client
        .create_app(with_auth(
            pb::CreateAppRequest { tenant_id: tenant_id.clone(), name: "x'; --".into(), ..Default::default() },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), tonic::Code::InvalidArgument);

    client
        .revoke_api_key(with_auth(
            pb::RevokeApiKeyRequest { app_id: app.id.clone(), key_id: key.key_id.clone() },
            &admin,
        ))
        .await
        .unwrap();
    let revoked = client
        .issue_token(with_auth(
            pb::IssueTokenRequest { app_id: app.id.clone(), client_id: "u".into(), ..Default::default() },
            &key.secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
}
