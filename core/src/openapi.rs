//! Building blocks both planes use to complete their OpenAPI documents with the responses a
//! route gives for reasons outside its handler (credential extractors, body and query parsing,
//! rate limiters). Each plane states those facts once, in its own document modifier, so a route
//! added later gets them without anyone remembering to annotate it.

use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::schema::Type;
use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

use crate::problem::PROBLEM_JSON;

/// Every operation of the document, with its path.
pub fn operations_mut(doc: &mut OpenApi) -> impl Iterator<Item = (&str, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| methods(item).map(move |op| (path.as_str(), op)))
}

fn methods(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.patch, &mut item.delete].into_iter().flatten()
}

/// Whether the operation requires credentials (any security requirement).
pub fn is_secured(op: &Operation) -> bool {
    op.security.as_ref().is_some_and(|s| !s.is_empty())
}

/// Whether the operation takes query parameters.
pub fn has_query(op: &Operation) -> bool {
    op.parameters.iter().flatten().any(|p| matches!(p, RefOr::T(p) if matches!(p.parameter_in, ParameterIn::Query)))
}

/// Documents a problem+json response for `status`, unless the handler documents that status.
pub fn add_problem(op: &mut Operation, status: u16, description: &str) {
    op.responses.responses.entry(status.to_string()).or_insert_with(|| RefOr::T(problem(description)));
}

/// Documents a 429 with `Retry-After`, unless the handler documents one.
pub fn add_rate_limited(op: &mut Operation, description: &str) {
    op.responses.responses.entry("429".to_owned()).or_insert_with(|| {
        let mut response = problem(description);
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).build();
        let header =
            HeaderBuilder::new().schema(Some(seconds)).description(Some("Seconds to wait before retrying.")).build();
        response.headers.insert("Retry-After".to_owned(), RefOr::T(header));
        RefOr::T(response)
    });
}

/// Gives every response still without a description the standard one for its status (OpenAPI
/// requires one on each response).
pub fn describe_responses(op: &mut Operation) {
    for (status, response) in op.responses.responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = standard_description(status).to_owned();
        }
    }
}

/// The description of a status when nothing more specific was written.
pub fn standard_description(status: &str) -> &'static str {
    match status {
        "200" => "Done; the body is the result.",
        "201" => "Created; the body is the new resource.",
        "204" => "Done; no body.",
        "400" => "Invalid request: malformed body or query, an unknown field, a value out of range (`bad-request`).",
        "401" => "Missing, malformed, revoked or unknown credentials (`unauthorized`).",
        "403" => "The credentials may not do this (`forbidden`).",
        "404" => "No such resource, or not visible to these credentials (`not-found`).",
        "409" => "A resource with that name already exists (`conflict`).",
        "413" => "The body is larger than accepted (`payload-too-large`).",
        "415" => "The body is not declared as JSON: send `Content-Type: application/json` (`unsupported-media-type`).",
        "429" => "Too many requests (`rate-limited`); retry after `Retry-After` seconds.",
        "503" => "A dependency is unreachable; retry later (`unavailable`).",
        _ => "See the problem document's `type`.",
    }
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
        .build()
}
