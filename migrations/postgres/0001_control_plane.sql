-- Control plane schema: tenants -> apps -> API keys, tenant admin keys, token signing keys.
--
-- Ids are time-ordered (UUIDv7-based) text, so `ORDER BY id` is creation order and keyset
-- pagination (`WHERE id > $cursor`) is stable. Structured settings (quotas, namespaces,
-- capabilities, origins) are JSON documents validated by the application before they are
-- written; SQL never looks inside them. Secrets are stored only as argon2id PHC strings.

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    enabled     BOOLEAN NOT NULL,
    quotas      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE admin_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX admin_keys_tenant ON admin_keys (tenant_id);

CREATE TABLE apps (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL,
    allowed_origins TEXT NOT NULL,
    max_token_ttl_s BIGINT NOT NULL,
    namespaces      TEXT NOT NULL,
    quotas          TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    tenant_id    TEXT NOT NULL,
    name         TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_app ON api_keys (app_id, id);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    pkcs8       BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    retired_at  TIMESTAMPTZ
);

-- One-shot facts such as "the demo tenant was bootstrapped", so restarts do not redo them.
CREATE TABLE markers (
    name        TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL
);
