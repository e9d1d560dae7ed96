//! The admin console served at `/console` (filled in by the console work).

use axum::Router;

/// Routes of the admin console.
pub fn router() -> Router {
    Router::new()
}
