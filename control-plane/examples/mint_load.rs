//! Loopback load test: warm-key connection token mints per second over real HTTP.
//!
//! `cargo run -p aviary-control-plane --example mint_load -- [concurrency] [seconds]`
//! starts the REST API on 127.0.0.1 with a fresh SQLite store, creates a tenant, app and key,
//! warms the key (one argon2id verification), then keeps `concurrency` keep-alive clients
//! minting for `seconds` and prints the rate. With `serve` as the first argument it only prints
//! the URL, a request body and the key, and serves until killed (to drive it with `wrk`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aviary_control_plane::auth::TenantAdmin;
use aviary_control_plane::service::{CreateApiKey, CreateApp, CreateTenant};
use aviary_control_plane::{ControlPlaneConfig, ControlPlaneState, RateLimitConfig, SqliteStore};
use aviary_core::{Capabilities, Registry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let serve_only = args.first().is_some_and(|a| a == "serve");
    let concurrency: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(32);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);

    let path = std::env::temp_dir().join(format!("aviary-mint-load-{}.db", uuid::Uuid::new_v4().simple()));
    let store = SqliteStore::open(&path).await?;
    store.migrate().await?;
    let mut config = ControlPlaneConfig::new("load-operator");
    config.rate_limits = RateLimitConfig::unlimited();
    let state = ControlPlaneState::new(Arc::new(store), Arc::new(Registry::new()), config).await?;

    let tenant = state.create_tenant(CreateTenant { name: "load".into(), quotas: None }).await?;
    let admin = TenantAdmin::Operator;
    let app = state
        .create_app(
            &admin,
            &tenant.tenant.id,
            CreateApp {
                name: "load".into(),
                enabled: true,
                allowed_origins: vec![],
                max_token_ttl_s: None,
                namespaces: None,
                quotas: None,
            },
        )
        .await?;
    let key = state
        .create_api_key(&admin, &app.id, CreateApiKey { name: "load".into(), capabilities: Capabilities::all() })
        .await?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = aviary_control_plane::api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, router).await });

    let url = format!("http://{addr}/v1/apps/{}/tokens", app.id);
    let body = r#"{"client_id":"user-1","ttl_s":600,"capabilities":{"chat:*":["subscribe","publish"]}}"#;
    if serve_only {
        println!("{url}\n{body}\n{}", key.secret);
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    let client = reqwest::Client::new();
    let auth = format!("Bearer {}", key.secret);
    // Warm the verified-key cache: the one argon2id verification this run pays.
    let warm = client.post(&url).header("authorization", &auth).header("content-type", "application/json").body(body);
    assert!(warm.send().await?.status().is_success());

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, auth, ok, failed) =
                (client.clone(), url.clone(), auth.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let sent = client
                        .post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{ok} tokens in {elapsed:.1} s with {concurrency} clients: {:.0} mints/s ({} failed)",
        ok as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_file(&path);
    Ok(())
}
