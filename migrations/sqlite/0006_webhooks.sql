-- Webhook endpoints (SQLite twin of migrations/postgres; timestamps are RFC 3339 text).
--
-- `events` is a JSON array of event names, `channels` an optional channel glob, `format`
-- 'aviary' or 'pusher'. The signing secret must be readable again (every delivery is an HMAC
-- with it), so like Pusher secrets it is not hashed: `sealed_secret` is AES-256-GCM under the
-- control plane's credentials key, bound to the endpoint id. `tenant_id` is kept so the
-- per-tenant endpoint limit is one indexed count.

CREATE TABLE webhooks (
    id             TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id      TEXT NOT NULL,
    url            TEXT NOT NULL,
    events         TEXT NOT NULL,
    channels       TEXT,
    format         TEXT NOT NULL,
    sealed_secret  BLOB NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX webhooks_app ON webhooks (app_id, id);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id);
