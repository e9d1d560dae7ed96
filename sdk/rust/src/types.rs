//! The request and response types of the REST API, as the SDK's callers see them (serde mirrors of
//! `openapi/aviary.json`; field names are the wire names).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One thing a client may do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Receive the channel's messages.
    Subscribe,
    /// Publish on the channel.
    Publish,
    /// Enter presence and read the member list.
    Presence,
    /// Read the channel's history.
    History,
}

impl Operation {
    /// The wire name (`subscribe`, `publish`, `presence`, `history`).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Subscribe => "subscribe",
            Operation::Publish => "publish",
            Operation::Presence => "presence",
            Operation::History => "history",
        }
    }

    /// All four operations.
    pub const ALL: [Operation; 4] = [Operation::Subscribe, Operation::Publish, Operation::Presence, Operation::History];
}

/// Channel glob (`*` matches any run of characters) to the operations allowed on matching
/// channels.
pub type Capabilities = BTreeMap<String, Vec<Operation>>;

/// What to put in a connection token (`POST /v1/apps/{app_id}/tokens`, gRPC `IssueToken`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TokenRequest {
    /// The end user the token is for (the token's `sub`): 1..=128 printable ASCII characters.
    pub client_id: String,
    /// Lifetime in seconds; `None` for the server default (600, or the app maximum if lower).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u32>,
    /// What the connection may do; must be a subset of the API key's capabilities. `None` for the
    /// key's own capabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Presence info other members see (a JSON object, at most 1 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

impl TokenRequest {
    /// A request for `client_id` with the server's defaults for everything else.
    pub fn new(client_id: impl Into<String>) -> Self {
        TokenRequest { client_id: client_id.into(), ..TokenRequest::default() }
    }

    /// Sets the lifetime in seconds.
    pub fn ttl_s(mut self, ttl_s: u32) -> Self {
        self.ttl_s = Some(ttl_s);
        self
    }

    /// Allows `operations` on channels matching `glob` (call once per glob).
    pub fn allow(mut self, glob: impl Into<String>, operations: impl IntoIterator<Item = Operation>) -> Self {
        self.capabilities.get_or_insert_with(Capabilities::new).insert(glob.into(), operations.into_iter().collect());
        self
    }

    /// Sets the presence info.
    pub fn info(mut self, info: Value) -> Self {
        self.info = Some(info);
        self
    }
}

/// A minted connection token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS the client connects with. A secret: don't log it.
    pub token: String,
    /// When it expires, in Unix seconds.
    pub expires_at: i64,
}

/// A position in a channel's stream: resume after it with `since`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Names the stream; changes when the stream is lost.
    pub epoch: String,
    /// Offsets start at 1 and increase by exactly 1 per publication within an epoch.
    pub offset: u64,
}

/// One message of a batch publish.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchMessage {
    /// The channel to publish on.
    pub channel: String,
    /// Any JSON value, delivered verbatim.
    pub data: Value,
    /// Retrying with the same key within 5 minutes publishes nothing new. `None` lets the client
    /// generate one (see [`ClientBuilder::auto_idempotency_keys`](crate::ClientBuilder::auto_idempotency_keys)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl BatchMessage {
    /// A message without an explicit idempotency key.
    pub fn new(channel: impl Into<String>, data: Value) -> Self {
        BatchMessage { channel: channel.into(), data, idempotency_key: None }
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Where one batch message landed, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchResult {
    /// The message's channel.
    pub channel: String,
    /// Its stream epoch.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
}

impl BatchResult {
    /// The message's position in its channel's stream.
    pub fn position(&self) -> StreamPosition {
        StreamPosition { epoch: self.epoch.clone(), offset: self.offset }
    }
}

/// One stored publication.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Publication {
    /// Its stream epoch.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
    /// The published JSON value.
    pub data: Value,
    /// The publishing client; `None` for backend (REST) publishes.
    #[serde(default)]
    pub client_id: Option<String>,
    /// When the engine accepted it, in milliseconds since the Unix epoch.
    pub ts: i64,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct History {
    /// Oldest first.
    pub publications: Vec<Publication>,
    /// The channel's current position.
    pub position: StreamPosition,
    /// With `since`: false when history no longer reaches back that far or the epoch changed
    /// (reload state from your own source of truth).
    pub recovered: bool,
}

/// A presence member: one connection of one client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PresenceMember {
    /// The client (the token's `sub`).
    pub client_id: String,
    /// The connection.
    pub connection_id: String,
    /// What the member entered with (or the token's `info`).
    #[serde(default)]
    pub data: Option<Value>,
}

/// An active channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelInfo {
    /// The channel name.
    pub channel: String,
    /// Subscribers connected to the node that answered.
    pub subscribers: u64,
}
