-- Pusher Channels credentials (SQLite twin of migrations/postgres; timestamps are RFC 3339 text).
--
-- `pusher_apps` gives an Aviary app the digits-only id Pusher server SDKs put in their URLs;
-- it is allocated with the app's first credential and kept for the app's lifetime, so SDK
-- configs stay valid across credential rotations. The secret must be readable again (the
-- server computes HMACs with it), so unlike API keys it is not hashed: `sealed_secret` is
-- AES-256-GCM under the control plane's credentials key, bound to the credential's key. A
-- revoked credential keeps its row (listed with `revoked_at`) but loses its secret.

CREATE TABLE pusher_apps (
    app_id        TEXT PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    pusher_app_id INTEGER NOT NULL UNIQUE
);

CREATE TABLE pusher_credentials (
    key            TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id      TEXT NOT NULL,
    capabilities   TEXT NOT NULL,
    client_events  INTEGER NOT NULL,
    sealed_secret  BLOB NOT NULL,
    created_at     TEXT NOT NULL,
    revoked_at     TEXT
);
CREATE INDEX pusher_credentials_app ON pusher_credentials (app_id, key);
