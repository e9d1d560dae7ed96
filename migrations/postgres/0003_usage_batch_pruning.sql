-- Usage batch ids are only needed while a node may still retry them (an hour at most); the
-- control plane deletes older ones, which needs this index to stay cheap.
CREATE INDEX usage_batches_received ON usage_batches (received_at);
