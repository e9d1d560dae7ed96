-- Webhook events delivered (2xx), once per event and endpoint, counted for billing with the
-- rest of an app's hourly usage.
ALTER TABLE usage_hourly ADD COLUMN webhook_events BIGINT NOT NULL DEFAULT 0;
