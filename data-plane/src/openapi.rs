//! The data plane's OpenAPI document, completed with what its routes answer for reasons outside
//! their handlers, from the facts that cause them (so a new route cannot forget one):
//!
//! - every route takes an app API key (`rest::AppKey`): 401 when it is missing or invalid, 503
//!   when the control plane that checks it is unreachable and the key is not cached, 429 when
//!   the caller's address spent its budget of failed checks or the key's checks are crowded;
//! - a `{channel}` in the path is validated: 400 for an invalid name;
//! - bodies go through `rest::Json`, which refuses as the control plane does
//!   (`aviary_core::problem::BodyRejection`): 400 malformed or of the wrong shape, 413 over
//!   `rest::MAX_BODY_BYTES`, 415 not declared as JSON;
//! - query strings go through `rest::Query`: 400 for anything it cannot parse.
//!
//! Message and presence `data` is any JSON value (docs/protocol.md), whatever Rust type holds it.

use aviary_core::openapi::{add_problem, add_rate_limited, describe_responses, has_query, is_secured, operations_mut};
use utoipa::openapi::schema::{Object, Schema, SchemaType};
use utoipa::openapi::{OpenApi, RefOr};

/// The document of `crate::router`'s REST routes.
pub fn document() -> OpenApi {
    use utoipa::OpenApi as _;
    let mut doc = crate::rest::ApiDoc::openapi();
    for (path, op) in operations_mut(&mut doc) {
        if is_secured(op) {
            add_problem(op, 401, "Missing, malformed, revoked or unknown API key (`unauthorized`).");
            add_problem(
                op,
                503,
                "The API key could not be checked: the control plane is unreachable and the key is not cached; \
                 retry (`unavailable`).",
            );
            add_rate_limited(
                op,
                "Too many failed API key checks from this address, or too many checks of this key in flight \
                 (`rate-limited`); retry after `Retry-After`.",
            );
        } else {
            op.security = Some(Vec::new());
        }
        if path.ends_with("/messages") {
            add_problem(
                op,
                409,
                "An idempotency key of this API key was used earlier with different `data` (`conflict`).",
            );
        }
        if path.contains("{channel}") {
            add_problem(op, 400, "Invalid channel name (`bad-request`).");
        }
        if op.request_body.is_some() {
            add_problem(op, 400, "Invalid body: malformed JSON, or JSON of the wrong shape (`bad-request`).");
            add_problem(op, 413, "The body is larger than the data plane accepts (`payload-too-large`).");
            add_problem(op, 415, "The body is not declared as JSON (`unsupported-media-type`).");
        }
        if has_query(op) {
            add_problem(op, 400, "Invalid query string (`bad-request`).");
        }
        describe_responses(op);
    }
    if let Some(components) = doc.components.as_mut() {
        for schema in components.schemas.values_mut() {
            if let RefOr::T(Schema::Object(object)) = schema
                && let Some(data) = object.properties.get_mut("data")
            {
                *data = RefOr::T(Schema::Object(any_json(data)));
            }
        }
    }
    doc
}

/// A schema accepting any JSON value, keeping the description of the one it replaces.
fn any_json(previous: &RefOr<Schema>) -> Object {
    let mut any = Object::with_type(SchemaType::AnyValue);
    any.description = match previous {
        RefOr::T(Schema::Object(o)) => o.description.clone(),
        _ => None,
    }
    .or_else(|| Some("Any JSON value.".to_owned()));
    any
}
