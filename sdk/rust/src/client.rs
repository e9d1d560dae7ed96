//! The REST client for app backends: mint connection tokens on the control plane; publish, read
//! history, presence and active channels on the data plane. Retries follow [`RetryPolicy`].

use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::types::{
    BatchMessage, BatchResult, ChannelInfo, History, IssuedToken, PresenceMember, StreamPosition, TokenRequest,
};

/// Configures a [`Client`]. Start with [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    control_plane_url: String,
    data_plane_url: Option<String>,
    api_key: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    auto_idempotency_keys: bool,
    http: Option<reqwest::Client>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("control_plane_url", &self.control_plane_url)
            .field("data_plane_url", &self.data_plane_url)
            .field("api_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("auto_idempotency_keys", &self.auto_idempotency_keys)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The data-plane base URL (publish, history, presence, channels), when it differs from the
    /// control plane's (the default: `aviary dev` and single-binary deployments serve both).
    pub fn data_plane_url(mut self, url: impl Into<String>) -> Self {
        self.data_plane_url = Some(url.into());
        self
    }

    /// The whole-request timeout of one attempt (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The TCP connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]: 4 attempts).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Whether publishes without an explicit idempotency key get a random one (default true).
    ///
    /// A publish is only retried when it carries a key, because the server deduplicates retries
    /// by key: without one, a retry after a lost answer would publish the message twice. With this
    /// off, key-less publishes are sent exactly once and never retried.
    pub fn auto_idempotency_keys(mut self, on: bool) -> Self {
        self.auto_idempotency_keys = on;
        self
    }

    /// Uses this `reqwest::Client` (its own timeouts, proxy and TLS settings apply; the builder's
    /// timeouts are then ignored).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let control_plane = parse_base(&self.control_plane_url)?;
        let data_plane = match &self.data_plane_url {
            Some(url) => parse_base(url)?,
            None => control_plane.clone(),
        };
        // Checked once here so a pasted key with a stray newline fails loudly, not per request.
        if reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.api_key)).is_err() {
            return Err(Error::InvalidConfig(
                "the API key contains characters not allowed in an HTTP header".to_owned(),
            ));
        }
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(concat!("aviary-sdk-rust/", env!("CARGO_PKG_VERSION")))
                .build()?,
        };
        Ok(Client {
            http,
            control_plane,
            data_plane,
            api_key: self.api_key,
            retry: self.retry,
            auto_idempotency_keys: self.auto_idempotency_keys,
        })
    }
}

fn parse_base(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
    if parsed.cannot_be_a_base() || !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidUrl(format!("{url}: expected an http(s) base URL")));
    }
    Ok(parsed)
}

/// A REST client authenticated with one app API key (`avk_...`). Cheap to clone; clones share
/// the connection pool.
///
/// Every method takes the `app_id` the key belongs to (a key of another app gets `forbidden`).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    control_plane: Url,
    data_plane: Url,
    api_key: String,
    retry: RetryPolicy,
    auto_idempotency_keys: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("control_plane", &self.control_plane.as_str())
            .field("data_plane", &self.data_plane.as_str())
            .field("api_key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct PublishBody<'a> {
    data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    messages: &'a [BatchMessage],
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: String,
    expires_at: String,
}

#[derive(serde::Deserialize)]
struct BatchResponse {
    results: Vec<BatchResult>,
}

#[derive(serde::Deserialize)]
struct PresenceResponse {
    members: Vec<PresenceMember>,
}

#[derive(serde::Deserialize)]
struct ChannelsResponse {
    channels: Vec<ChannelInfo>,
}

#[derive(serde::Deserialize, Default)]
struct ProblemBody {
    #[serde(rename = "type", default)]
    problem_type: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    title: Option<String>,
}

impl Client {
    /// A client for a server that serves both planes at `base_url` (e.g. `aviary dev`'s
    /// `http://127.0.0.1:8080`), with the default timeouts and retry policy.
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Result<Client> {
        Client::builder(base_url, api_key).build()
    }

