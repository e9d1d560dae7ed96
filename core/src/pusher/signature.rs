//! Pusher's signatures, checked the way Pusher defines them (`docs/pusher.md` cites the
//! definitions; the tests use Pusher's published worked examples).
//!
//! Three things are signed with the app secret, each an HMAC-SHA256 in lowercase hex:
//! - **Channel authorization** (subscribing to `private-`/`presence-` channels):
//!   `<socket_id>:<channel>` or, with presence data, `<socket_id>:<channel>:<channel_data>`;
//!   the client presents `auth = "<key>:<hex>"`.
//! - **User authentication** (`pusher:signin`): `<socket_id>::user::<user_data>`.
//! - **HTTP API requests**: `METHOD\nPATH\nQUERY` where QUERY is every query parameter but
//!   `auth_signature`, keys lowercased, sorted by key, joined as `k=v` with `&`, *not*
//!   URL-encoded. `auth_timestamp` must be within [`TIMESTAMP_WINDOW_S`] of the server's clock
//!   and a request with a body carries `body_md5`, the body's MD5 in hex.
//!
//! Every comparison of a presented signature goes through `ring::hmac::verify`, which compares
//! in constant time, so a client cannot learn a valid signature byte by byte from timings.

use ring::hmac;

/// How far `auth_timestamp` may be from the server's clock, either way (Pusher's 600 s).
pub const TIMESTAMP_WINDOW_S: i64 = 600;

/// Why a presented signature was refused. The `Display` texts are what clients are told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("auth must be \"<key>:<signature>\"")]
    Malformed,
    #[error("auth names another key than the connection's")]
    WrongKey,
    #[error("invalid signature")]
    BadSignature,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("query parameter {0} is given twice")]
    Duplicate(String),
    #[error("unsupported auth_version (use 1.0)")]
    Version,
    #[error("auth_timestamp is not within {TIMESTAMP_WINDOW_S} s of the server's time")]
    Stale,
    #[error("body_md5 does not match the body")]
    BodyMd5,
}

fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &str, message: &str) -> String {
    hex::encode(hmac::sign(&key(secret), message.as_bytes()).as_ref())
}

/// Checks a hex signature of `message`, in constant time.
pub fn verify(secret: &str, message: &str, presented_hex: &str) -> Result<(), SignatureError> {
    // 32 bytes = 64 hex digits; decoding is not secret-dependent, the comparison is ring's.
    let presented = hex::decode(presented_hex).map_err(|_| SignatureError::BadSignature)?;
    hmac::verify(&key(secret), message.as_bytes(), &presented).map_err(|_| SignatureError::BadSignature)
}

/// What a channel authorization signs.
pub fn channel_string(socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// What a user authentication (`pusher:signin`) signs.
pub fn user_string(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// The `auth` value a backend returns for a channel (what Pusher's SDKs compute).
pub fn channel_auth(app_key: &str, secret: &str, socket_id: &str, channel: &str, channel_data: Option<&str>) -> String {
    format!("{app_key}:{}", sign(secret, &channel_string(socket_id, channel, channel_data)))
}

/// Splits `"<key>:<hex>"` and checks the key is `app_key`.
fn split_auth<'a>(auth: &'a str, app_key: &str) -> Result<&'a str, SignatureError> {
    let (presented_key, signature) = auth.rsplit_once(':').ok_or(SignatureError::Malformed)?;
    if presented_key != app_key {
        return Err(SignatureError::WrongKey);
    }
    Ok(signature)
}

