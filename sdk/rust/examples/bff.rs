//! A backend-for-frontend in Rust (axum) on the SDK: it logs its own users in with a session
//! cookie and mints Aviary connection tokens for them with the app's API key, which never leaves
//! the server. It serves the same page as the Node example (`examples/web`) and the
//! `@aviary/client` browser bundle.
//!
//! ```text
//! AVIARY_URL=http://127.0.0.1:8080 AVIARY_APP_ID=app_... AVIARY_API_KEY=avk_... \
//!     cargo run -p aviary-sdk --example bff
//! ```
//!
//! Then open http://127.0.0.1:3001, log in with any name, in two browsers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aviary_sdk::{Client, Operation, TokenRequest};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

const INDEX_HTML: &str = include_str!("../../../examples/web/index.html");
const APP_JS: &str = include_str!("../../../examples/web/app.js");
const CLIENT_JS: &str = include_str!("../../../aviary/assets/aviary-client.js");
const TOKEN_TTL_S: u32 = 600;

const LOGIN_PAGE: &str = r#"<!doctype html><html lang="en"><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Log in</title>
<body style="font:16px system-ui;max-width:30rem;margin:2rem auto">
<h1>Log in</h1><p>Demo login: any name (letters, digits, <code>_.-</code>). Replace with your real auth.</p>
<form method="post" action="/login"><label>Name <input name="name" required pattern="[A-Za-z0-9_.\-]{1,40}" autofocus></label>
<button>Log in</button></form></body></html>"#;

#[derive(Clone)]
struct Bff {
    aviary: Client,
    aviary_url: String,
    app_id: String,
    /// Session id -> user name. In memory: a real app keeps sessions in its own store.
    sessions: Arc<Mutex<HashMap<String, String>>>,
}

impl Bff {
    fn user(&self, headers: &HeaderMap) -> Option<String> {
        let sid = session_id(headers)?;
        self.sessions.lock().ok()?.get(sid).cloned()
    }
}

fn session_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("sid="))
}

fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[derive(serde::Deserialize)]
struct Login {
    name: String,
}

async fn login(State(bff): State<Bff>, Form(login): Form<Login>) -> Response {
    if !valid_name(&login.name) {
        return (StatusCode::BAD_REQUEST, "invalid name").into_response();
    }
    let sid = aviary_sdk::new_idempotency_key(); // 128 random bits, URL-safe
    if let Ok(mut sessions) = bff.sessions.lock() {
        sessions.insert(sid.clone(), login.name);
    }
    let cookie = format!("sid={sid}; HttpOnly; SameSite=Lax; Path=/");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn logout(State(bff): State<Bff>, headers: HeaderMap) -> Response {
    if let (Some(sid), Ok(mut sessions)) = (session_id(&headers), bff.sessions.lock()) {
        sessions.remove(sid);
    }
    ([(header::SET_COOKIE, "sid=; Max-Age=0; Path=/")], Redirect::to("/login")).into_response()
}

async fn me(State(bff): State<Bff>, headers: HeaderMap) -> Response {
    match bff.user(&headers) {
        Some(user) => Json(json!({"user": user, "aviaryUrl": bff.aviary_url})).into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(json!({"error": "not logged in"}))).into_response(),
    }
}

/// The one call to Aviary: the token carries only what this user may do.
async fn aviary_token(State(bff): State<Bff>, headers: HeaderMap) -> Response {
    let Some(user) = bff.user(&headers) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "not logged in"}))).into_response();
    };
    let request = TokenRequest::new(user.clone())
        .ttl_s(TOKEN_TTL_S)
        .allow("chat:*", Operation::ALL)
        .allow("cursors:*", [Operation::Subscribe, Operation::Publish])
        .info(json!({"name": user}));
    match bff.aviary.mint_token(&bff.app_id, &request).await {
        Ok(token) => Json(json!({"token": token.token, "expires_at": token.expires_at})).into_response(),
        Err(err) => {
            tracing::warn!(%err, "minting an Aviary token failed");
            (StatusCode::BAD_GATEWAY, Json(json!({"error": "aviary unavailable"}))).into_response()
        }
    }
}

async fn index(State(bff): State<Bff>, headers: HeaderMap) -> Response {
    match bff.user(&headers) {
        Some(_) => Html(INDEX_HTML).into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

fn script(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let aviary_url = std::env::var("AVIARY_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let app_id = std::env::var("AVIARY_APP_ID").map_err(|_| "set AVIARY_APP_ID (aviary dev prints it)")?;
    let api_key = std::env::var("AVIARY_API_KEY").map_err(|_| "set AVIARY_API_KEY (aviary dev prints it)")?;
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let bff = Bff {
        aviary: Client::new(&aviary_url, api_key)?,
        aviary_url,
        app_id,
        sessions: Arc::new(Mutex::new(HashMap::new())),
    };
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { script(APP_JS) }))
        .route("/aviary-client.js", get(|| async { script(CLIENT_JS) }))
        .route("/login", get(|| async { Html(LOGIN_PAGE) }).post(login))
        .route("/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/aviary-token", post(aviary_token))
        .with_state(bff);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("BFF listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