    /// A builder; `control_plane_url` also serves the data plane unless
    /// [`ClientBuilder::data_plane_url`] says otherwise.
    pub fn builder(control_plane_url: impl Into<String>, api_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            control_plane_url: control_plane_url.into(),
            data_plane_url: None,
            api_key: api_key.into(),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            auto_idempotency_keys: true,
            http: None,
        }
    }

    /// Mints a connection token for one of the app's end users (`POST /v1/apps/{app_id}/tokens`).
    /// Retried like a read: a retry at worst mints a second, unused token.
    pub async fn mint_token(&self, app_id: &str, request: &TokenRequest) -> Result<IssuedToken> {
        let url = endpoint(&self.control_plane, &["v1", "apps", app_id, "tokens"]);
        let minted: TokenResponse = self.call(Method::POST, url, Some(request), true).await?;
        let expires_at = chrono::DateTime::parse_from_rfc3339(&minted.expires_at)
            .map_err(|e| Error::Decode(format!("token expires_at {:?}: {e}", minted.expires_at)))?
            .timestamp();
        Ok(IssuedToken { token: minted.token, expires_at })
    }

    /// Publishes `data` on `channel` and returns where it landed.
    ///
    /// `idempotency_key`: a retry with the same key on the same channel within 5 minutes returns
    /// the first result and publishes nothing. With `None` the client generates a random key (see
    /// [`ClientBuilder::auto_idempotency_keys`]) so that its own retries are safe; pass your own
    /// key (an order id, an event id) to also make *your* retries safe across process restarts.
    pub async fn publish(
        &self,
        app_id: &str,
        channel: &str,
        data: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<StreamPosition> {
        let generated = (idempotency_key.is_none() && self.auto_idempotency_keys).then(new_idempotency_key);
        let key = idempotency_key.or(generated.as_deref());
        let body = PublishBody { data: to_value(data)?, idempotency_key: key };
        let url = endpoint(&self.data_plane, &["v1", "apps", app_id, "channels", channel, "messages"]);
        self.call(Method::POST, url, Some(&body), key.is_some()).await
    }

    /// Publishes 1 to 100 messages, on any channels of the app, in order
    /// (`POST /v1/apps/{app_id}/messages`). All are checked before any is published.
    ///
    /// Messages without a key get a generated one (unless auto keys are off); the batch is retried
    /// only when every message has a key, so a retry after a partial failure publishes each
    /// message at most once.
    pub async fn publish_batch(&self, app_id: &str, messages: Vec<BatchMessage>) -> Result<Vec<BatchResult>> {
        let mut messages = messages;
        if self.auto_idempotency_keys {
            for m in messages.iter_mut().filter(|m| m.idempotency_key.is_none()) {
                m.idempotency_key = Some(new_idempotency_key());
            }
        }
        let idempotent = messages.iter().all(|m| m.idempotency_key.is_some());
        let url = endpoint(&self.data_plane, &["v1", "apps", app_id, "messages"]);
        let response: BatchResponse =
            self.call(Method::POST, url, Some(&BatchBody { messages: &messages }), idempotent).await?;
        Ok(response.results)
    }

    /// Reads a channel's history: the latest `limit` publications (server default 100, max 1000),
    /// or with `since` the ones after that position, oldest first.
    pub async fn history(
        &self,
        app_id: &str,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<u32>,
    ) -> Result<History> {
        let mut url = endpoint(&self.data_plane, &["v1", "apps", app_id, "channels", channel, "history"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(since) = since {
                query.append_pair("since_offset", &since.offset.to_string()).append_pair("epoch", &since.epoch);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        strip_empty_query(&mut url);
        self.call::<(), _>(Method::GET, url, None, true).await
    }

    /// The channel's presence members.
    pub async fn presence(&self, app_id: &str, channel: &str) -> Result<Vec<PresenceMember>> {
        let url = endpoint(&self.data_plane, &["v1", "apps", app_id, "channels", channel, "presence"]);
        let response: PresenceResponse = self.call::<(), _>(Method::GET, url, None, true).await?;
        Ok(response.members)
    }

    /// The app's active channels (with subscribers on the answering node), optionally only those
    /// whose name starts with `prefix`.
    pub async fn channels(&self, app_id: &str, prefix: Option<&str>) -> Result<Vec<ChannelInfo>> {
        let mut url = endpoint(&self.data_plane, &["v1", "apps", app_id, "channels"]);
        if let Some(prefix) = prefix {
            url.query_pairs_mut().append_pair("prefix", prefix);
        }
        let response: ChannelsResponse = self.call::<(), _>(Method::GET, url, None, true).await?;
        Ok(response.channels)
    }

    /// Sends one request, retrying per the policy when `idempotent`, and decodes a 2xx JSON body.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<T> {
        let mut retry = 0u32;
        loop {
            let mut request = self.http.request(method.clone(), url.clone()).bearer_auth(&self.api_key);
            if let Some(body) = body {
                request = request.json(body);
            }
            let (error, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let bytes = response.bytes().await?;
                    return serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()));
                }
                Ok(response) => {
                    let retryable = is_retryable_status(response.status());
                    let (error, retry_after) = problem_error(response).await;
                    if !retryable {
                        return Err(error);
                    }
                    (error, retry_after)
                }
                // A builder error (bad URL, body that won't serialize) fails the same way every time.
                Err(e) if e.is_builder() => return Err(e.into()),
                Err(e) => (Error::Transport(e), None),
            };
            let delay = if idempotent { self.retry.delay(retry, retry_after) } else { None };
            match delay {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                None => return Err(error),
            }
        }
    }
}

fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Turns an error response into an [`Error`] and the server's `Retry-After` (delta-seconds form,
/// the one Aviary sends).
async fn problem_error(response: reqwest::Response) -> (Error, Option<Duration>) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let problem: ProblemBody = response.json().await.unwrap_or_default();
    let problem_type = problem.problem_type.unwrap_or_else(|| "about:blank".to_owned());
    if status == StatusCode::TOO_MANY_REQUESTS && problem_type.ends_with("/rate-limited") {
        return (Error::RateLimited { retry_after }, retry_after);
    }
    let detail =
        problem.detail.or(problem.title).unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    (Error::Api { status: status.as_u16(), problem_type, detail }, retry_after)
}

/// `base` + path segments, each percent-encoded (channel names may contain `/`, `#`, `@`...).
fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn strip_empty_query(url: &mut Url) {
    if url.query() == Some("") {
        url.set_query(None);
    }
}

fn to_value(data: &impl Serialize) -> Result<Value> {
    serde_json::to_value(data).map_err(|e| Error::Decode(format!("data does not serialize to JSON: {e}")))
}

/// A fresh random idempotency key (`sdk-` + a UUIDv4).
pub fn new_idempotency_key() -> String {
    format!("sdk-{}", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_percent_encoded_as_one_path_segment() {
        let base = Url::parse("http://h:1/prefix/").unwrap();
        let url = endpoint(&base, &["v1", "apps", "app_1", "channels", "a/b#c d:e", "history"]);
        assert_eq!(url.as_str(), "http://h:1/prefix/v1/apps/app_1/channels/a%2Fb%23c%20d:e/history");
    }

    #[test]
    fn only_http_base_urls_are_accepted() {
        assert!(parse_base("ftp://x").is_err());
        assert!(parse_base("not a url").is_err());
        assert!(parse_base("http://127.0.0.1:8080").is_ok());
    }

    #[test]
    fn an_api_key_that_cannot_be_a_header_is_refused_at_build_time() {
        let err = Client::new("http://127.0.0.1:1", "created\navk_x").expect_err("newline in the key");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
    }
}
