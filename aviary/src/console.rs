//! The admin console served at `/console`: static HTML, CSS and JS embedded in the binary (no
//! build step), talking to the control-plane REST API of the same origin.
//!
//! The assets live in `aviary/console/`; the SDK bundle the Live tab connects with is the same
//! `aviary/assets/aviary-client.js` the demo uses, served again under `/console/` so the console
//! also works in `aviary control-plane`, which has no demo routes.
//!
//! Every response carries a strict Content-Security-Policy: same-origin scripts, styles and
//! fetches only, no inline script, no framing, and `form-action 'none'` so a form can never
//! navigate (a key typed into it can never end up in a URL, even if the script failed to load).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");
const DOM_JS: &str = include_str!("../console/dom.js");
const API_JS: &str = include_str!("../console/api.js");
const LIVE_JS: &str = include_str!("../console/live.js");
const USAGE_JS: &str = include_str!("../console/usage.js");
const WEBHOOKS_JS: &str = include_str!("../console/webhooks.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const CLIENT_JS: &str = include_str!("../assets/aviary-client.js");

/// Same-origin everything; `connect-src 'self'` covers the API and the WebSocket of this host.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Routes of the admin console.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(|| async { asset("index.html") }))
        .route("/console/", get(|| async { Redirect::permanent("/console") }))
        .route(
            "/console/{file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }),
        )
}

/// One embedded file with its content type and the security headers, or 404.
fn asset(name: &str) -> Response {
    let (body, content_type, cache) = match name {
        // The page is tiny; never cache it, so a new binary's console is picked up at once.
        "index.html" => (INDEX_HTML, "text/html; charset=utf-8", "no-store"),
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8", "no-cache"),
        "dom.js" => (DOM_JS, "text/javascript; charset=utf-8", "no-cache"),
        "api.js" => (API_JS, "text/javascript; charset=utf-8", "no-cache"),
        "live.js" => (LIVE_JS, "text/javascript; charset=utf-8", "no-cache"),
        "usage.js" => (USAGE_JS, "text/javascript; charset=utf-8", "no-cache"),
        "webhooks.js" => (WEBHOOKS_JS, "text/javascript; charset=utf-8", "no-cache"),
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8", "no-cache"),
        "aviary-client.js" => (CLIENT_JS, "text/javascript; charset=utf-8", "no-cache"),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_each_asset_with_its_content_type_and_the_policy() {
        for (name, content_type) in [
            ("index.html", "text/html; charset=utf-8"),
            ("console.js", "text/javascript; charset=utf-8"),
            ("dom.js", "text/javascript; charset=utf-8"),
            ("api.js", "text/javascript; charset=utf-8"),
            ("live.js", "text/javascript; charset=utf-8"),
            ("usage.js", "text/javascript; charset=utf-8"),
            ("webhooks.js", "text/javascript; charset=utf-8"),
            ("console.css", "text/css; charset=utf-8"),
            ("aviary-client.js", "text/javascript; charset=utf-8"),
        ] {
            let response = asset(name);
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            let headers = response.headers();
            assert_eq!(headers[header::CONTENT_TYPE], content_type, "{name}");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{name}");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
        }
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("secrets").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn page_loads_only_same_origin_assets() {
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(!INDEX_HTML.contains("<script>"), "inline scripts are refused by the policy");
        assert!(!INDEX_HTML.contains("style="), "inline styles are refused by the policy");
    }
}
