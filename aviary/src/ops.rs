//! Operational endpoints every Aviary process serves: `/healthz`, `/readyz`, `/openapi.json`
//! and the API reference at `/docs` on the public port, and `/metrics` on the separate metrics
//! listener ([`metrics_router`]), because its series name every tenant and app.
//!
//! `/healthz` answers while the process runs; `/readyz` answers 200 only when every dependency
//! check passes (and 503 while draining), so a load balancer stops sending new connections
//! before a node goes away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa::openapi::OpenApi;

/// One readiness check: a name and an async probe answering `Ok(detail)` or `Err(detail)`.
pub type ReadinessProbe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// What the operational routes need.
#[derive(Clone)]
pub struct Ops {
    pub checks: Vec<(&'static str, ReadinessProbe)>,
    pub openapi: Arc<OpenApi>,
}

/// The operational routes.
pub fn router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .with_state(ops)
}

/// The metrics listener's routes: `/metrics` (Prometheus text format) and `/healthz`.
pub fn metrics_router() -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    for (name, probe) in &ops.checks {
        let (ok, detail) = match probe().await {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        ready &= ok;
        checks.insert((*name).to_owned(), json!({"ok": ok, "detail": detail}));
    }
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks}))).into_response()
}

async fn metrics() -> Response {
    let body = crate::telemetry::prometheus().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn openapi(State(ops): State<Ops>) -> Response {
    Json(ops.openapi.as_ref().clone()).into_response()
}

async fn docs(State(ops): State<Ops>) -> Html<String> {
    Html(utoipa_scalar::Scalar::new(ops.openapi.as_ref().clone()).to_html())
}
