//! The broker's Lua scripts, one per atomic step (see the module docs of [`super`]).

use std::sync::LazyLock;

use redis::Script;

use super::lua::LUA_PRELUDE;

/// KEYS: stream hash, history list, [idempotency key].
/// ARGV: topic, epoch candidate, history_size, ttl_s, idempotency ttl_s, entry meta, the
/// strings it measures (client id, event, exclude) concatenated, data.
/// Returns {duplicate (0|1), epoch, offset}.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
if KEYS[3] then
  local earlier = redis.call('GET', KEYS[3])
  if earlier then
    local sep = string.find(earlier, ':', 1, true)
    return {1, string.sub(earlier, sep + 1), tonumber(string.sub(earlier, 1, sep - 1))}
  end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local ttl = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
local off = string.format('%d', offset)
local entry = off .. '|' .. string.format('%d', now_ms()) .. '|' .. ARGV[6] .. '|' .. ARGV[7] .. ARGV[8]
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('RPUSH', KEYS[2], entry)
  redis.call('LTRIM', KEYS[2], -size, -1)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('DEL', KEYS[2])
end
if KEYS[3] then redis.call('SET', KEYS[3], off .. ':' .. epoch, 'EX', tonumber(ARGV[5])) end
redis.call('PUBLISH', ARGV[1], 'p' .. #epoch .. '|' .. epoch .. entry)
return {0, epoch, offset}
"#
    ))
});

/// KEYS: stream hash, history list.
/// ARGV: epoch candidate, empty stream ttl_s, since offset ('' for the latest), since epoch, limit.
/// Returns {epoch, offset, first offset held, entries}.
pub(super) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = 0
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
else
  offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
end
local len = redis.call('LLEN', KEYS[2])
local first = offset - len + 1
local limit = tonumber(ARGV[5])
local items = {}
if limit > 0 then
  if ARGV[3] == '' then
    items = redis.call('LRANGE', KEYS[2], -limit, -1)
  elseif ARGV[4] == epoch then
    local start = tonumber(ARGV[3]) + 1 - first
    if start < 0 then start = 0 end
    if start < len then items = redis.call('LRANGE', KEYS[2], start, start + limit - 1) end
  end
end
return {epoch, offset, first, items}
"#,
    )
});

/// KEYS: members, expiries. ARGV: topic, connection id, member json, ttl ms, max members, key ttl ms.
/// Returns 1, or 0 when the set is full.
pub(super) static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
expire_members(now, tonumber(ARGV[7]))
local expires = now + tonumber(ARGV[4])
local existing = redis.call('HGET', KEYS[1], ARGV[2])
if existing then
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
  if existing ~= ARGV[3] then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
    redis.call('PUBLISH', ARGV[1], 'u' .. ARGV[3])
  end
else
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], expires, ARGV[2])
  redis.call('PUBLISH', ARGV[1], 'j' .. ARGV[3])
end
keep_keys(tonumber(ARGV[6]))
return 1
"#
    ))
});

/// KEYS: members, expiries. ARGV: topic, connection id. Returns 1 if the member was present.
pub(super) static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('HGET', KEYS[1], ARGV[2])
if not m then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], 'l' .. m)
return 1
"#,
    )
});

/// KEYS: members, expiries. ARGV: topic, ttl ms, key ttl ms, batch, connection ids...
/// Expired members leave first, so a touch never revives one.
pub(super) static PRESENCE_TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
local now = now_ms()
expire_members(now, tonumber(ARGV[4]))
local expires = now + tonumber(ARGV[2])
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[2], 'XX', expires, ARGV[i])
end
keep_keys(tonumber(ARGV[3]))
return 1
"#
    ))
});

/// KEYS: members, expiries. ARGV: topic, batch, '1' to return the members (else their count).
pub(super) static PRESENCE_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{LUA_PRELUDE}{}",
        r#"
expire_members(now_ms(), tonumber(ARGV[2]))
if ARGV[3] == '1' then return redis.call('HVALS', KEYS[1]) end
return redis.call('HLEN', KEYS[1])
"#
    ))
});
