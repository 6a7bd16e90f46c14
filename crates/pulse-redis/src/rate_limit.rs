//! [`RedisRateLimiter`]: the [`RateLimiter`] port on Redis, so every Pulse process spends from
//! the same buckets.
//!
//! One call is one Lua script: it reads the key's TAT, runs GCRA exactly as
//! [`pulse_core::rate_limit::decide`] does and stores the new TAT, atomically — two processes
//! checking the same key at once never both spend its last cell. The script takes *Redis's*
//! clock (`TIME`), never the caller's, so processes whose clocks disagree still agree on every
//! bucket. A stored TAT expires (`PX`) when its bucket is full again — at most the quota's
//! tolerance later — since a key whose TAT has passed is the same as an absent one: idle keys
//! vanish by themselves.
//!
//! Keys: the bucket lives at the caller's key as given, so callers namespace it (deployment
//! prefix, tenant) the way they do cache keys. The script touches that one key, passed as
//! `KEYS[1]`, so a call always lands in one hash slot.
//!
//! The limiter shares [`RedisCache`]'s connection and its guards: every call is bounded by
//! [`RedisOptions::response_timeout`](crate::RedisOptions), and while Redis refuses connections
//! calls fail at once with a retryable error instead of waiting for the reconnection.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use pulse_core::rate_limit::{Quota, RateDecision, RateLimiter};
use pulse_core::{PortError, PortResult};

use crate::{RedisCache, RedisOptions};

/// GCRA on Redis time, a copy of `pulse_core::rate_limit::decide` (same names, same order).
/// KEYS[1]: the bucket. ARGV: the emission interval (µs), the burst, the cost. Returns
/// `{allowed (0/1), remaining, retry_after (µs), reset (µs)}`. Every number stays an integer
/// far below 2^53 (see `MAX_TOLERANCE`), so Lua's doubles compute it exactly; the TAT is written
/// with `%d` because `tostring` would round it to 14 digits.
const GCRA_SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tolerance = interval * burst
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local parsed = tonumber(stored)
  if not parsed then
    return redis.error_reply('rate limiter key ' .. KEYS[1] .. ' does not hold a TAT')
  end
  if parsed > now then tat = parsed end
end
local backlog = tat - now
local function cells(room)
  if room <= 0 then return 0 end
  return math.floor(room / interval)
end
if cost > burst then
  return {0, cells(tolerance - backlog), backlog, backlog}
end
local new_tat = tat + interval * cost
local new_backlog = new_tat - now
if new_backlog > tolerance then
  return {0, cells(tolerance - backlog), new_backlog - tolerance, backlog}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil(new_backlog / 1000))
end
return {1, cells(tolerance - new_backlog), 0, new_backlog}
"#;

/// The script, hashed once: calls send its SHA (`EVALSHA`) and load it only when Redis lacks it.
static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_SCRIPT));

/// Rate limits kept in Redis. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct RedisRateLimiter {
    redis: RedisCache,
}

impl RedisRateLimiter {
    /// Connects to `url` and checks that Redis answers.
    pub async fn connect(url: &str, options: RedisOptions) -> PortResult<Self> {
        Ok(Self::sharing(&RedisCache::connect(url, options).await?))
    }

    /// A limiter on `cache`'s connection (and its timeout and refusal state), so a process that
    /// has both holds one connection to Redis.
    pub fn sharing(cache: &RedisCache) -> Self {
        Self {
            redis: cache.clone(),
        }
    }
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> PortResult<RateDecision> {
        quota
            .validate()
            .map_err(|err| PortError::Invalid(err.to_string()))?;
        let mut invocation = GCRA.prepare_invoke();
        invocation
            .key(key)
            .arg(quota.emission_interval_us())
            .arg(quota.burst)
            .arg(cost);
        let answer: Vec<i64> = self
            .redis
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let [allowed, remaining, retry_after_us, reset_us] = answer[..] else {
            return Err(PortError::Corrupt(format!(
                "the rate limiter script answered {answer:?}, not four numbers"
            )));
        };
        Ok(RateDecision {
            allowed: allowed == 1,
            remaining: u32::try_from(remaining).unwrap_or(0),
            retry_after: micros(retry_after_us),
            reset: micros(reset_us),
        })
    }
}