/// Checks the `auth` a client presents to subscribe to `channel` (`channel_data` for presence).
pub fn verify_channel_auth(
    app_key: &str,
    secret: &str,
    auth: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> Result<(), SignatureError> {
    let signature = split_auth(auth, app_key)?;
    verify(secret, &channel_string(socket_id, channel, channel_data), signature)
}

/// Checks the `auth` a client presents with `pusher:signin`.
pub fn verify_user_auth(
    app_key: &str,
    secret: &str,
    auth: &str,
    socket_id: &str,
    user_data: &str,
) -> Result<(), SignatureError> {
    let signature = split_auth(auth, app_key)?;
    verify(secret, &user_string(socket_id, user_data), signature)
}

/// Is `socket_id` of Pusher's `<digits>.<digits>` form (what the SDKs check before signing)?
pub fn valid_socket_id(socket_id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    socket_id.split_once('.').is_some_and(|(a, b)| digits(a) && digits(b))
}

/// The parts of an HTTP API request its signature covers. `query` holds the decoded query
/// parameters in any order, `auth_signature` included.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

impl<'a> ApiRequest<'a> {
    /// The value of query parameter `name` (exact, lowercase name).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.query.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `auth_key` the request names, to look its credential up.
    pub fn auth_key(&self) -> Option<&'a str> {
        self.param("auth_key")
    }

    /// The string Pusher signs for this request.
    pub fn string_to_sign(&self) -> Result<String, SignatureError> {
        let mut params: Vec<(String, &str)> = Vec::with_capacity(self.query.len());
        for (k, v) in self.query {
            let k = k.to_ascii_lowercase();
            if k == "auth_signature" {
                continue;
            }
            if params.iter().any(|(seen, _)| *seen == k) {
                return Err(SignatureError::Duplicate(k));
            }
            params.push((k, v.as_str()));
        }
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(format!("{}\n{}\n{}", self.method.to_ascii_uppercase(), self.path, query.join("&")))
    }

    /// Checks the request's signature with `secret` at Unix time `now`: version, timestamp
    /// window, `body_md5` (when there is a body), then the HMAC in constant time.
    pub fn verify(&self, secret: &str, now: i64) -> Result<(), SignatureError> {
        let signature = self.param("auth_signature").ok_or(SignatureError::Missing("auth_signature"))?;
        let version = self.param("auth_version").ok_or(SignatureError::Missing("auth_version"))?;
        if version != "1.0" {
            return Err(SignatureError::Version);
        }
        let timestamp: i64 = self
            .param("auth_timestamp")
            .ok_or(SignatureError::Missing("auth_timestamp"))?
            .parse()
            .map_err(|_| SignatureError::Stale)?;
        if now.abs_diff(timestamp) > TIMESTAMP_WINDOW_S.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        if !self.body.is_empty() {
            let md5 = self.param("body_md5").ok_or(SignatureError::Missing("body_md5"))?;
            if !md5.eq_ignore_ascii_case(&body_md5(self.body)) {
                return Err(SignatureError::BodyMd5);
            }
        }
        verify(secret, &self.string_to_sign()?, signature)
    }
}

