-- Client token revocations (streamed to data-plane nodes) and usage metering for billing.

-- Tokens of `client_id` issued at or before `issued_before` (Unix seconds) are refused.
CREATE TABLE revoked_clients (
    app_id        TEXT NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    client_id     TEXT NOT NULL,
    issued_before BIGINT NOT NULL,
    PRIMARY KEY (app_id, client_id)
);

-- Usage batches already counted, so a node retrying a report never counts it twice.
CREATE TABLE usage_batches (
    node_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, seq)
);

-- Usage per app and hour (`hour_start` in Unix seconds), summed over nodes. Not tied to
-- `apps` by a foreign key: billing keeps an app's usage after the app is deleted.
CREATE TABLE usage_hourly (
    tenant_id          TEXT NOT NULL,
    app_id             TEXT NOT NULL,
    hour_start         BIGINT NOT NULL,
    messages_published BIGINT NOT NULL,
    messages_delivered BIGINT NOT NULL,
    bytes_in           BIGINT NOT NULL,
    bytes_out          BIGINT NOT NULL,
    connection_ms      BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, app_id, hour_start)
);
CREATE INDEX usage_hourly_hour ON usage_hourly (hour_start);

-- Each node's peak concurrent connections per app and hour; a bucket's peak is their sum.
CREATE TABLE usage_node_peaks (
    tenant_id  TEXT NOT NULL,
    app_id     TEXT NOT NULL,
    hour_start BIGINT NOT NULL,
    node_id    TEXT NOT NULL,
    peak       BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, app_id, hour_start, node_id)
);
