//! The responses a control-plane route gives for reasons outside its handler, added to the
//! OpenAPI document from the facts that cause them, so a new route cannot forget one:
//!
//! - credentials are checked by an extractor: every secured route can answer 401, and reads the
//!   store (503 when it is unreachable);
//! - JSON bodies go through `extract::Json`: 400 (invalid), 413 (over the limit), 415 (not
//!   declared as JSON); query strings through `extract::Query`: 400;
//! - the rate limiters wrap the whole router: every route can answer 429 with `Retry-After`.
//!
//! Public routes get an explicit `security: []`, and every response still without a
//! description gets the standard one for its status.

use aviary_core::openapi::{add_problem, add_rate_limited, describe_responses, has_query, is_secured, operations_mut};
use utoipa::Modify;
use utoipa::openapi::OpenApi;

/// The [`Modify`] that completes the document's responses.
pub(super) struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for (_, op) in operations_mut(openapi) {
            if is_secured(op) {
                add_problem(op, 401, "Missing, malformed, revoked or unknown credentials (`unauthorized`).");
                add_problem(op, 503, "The store is unreachable; retry later (`unavailable`).");
            } else {
                op.security = Some(Vec::new());
            }
            if op.request_body.is_some() {
                add_problem(
                    op,
                    400,
                    "Invalid body: malformed JSON, an unknown field, a value out of range (`bad-request`).",
                );
                add_problem(op, 413, "The body is larger than the control plane accepts (`payload-too-large`).");
                add_problem(
                    op,
                    415,
                    "The body is not declared as JSON: send `Content-Type: application/json` (`unsupported-media-type`).",
                );
            }
            if has_query(op) {
                add_problem(
                    op,
                    400,
                    "Invalid query string: an unknown parameter or a value out of range (`bad-request`).",
                );
            }
            add_rate_limited(
                op,
                "Too many requests from this client address or with this credential (`rate-limited`); retry after \
                 `Retry-After` seconds.",
            );
            describe_responses(op);
        }
    }
}
