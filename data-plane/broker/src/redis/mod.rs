//! [`RedisBroker`]: the engine for several data-plane nodes, with Redis between them.
//!
//! # Key layout
//! Every key of one channel carries the same hash tag `T = {<app_id>|<channel>}` (app ids are
//! generated `app_…` ids and channel names cannot contain `{`, `}` or `|`, so the tag is
//! unambiguous), so one channel's keys always live together: on one shard of
//! our consistent-hash ring, and in one slot on Redis Cluster (a Lua script may only touch
//! keys of one slot). With `P` the configured prefix:
//!
//! | key             | type   | holds                                                      | TTL |
//! |-----------------|--------|------------------------------------------------------------|-----|
//! | `P:s:T`         | hash   | `epoch`, `offset`: the stream's identity and last offset   | `history_ttl_s` after the latest publish ([`EMPTY_STREAM_TTL_S`] if none yet) |
//! | `P:h:T`         | list   | the latest `history_size` publications, oldest first       | same as `P:s:T` |
//! | `P:i:T:<key>`   | string | `<offset>:<epoch>` of the publish that used idempotency `<key>` | [`IDEMPOTENCY_WINDOW_S`] |
//! | `P:p:T`         | hash   | connection id → presence member (JSON)                     | longest member TTL + 60 s |
//! | `P:e:T`         | zset   | connection id → expiry (Redis server time, ms)             | same as `P:p:T` |
//! | `P:t:T`         | pub/sub topic | every publication and presence change of the channel | — |
//!
//! A history entry is `<offset>|<ts>|<meta>|<client id><event><exclude><data>`, where `<meta>`
//! gives the byte lengths of the three optional strings before the data: `-` (none of them),
//! `<n>` (a client id only, the format before event names existed, still read), or
//! `<c>,<e>,<x>` with `-` for an absent one (see [`entry_meta`]). A topic
//! message is `p<epoch length>|<epoch><entry>` for a publication, or `j`/`u`/`l` followed by
//! the member's JSON for a presence join/update/leave. Every node decodes a message once and
//! hands one `Arc<Publication>` to its sink.
//!
//! # Atomicity
//! Publish is one Lua script on the channel's shard. Redis runs a script to completion before
//! any other command, so these steps are one indivisible step for every node: check the
//! idempotency key (returning the earlier position), create the stream with the caller's fresh
//! epoch if `P:s:T` is missing (deleting any orphaned history), `HINCRBY` the offset, append to
//! and trim the history list, refresh both TTLs, remember the idempotency key, and `PUBLISH` to
//! the channel's topic. Offsets are therefore gap-free and ordered per channel across all
//! nodes, and topic messages leave Redis in offset order. Because epoch and offset live in one
//! hash with one TTL, a stream is lost as a whole (TTL, flush, restart without persistence)
//! and the next access starts a new epoch: clients resuming with the old one get
//! `recovered: false`. History reads and `position` run as one script too, so the epoch,
//! offset and entries they return are consistent with each other.
//!
//! # Subscriptions
//! Each shard has one dedicated pub/sub connection owned by an actor task; `subscribe` and
//! `unsubscribe` are commands to that task, applied in call order, so they never race each
//! other. The node subscribes only to topics of channels with local subscribers.
//! [`Broker::subscribe`] returns after Redis acknowledged `SUBSCRIBE`; from then on every
//! publication reaches this node. So a hub that subscribes first and then reads the position
//! or history misses nothing: whatever that read did not include has a greater offset and is
//! published after the acknowledgement. (It may also receive publications the read did
//! include; the hub drops those by offset.)
//!
//! The actor remembers the last position it delivered per channel. When the pub/sub connection
//! drops (Redis restart, network), it reconnects with backoff, resubscribes every topic by
//! itself, and then fills what was published meanwhile from history, in order, before live
//! messages; a publication arriving with a gap in its offsets is filled the same way. Where
//! history no longer reaches back, the hub sees the jump in positions. Where the epoch changed
//! (Redis restarted empty) and the new one already has publications, they are delivered from
//! its start, so the hub sees the jump at once rather than at the next live publication.
//!
//! # Presence
//! Members live in `P:p:T` with their expiry in `P:e:T`, scored with Redis server time so node
//! clocks do not matter. `presence_touch` (the node heartbeat) moves live members' expiry
//! forward and never revives an expired one. Every node sweeps the channels it subscribes to
//! that may have members (any it saw a join or update for, and each once after subscribing,
//! until a sweep finds the set empty) once per [`PRESENCE_SWEEP_INTERVAL`], at most
//! [`SWEEP_BATCH`] expirations per channel and call: expired members are removed and a `leave`
//! is published, atomically, so exactly one node announces each leave. Reads and joins expire
//! members too. Each node also remembers the members it joined and still touches; after its
//! pub/sub connection comes back it joins them again, which is a no-op for members Redis kept
//! and a `join` for members a restarted Redis lost.
//!
//! # Failure
//! Every command is bounded by [`COMMAND_TIMEOUT`]; an unreachable Redis yields
//! [`BrokerError::Unavailable`] quickly, while the connections keep reconnecting in the
//! background. A publish that times out may still have happened (the reply was lost); it is
//! reported as unavailable, never as published, and a retry with the same idempotency key
//! returns the original position.
//!
//! # Sharding
//! With several Redis URLs, channels are spread over them by consistent hashing of the hash tag
//! (160 virtual nodes per URL, a stable FNV-1a/SplitMix64 hash), so every node maps a channel
//! to the same Redis as long as all nodes get the same URLs, spelled the same way. Adding a
//! URL moves only the channels that land on it (their streams restart with a new epoch there,
//! which resuming clients see as `recovered: false`).
//!
//! Redis Cluster is the production path beyond a handful of instances: the hash tags already
//! keep every script on one slot, and the topic shares the tag, so switching `PUBLISH` /
//! `SUBSCRIBE` to sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`, Redis 7) keeps fan-out on the
//! slot's own node instead of broadcasting it cluster-wide. That needs a cluster-aware client
//! (the redis crate's `cluster-async`), which this implementation does not use yet.
//!
//! # Files
//! One concern a file: [`broker`] (the [`Broker`](crate::Broker) implementation: keys, the
//! publish and history calls), `scripts` (the broker's Lua scripts), `codec` (history entries
//! and topic messages), `pubsub` (each shard's pub/sub actor), `gap_fill` (catching up from
//! history after a reconnect or a gap), `presence` (members this node owns, the sweep). The
//! Redis plumbing that the other Redis-backed parts of this crate
//! ([`redis_quotas`](crate::redis_quotas), [`channels`](crate::channels),
//! [`webhooks`](crate::webhooks)) share with the broker has modules of its own: [`connection`]
//! (lazy connections, timeouts, error mapping and counting), [`ring`] (the consistent-hash
//! ring) and [`lua`] (the Lua prelude every script starts with).

pub mod broker;
mod codec;
pub mod connection;
mod gap_fill;
pub mod lua;
mod presence;
mod pubsub;
pub mod ring;
mod scripts;

pub use broker::RedisBroker;
pub use connection::{BROKER_ERRORS, COMMAND_TIMEOUT, describe_metrics};
pub use presence::{PRESENCE_SWEEP_INTERVAL, SWEEP_BATCH};
