//! What a delivery looks like on the wire: the body of a batch in each format, and its
//! signature headers.
//!
//! Both formats send `{"time_ms": <ms>, "events": [...]}` with events named as Pusher names
//! them, each with an `id` receivers dedupe by.
//! - `aviary`: Aviary channel names; `aviary-signature: t=<unix s>,v1=<hex HMAC-SHA256(endpoint
//!   secret, "<t>.<raw body>")>`.
//! - `pusher`: exactly Pusher's body (Pusher channel names, `data` of client events as a
//!   string), `X-Pusher-Key: <key>` and `X-Pusher-Signature: <hex HMAC-SHA256(secret, raw
//!   body)>` with the app's Pusher credential, which is what Pusher server SDKs' webhook
//!   validation checks.

use aviary_broker::webhooks::QueuedEvent;
use aviary_core::PusherCredential;
use aviary_core::webhook::{WebhookEndpoint, WebhookFormat};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

/// A batch ready to POST: the raw body and the headers that sign it.
#[derive(Debug, Clone)]
pub struct SignedBody {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The `aviary-signature` header value for `body` sent at `t` (Unix seconds).
pub fn aviary_signature(secret: &str, t: i64, body: &[u8]) -> String {
    let t = t.to_string();
    format!("t={t},v1={}", hmac_hex(secret.as_bytes(), &[t.as_bytes(), b".", body]))
}

/// `X-Pusher-Signature` for `body`.
pub fn pusher_signature(secret: &str, body: &[u8]) -> String {
    hmac_hex(secret.as_bytes(), &[body])
}

/// One event as the format shows it.
fn event_json(event: &QueuedEvent, format: WebhookFormat) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), Value::String(event.name.clone()));
    let channel = match format {
        WebhookFormat::Aviary => event.channel.clone(),
        WebhookFormat::Pusher => {
            crate::pusher::names::to_pusher(&event.channel).unwrap_or_else(|| event.channel.clone())
        }
    };
    out.insert("channel".into(), Value::String(channel));
    if let Some(user) = &event.user_id {
        out.insert("user_id".into(), Value::String(user.clone()));
    }
    if let Some(Ok(Value::Object(detail))) = event.detail.as_deref().map(serde_json::from_str::<Value>) {
        for (k, v) in detail {
            let v = match (format, k.as_str(), v) {
                // Pusher sends a client event's data as the JSON text the client sent.
                (WebhookFormat::Pusher, "data", Value::String(s)) => Value::String(s),
                (WebhookFormat::Pusher, "data", other) => Value::String(other.to_string()),
                (_, _, v) => v,
            };
            out.insert(k, v);
        }
    }
    out.insert("id".into(), Value::String(event.id.clone()));
    if format == WebhookFormat::Aviary {
        out.insert("time_ms".into(), Value::from(event.time_ms));
    }
    Value::Object(out)
}

/// Why a batch cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the app has no Pusher credential to sign pusher-format webhooks with")]
    NoPusherCredential,
}

/// The body of `events` for `endpoint`, signed; `now_ms` is the batch's `time_ms`.
pub fn sign(
    endpoint: &WebhookEndpoint,
    pusher: Option<&PusherCredential>,
    events: &[&QueuedEvent],
    now_ms: i64,
) -> Result<SignedBody, SignError> {
    let body = serde_json::json!({
        "time_ms": now_ms,
        "events": events.iter().map(|e| event_json(e, endpoint.format)).collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&body).expect("JSON values serialize");
    let headers = match endpoint.format {
        WebhookFormat::Aviary => vec![("aviary-signature", aviary_signature(&endpoint.secret, now_ms / 1000, &body))],
        WebhookFormat::Pusher => {
            let credential = pusher.ok_or(SignError::NoPusherCredential)?;
            vec![
                ("x-pusher-key", credential.key.clone()),
                ("x-pusher-signature", pusher_signature(&credential.secret, &body)),
            ]
        }
    };
    Ok(SignedBody { body, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_hex_of_the_documented_input() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            pusher_signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let header = aviary_signature("Jefe", 1_700_000_000, b"{}");
        assert_eq!(header, format!("t=1700000000,v1={}", hmac_hex(b"Jefe", &[b"1700000000.{}"])));
    }
}
