//! Request extractors that fail with problem+json instead of axum's plain-text rejections.
//!
//! Every JSON body goes through [`Json`]: syntax errors, unknown fields (all request types use
//! `deny_unknown_fields`), wrong types and missing fields are 400 `bad-request` with serde's
//! message as the detail; a body over the limit is 413; a body not declared as JSON is 415
//! ([`BodyRejection`], shared with the data plane).

use aviary_core::problem::BodyRejection;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ControlPlaneState;
use crate::error::Error;

/// A JSON request body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<ControlPlaneState> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &ControlPlaneState) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection, state.config().body_limit_bytes)),
        }
    }
}

fn json_rejection(rejection: JsonRejection, limit: usize) -> Error {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => BodyRejection::NotJson.into(),
        JsonRejection::BytesRejection(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            BodyRejection::TooLarge { limit }.into()
        }
        JsonRejection::JsonDataError(e) => BodyRejection::Invalid(e.body_text()).into(),
        JsonRejection::JsonSyntaxError(e) => BodyRejection::Malformed(e.body_text()).into(),
        other => Error::invalid(other.body_text()),
    }
}

/// Query string parameters.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<ControlPlaneState> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ControlPlaneState) -> Result<Self, Error> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(Error::invalid(e.body_text())),
            Err(other) => Err(Error::invalid(other.body_text())),
        }
    }
}
