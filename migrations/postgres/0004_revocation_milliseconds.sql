-- Client revocations compare at millisecond precision (a token's issue time is the timestamp of
-- its UUIDv7 jti): `issued_before` becomes Unix milliseconds. A cutoff of second s meant "issued
-- in second s or earlier", which is millisecond s * 1000 + 999.
UPDATE revoked_clients SET issued_before = issued_before * 1000 + 999;
