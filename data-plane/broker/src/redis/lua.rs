//! Lua that every script of this crate starts with.

/// Shared Lua helpers: server time in ms, and expiring presence members with leave events.
pub(crate) const LUA_PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- KEYS[1] members hash, KEYS[2] expiry zset, ARGV[1] topic
local function expire_members(now, batch)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, batch)
  for _, id in ipairs(gone) do
    local m = redis.call('HGET', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    if m then
      redis.call('HDEL', KEYS[1], id)
      redis.call('PUBLISH', ARGV[1], 'l' .. m)
    end
  end
end
local function keep_keys(ms)
  for i = 1, 2 do
    if redis.call('PTTL', KEYS[i]) < ms then redis.call('PEXPIRE', KEYS[i], ms) end
  end
end
"#;
