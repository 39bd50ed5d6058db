//! The two Lua scripts the Redis backend runs, each one atomic step on the server, with the
//! server's own clock (`TIME`) so replicas with skewed clocks still share one timeline.
//!
//! Times are microseconds. A Lua number is a double: `%.0f` writes it back without the exponent
//! form `tostring` would use past 14 digits. Every key gets a TTL, so an idle client leaves
//! nothing behind. Keys are `<prefix>:{<client id>}:…`; the braces keep one client's keys in one
//! Redis Cluster slot.

/// `CHECK`: KEYS = requests, tokens, day. ARGV = request interval, request tolerance (0 = no
/// request limit), token interval, token capacity (0 = no tpm), day limit (0 = none), seconds
/// to the end of the UTC day. The token and day budgets are only looked at (they are charged
/// after the response); the request GCRA is taken. Returns
/// `{allowed, refused_by (0 none, 1 requests, 2 tpm, 3 day), wait_us,
///   req_remaining, req_reset_us, tok_remaining, tok_reset_us, day_remaining}`
/// (-1 where that limit is off).
pub const CHECK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ri, rtol = tonumber(ARGV[1]), tonumber(ARGV[2])
local ti, tcap = tonumber(ARGV[3]), tonumber(ARGV[4])
local dl, eod = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {1, 0, 0, -1, 0, -1, 0, -1}
if ti > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or now)
  local debt = math.max(tat - now, 0)
  if debt >= tcap then return {0, 2, debt - tcap + ti, -1, 0, 0, debt, -1} end
  out[6] = math.floor((tcap - debt) / ti)
  out[7] = debt
end
if dl > 0 then
  local used = tonumber(redis.call('GET', KEYS[3]) or 0)
  if used >= dl then return {0, 3, eod * 1000000, -1, 0, out[6], out[7], 0} end
  out[8] = dl - used
end
if ri > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
  local new = tat + ri
  if new - now > rtol then return {0, 1, new - now - rtol, 0, tat - now, out[6], out[7], out[8]} end
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
  out[4] = math.floor((rtol - (new - now)) / ri)
  out[5] = new - now
end
return out
";

/// `CHARGE`: KEYS = tokens, day. ARGV = token interval (0 = no tpm), tokens, day TTL seconds
/// (0 = no day budget). Adds the tokens a response used.
pub const CHARGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ti, n, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if ti > 0 then
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now) + ti * n
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
if ttl > 0 then
  redis.call('INCRBY', KEYS[2], n)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return 1
";