/// Lowercase hex MD5 of a request body.
pub fn body_md5(body: &[u8]) -> String {
    format!("{:x}", md5::compute(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher's published worked examples ("Authentication and authorization signatures" and
    // "HTTP API reference" in Pusher's library auth reference).
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn private_channel_authorization_matches_pushers_example() {
        let auth = channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None);
        assert_eq!(auth, "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert_eq!(verify_channel_auth(KEY, SECRET, &auth, "1234.1234", "private-foobar", None), Ok(()));
    }

    #[test]
    fn presence_channel_authorization_signs_the_channel_data() {
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Pusher"}}"#;
        let auth = format!("{KEY}:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c");
        assert_eq!(verify_channel_auth(KEY, SECRET, &auth, "1234.1234", "presence-foobar", Some(data)), Ok(()));
        let forged = r#"{"user_id":11,"user_info":{"name":"Mr. Pusher"}}"#;
        assert_eq!(
            verify_channel_auth(KEY, SECRET, &auth, "1234.1234", "presence-foobar", Some(forged)),
            Err(SignatureError::BadSignature),
            "another user id does not verify"
        );
    }

    #[test]
    fn user_authentication_matches_pushers_example() {
        let auth = format!("{KEY}:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba");
        assert_eq!(verify_user_auth(KEY, SECRET, &auth, "1234.1234", r#"{"id":"12345"}"#), Ok(()));
        assert_eq!(
            verify_user_auth(KEY, SECRET, &auth, "1234.1235", r#"{"id":"12345"}"#),
            Err(SignatureError::BadSignature),
            "bound to the socket"
        );
    }

    #[test]
    fn channel_authorization_refuses_other_sockets_channels_keys_and_garbage() {
        let auth = channel_auth(KEY, SECRET, "1234.1234", "private-foobar", None);
        let check =
            |auth: &str, socket: &str, channel: &str| verify_channel_auth(KEY, SECRET, auth, socket, channel, None);
        assert_eq!(check(&auth, "1234.1235", "private-foobar"), Err(SignatureError::BadSignature));
        assert_eq!(check(&auth, "1234.1234", "private-other"), Err(SignatureError::BadSignature));
        let other_key = auth.replacen(KEY, "0000000000000000000a", 1);
        assert_eq!(check(&other_key, "1234.1234", "private-foobar"), Err(SignatureError::WrongKey));
        assert_eq!(check("nocolon", "1234.1234", "private-foobar"), Err(SignatureError::Malformed));
        assert_eq!(check(&format!("{KEY}:zz"), "1234.1234", "private-foobar"), Err(SignatureError::BadSignature));
        assert_eq!(check(&auth[..auth.len() - 2], "1234.1234", "private-foobar"), Err(SignatureError::BadSignature));
        let with_wrong_secret = channel_auth(KEY, "another-secret", "1234.1234", "private-foobar", None);
        assert_eq!(check(&with_wrong_secret, "1234.1234", "private-foobar"), Err(SignatureError::BadSignature));
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;

    fn example(signature: &str) -> Vec<(String, String)> {
        query(&[
            ("auth_signature", signature),
            ("auth_version", "1.0"),
            ("auth_key", KEY),
            ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
            ("auth_timestamp", "1353088179"),
        ])
    }

    const EXAMPLE_SIGNATURE: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    #[test]
    fn http_api_request_matches_pushers_example() {
        assert_eq!(body_md5(BODY.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let q = example(EXAMPLE_SIGNATURE);
        let request = ApiRequest { method: "POST", path: "/apps/3/events", query: &q, body: BODY.as_bytes() };
        assert_eq!(
            request.string_to_sign().unwrap(),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
        assert_eq!(request.verify(SECRET, 1353088179 + 599), Ok(()));
        assert_eq!(request.auth_key(), Some(KEY));
    }

    #[test]
    fn http_api_refuses_stale_tampered_and_incomplete_requests() {
        let q = example(EXAMPLE_SIGNATURE);
        let ok = ApiRequest { method: "POST", path: "/apps/3/events", query: &q, body: BODY.as_bytes() };
        assert_eq!(ok.verify(SECRET, 1353088179 + 601), Err(SignatureError::Stale));
        assert_eq!(ok.verify(SECRET, 1353088179 - 601), Err(SignatureError::Stale));
        assert_eq!(ok.verify("wrong-secret", 1353088179), Err(SignatureError::BadSignature));
        let other_body = r#"{"name":"foo","channels":["project-4"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(
            ApiRequest { body: other_body.as_bytes(), ..ok }.verify(SECRET, 1353088179),
            Err(SignatureError::BodyMd5)
        );
        assert_eq!(
            ApiRequest { path: "/apps/4/events", ..ok }.verify(SECRET, 1353088179),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(ApiRequest { method: "GET", ..ok }.verify(SECRET, 1353088179), Err(SignatureError::BadSignature));

        let mut extra = q.clone();
        extra.push(("socket_id".into(), "1.1".into()));
        assert_eq!(
            ApiRequest { query: &extra, ..ok }.verify(SECRET, 1353088179),
            Err(SignatureError::BadSignature),
            "every parameter is signed"
        );
        let mut twice = q.clone();
        twice.push(("AUTH_KEY".into(), KEY.into()));
        assert!(matches!(
            ApiRequest { query: &twice, ..ok }.verify(SECRET, 1353088179),
            Err(SignatureError::Duplicate(_))
        ));
        let without = |name: &str| q.iter().filter(|(k, _)| k != name).cloned().collect::<Vec<_>>();
        for (name, error) in [
            ("auth_signature", SignatureError::Missing("auth_signature")),
            ("auth_version", SignatureError::Missing("auth_version")),
            ("auth_timestamp", SignatureError::Missing("auth_timestamp")),
            ("body_md5", SignatureError::Missing("body_md5")),
        ] {
            let q = without(name);
            assert_eq!(ApiRequest { query: &q, ..ok }.verify(SECRET, 1353088179), Err(error), "{name}");
        }
        for extreme in [i64::MIN, i64::MAX] {
            let mut far = q.clone();
            far.iter_mut().find(|(k, _)| k == "auth_timestamp").unwrap().1 = extreme.to_string();
            assert_eq!(
                ApiRequest { query: &far, ..ok }.verify(SECRET, 1353088179),
                Err(SignatureError::Stale),
                "a timestamp at the edge of i64 is stale, not an overflow"
            );
        }
        let mut v2 = q.clone();
        v2.iter_mut().find(|(k, _)| k == "auth_version").unwrap().1 = "2.0".into();
        assert_eq!(ApiRequest { query: &v2, ..ok }.verify(SECRET, 1353088179), Err(SignatureError::Version));
    }

    #[test]
    fn http_api_signs_decoded_values_with_lowercased_sorted_keys() {
        // GET with no body: no body_md5 needed; values are signed as decoded (no escaping).
        let mut q = query(&[
            ("auth_key", KEY),
            ("auth_timestamp", "1700000000"),
            ("auth_version", "1.0"),
            ("Info", "user_count,subscription_count"),
            ("filter_by_prefix", "presence-"),
        ]);
        let request = ApiRequest { method: "get", path: "/apps/3/channels", query: &q, body: b"" };
        let to_sign = request.string_to_sign().unwrap();
        assert_eq!(
            to_sign,
            "GET\n/apps/3/channels\nauth_key=278d425bdf160c739803&auth_timestamp=1700000000&auth_version=1.0&filter_by_prefix=presence-&info=user_count,subscription_count"
        );
        q.push(("auth_signature".into(), sign(SECRET, &to_sign)));
        let signed = ApiRequest { method: "get", path: "/apps/3/channels", query: &q, body: b"" };
        assert_eq!(signed.verify(SECRET, 1700000000), Ok(()));
    }

    #[test]
    fn socket_ids_are_digits_dot_digits() {
        assert!(valid_socket_id("1234.1234"));
        assert!(valid_socket_id("0.1"));
        for bad in ["1234", "1234.", ".1", "12a.3", "1.2.3", "", "1:2", &format!("{}.1", "9".repeat(21))] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
