//! The demo `aviary dev` serves at `/`: a chat room with presence and live cursors, plus the
//! tiny token endpoint it needs.
//!
//! In a real deployment the app's own backend mints tokens with its API key (the BFF pattern).
//! Here the binary plays that backend for the `demo` app only: `POST /demo/token` mints a
//! ten-minute token limited to the `chat:*` and `cursors:*` channels. The demo API key is kept in
//! the data dir (mode 0600) because its secret is shown only once, at the first start.

use std::path::{Path, PathBuf};

use aviary_control_plane::{ControlPlaneState, DemoCredentials};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const DEMO_JS: &str = include_str!("../assets/demo.js");
const CLIENT_JS: &str = include_str!("../assets/aviary-client.js");

/// Lifetime of demo tokens, in seconds.
const DEMO_TOKEN_TTL_S: u32 = 600;

/// What the demo endpoint needs to mint tokens for the demo app.
#[derive(Clone, Serialize, Deserialize)]
pub struct DemoApp {
    pub app_id: String,
    pub api_key: String,
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

fn demo_file(data_dir: &Path) -> PathBuf {
    data_dir.join("demo.json")
}

/// Saves freshly created demo credentials so later starts can still serve the demo.
pub fn remember(data_dir: &Path, created: &DemoCredentials) -> anyhow::Result<DemoApp> {
    let app = DemoApp { app_id: created.app_id.clone(), api_key: created.api_key.clone() };
    crate::private_file::write(&demo_file(data_dir), &serde_json::to_vec_pretty(&app)?)?;
    Ok(app)
}

/// The demo credentials saved by an earlier start, if any.
pub fn recall(data_dir: &Path) -> Option<DemoApp> {
    let bytes = std::fs::read(demo_file(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[derive(Clone)]
struct DemoState {
    control_plane: ControlPlaneState,
    app: Option<DemoApp>,
}

/// `/`, its scripts, and `POST /demo/token`.
pub fn router(control_plane: ControlPlaneState, app: Option<DemoApp>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/demo.js", get(|| async { javascript(DEMO_JS) }))
        .route("/aviary-client.js", get(|| async { javascript(CLIENT_JS) }))
        .route("/demo/token", post(mint))
        .with_state(DemoState { control_plane, app })
}

fn javascript(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoTokenRequest {
    client_id: String,
    /// Shorter lifetimes (for trying token refresh); capped at [`DEMO_TOKEN_TTL_S`].
    #[serde(default)]
    ttl_s: Option<u32>,
}

fn problem(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Response {
    let body = aviary_core::problem::Problem::new(slug, title, status.as_u16(), detail);
    (status, [(header::CONTENT_TYPE, aviary_core::problem::PROBLEM_JSON)], Json(body)).into_response()
}

async fn mint(
    State(state): State<DemoState>,
    body: Result<Json<DemoTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Some(app) = &state.app else {
        return problem(
            StatusCode::NOT_FOUND,
            "demo-unavailable",
            "Demo unavailable",
            "the demo app's credentials are not in the data dir; start with an empty --data-dir to recreate them",
        );
    };
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return problem(StatusCode::BAD_REQUEST, "bad-request", "Bad request", rejection.body_text());
        }
    };
    let key = match state.control_plane.keys().verify_api_key(&app.api_key).await {
        Ok(key) => key,
        Err(_) => {
            return problem(
                StatusCode::NOT_FOUND,
                "demo-unavailable",
                "Demo unavailable",
                "the demo API key was revoked or deleted",
            );
        }
    };
    let token_request = json!({
        "client_id": request.client_id,
        "ttl_s": request.ttl_s.unwrap_or(DEMO_TOKEN_TTL_S).clamp(1, DEMO_TOKEN_TTL_S),
        "capabilities": {
            "chat:*": ["subscribe", "publish", "presence", "history"],
            "cursors:*": ["subscribe", "publish", "presence"],
        },
        "info": {"name": request.client_id},
    });
    let token_request = match serde_json::from_value(token_request) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", e.to_string()),
    };
    match state.control_plane.issue_token(&key, &app.app_id, token_request) {
        Ok(issued) => (StatusCode::OK, Json(issued)).into_response(),
        Err(err) => err.into_response(),
    }
}
