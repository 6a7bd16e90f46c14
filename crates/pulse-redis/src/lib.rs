//! Redis adapters of the [`Cache`] port ([`RedisCache`]), of the rate limiter port
//! ([`RedisRateLimiter`], in [`rate_limit`]) and of the geo index port ([`RedisGeoIndex`], in
//! [`geo`]: a GEO set and a hash per tenant), which share one connection and everything below.
//!
//! Chosen with `--cache redis://host:port[/db]`. A [`ConnectionManager`] multiplexes one
//! connection and reconnects with backoff after Redis restarts; every call carries a response
//! timeout so an unresponsive Redis surfaces as [`PortError::Timeout`] instead of a hang.
//! Batches run as `MULTI`/`EXEC`, so readers never see half of one (Redis does not roll back a
//! batch whose command fails at run time, e.g. `INCRBY` on text).
//!
//! A stopped Redis fails fast. Left to itself, the manager queues every call behind its
//! reconnection, which retries the connection with backoff (at least 300 ms), so each call would
//! wait out the caller's timeout. Instead, once a call finds the connection refused or dropped,
//! the adapter marks Redis *refusing*: calls fail at once with [`PortError::Unavailable`] while
//! one background probe pings Redis at a bounded rate (backoff with jitter, capped at
//! [`PROBE_MAX_DELAY`]) and lets calls through again when it answers — or when it does not
//! refuse but hangs, since a hung Redis is not known down: each call then costs its timeout.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pulse_core::cache::{Cache, CacheWrite, Guarded};
use pulse_core::{PortError, PortResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Pipeline, RedisError};

pub mod geo;
pub mod rate_limit;

pub use geo::RedisGeoIndex;
pub use rate_limit::RedisRateLimiter;

const BACKEND: &str = "redis";

/// Settings of the Redis adapter.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of one command or batch.
    pub response_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// First wait of the probe of a Redis that refuses connections; it doubles after each refusal.
pub const PROBE_MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest wait between two probes of a Redis that refuses connections.
pub const PROBE_MAX_DELAY: Duration = Duration::from_secs(1);

/// Handle to a Redis server. Cheap to clone; clones share the connection and its state.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    url: String,
    options: RedisOptions,
    /// Set while Redis is known to refuse connections: calls fail at once.
    refusing: Mutex<Option<Refusing>>,
}

/// Why and since when Redis is taken as refusing connections.
struct Refusing {
    since: Instant,
    error: String,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("url", &self.inner.url)
            .finish()
    }
}

/// Whether `err` says Redis refused or dropped the connection (it is stopped, restarting or
/// unreachable), as opposed to a slow or hung Redis, which times out.
fn refuses(err: &RedisError) -> bool {
    !err.is_timeout() && (err.is_connection_refusal() || err.is_connection_dropped())
}

/// `delay` with up to half of it added at random, so many adapters do not probe in step.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(Instant::now());
    delay + delay.mul_f64((random % 1_000) as f64 / 2_000.0)
}

fn redis_error(err: RedisError) -> PortError {
    // Besides I/O trouble, replies such as LOADING (a restarted Redis reading its data),
    // TRYAGAIN or MASTERDOWN say "not now": an outage to wait out, not a bad command.
    // (Cluster redirects, MOVED/ASK, stay configuration errors: Pulse speaks to one Redis.)
    let transient = matches!(err.retry_method(), redis::RetryMethod::WaitAndRetry);
    let outage = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
        || transient;
    if outage {
        PortError::unavailable(BACKEND, err)
    } else {
        PortError::Invalid(format!("redis refused the command: {err}"))
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn add_write(pipe: &mut Pipeline, write: &CacheWrite) {
    match write {
        CacheWrite::Set { key, value, ttl } => {
            let cmd = pipe.cmd("SET").arg(key).arg(value.as_ref());
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(millis(*ttl));
            }
            cmd.ignore();
        }
        CacheWrite::IncrBy { key, delta, ttl } => {
            pipe.cmd("INCRBY").arg(key).arg(*delta).ignore();
            if let Some(ttl) = ttl {
                pipe.cmd("PEXPIRE").arg(key).arg(millis(*ttl)).ignore();
            }
        }
        CacheWrite::Delete { key } => {
            pipe.cmd("DEL").arg(key).ignore();
        }
        CacheWrite::IndexAdd {
            key,
            member,
            score,
            ttl,
        } => {
            pipe.cmd("ZADD").arg(key).arg(*score).arg(member).ignore();
            if let Some(ttl) = ttl {
                pipe.cmd("PEXPIRE").arg(key).arg(millis(*ttl)).ignore();
            }
        }
        CacheWrite::IndexRemove { key, member } => {
            pipe.cmd("ZREM").arg(key).arg(member).ignore();
        }
        CacheWrite::IndexTrim { key, below } => {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(key)
                .arg("-inf")
                .arg(format!("({below}"))
                .ignore();
        }
    }
}

/// `apply_if_absent_many` as one server-side step. ARGV: the item count, then per item the guard,
/// its TTL (ms) and the number of writes, then each write as five fields: op, key, two operands
/// and a TTL (ms, 0 = none) — `S` key value, `I` key delta, `D` key, `Z` key member score
/// (`ZADD`), `R` key member (`ZREM`), `T` key below (trim). Keys travel as arguments, so this suits a single Redis (or one shard), not
/// Redis Cluster.
const APPLY_IF_ABSENT_MANY: &str = r#"
local results = {}
local pos = 2
for item = 1, tonumber(ARGV[1]) do
  local guard, guard_ttl, count = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  if redis.call('SET', guard, '1', 'NX', 'PX', guard_ttl) then
    for _ = 1, count do
      local op, key, a, b = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
      local ttl = tonumber(ARGV[pos + 4])
      if op == 'S' then
        if ttl > 0 then redis.call('SET', key, a, 'PX', ttl) else redis.call('SET', key, a) end
      elseif op == 'I' then
        redis.call('INCRBY', key, a)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      elseif op == 'Z' then
        redis.call('ZADD', key, b, a)
        if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
      elseif op == 'R' then
        redis.call('ZREM', key, a)
      elseif op == 'T' then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. a)
      else
        redis.call('DEL', key)
      end
      pos = pos + 5
    end
    results[item] = 1
  else
    pos = pos + 5 * count
    results[item] = 0
  end
end
return results
"#;

/// Items per script call, so one call never holds Redis for long.
const GUARDED_ITEMS_PER_CALL: usize = 500;

impl RedisCache {
    /// Connects to `url` and checks that Redis answers.
    pub async fn connect(url: &str, options: RedisOptions) -> PortResult<Self> {
        let client = redis::Client::open(url)
            .map_err(|err| PortError::Invalid(format!("invalid Redis URL {url:?}: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connecting = ConnectionManager::new_with_config(client, config);
        let conn = tokio::time::timeout(options.connect_timeout * 2, connecting)
            .await
            .map_err(|_| PortError::Timeout {
                backend: BACKEND,
                timeout: options.connect_timeout * 2,
            })?
            .map_err(redis_error)?;
        let cache = Self {
            inner: Arc::new(Inner {
                conn,
                url: url.to_owned(),
                options,
                refusing: Mutex::new(None),
            }),
        };
        cache.ping().await?;
        Ok(cache)
    }

    /// Runs one call on the connection: at once an error while Redis refuses connections, else
    /// the call bounded by the response timeout (which also bounds a wait for a reconnection).
    pub(crate) async fn call<T, F>(
        &self,
        call: impl FnOnce(ConnectionManager) -> F,
    ) -> PortResult<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if let Some(err) = self.inner.refusal() {
            return Err(err);
        }
        let timeout = self.inner.options.response_timeout;
        match tokio::time::timeout(timeout, call(self.inner.conn.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if refuses(&err) {
                    Inner::mark_refusing(&self.inner, &err);
                }
                Err(redis_error(err))
            }
            Err(_) => Err(PortError::Timeout {
                backend: BACKEND,
                timeout,
            }),
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> PortResult<T> {
        self.call(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, Option<Refusing>> {
        // The state is one `Option` written whole, so a poisoned lock still holds a valid one.
        self.refusing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The error to fail a call with at once, while Redis refuses connections.
    fn refusal(&self) -> Option<PortError> {
        let state = self.state();
        let refusing = state.as_ref()?;
        Some(PortError::Unavailable {
            backend: BACKEND,
            message: format!(
                "{} refused the connection {} ms ago ({}); retrying in the background",
                self.url,
                refusing.since.elapsed().as_millis(),
                refusing.error
            ),
        })
    }

    /// Takes Redis as refusing connections and starts the probe, unless already refusing.
    fn mark_refusing(this: &Arc<Self>, err: &RedisError) {
        let mut state = this.state();
        if state.is_some() {
            return;
        }
        tracing::warn!(url = %this.url, error = %err, "Redis refuses connections; calls fail at once until it answers");
        *state = Some(Refusing {
            since: Instant::now(),
            error: err.to_string(),
        });
        tokio::spawn(Self::probe(Arc::downgrade(this)));
    }

    /// Pings Redis with backoff until it answers or stops refusing, then lets calls through.
    /// Ends early when the adapter is dropped.
    async fn probe(this: Weak<Self>) {
        let mut delay = PROBE_MIN_DELAY;
        loop {
            tokio::time::sleep(jittered(delay)).await;
            let Some(inner) = this.upgrade() else {
                return;
            };
            let mut conn = inner.conn.clone();
            // The manager reconnects inside the ping; a Redis that does not refuse but takes
            // longer than a connection and a response is hung, and calls may cost their timeout.
            let budget = inner.options.connect_timeout + inner.options.response_timeout;
            let cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(budget, ping).await {
                Ok(Err(err)) if refuses(&err) => {
                    delay = (delay * 2).min(PROBE_MAX_DELAY);
                }
                outcome => {
                    let since = inner.state().take().map(|refusing| refusing.since);
                    let down_ms = since.map_or(0, |since| since.elapsed().as_millis());
                    match outcome {
                        Ok(Ok(_)) => {
                            tracing::info!(url = %inner.url, down_ms, "Redis answers again")
                        }
                        _ => {
                            tracing::warn!(url = %inner.url, down_ms, "Redis no longer refuses connections but does not answer either")
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> PortResult<Option<Bytes>> {
        let value: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(key)).await?;
        Ok(value.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[String]) -> PortResult<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<Vec<u8>>> = self.run(redis::cmd("MGET").arg(keys)).await?;
        Ok(values
            .into_iter()
            .map(|value| value.map(Bytes::from))
            .collect())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> PortResult<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value.as_ref());
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.run(&cmd).await
    }

    async fn incr_by(&self, key: &str, delta: i64, ttl: Option<Duration>) -> PortResult<i64> {
        let Some(ttl) = ttl else {
            return self.run(redis::cmd("INCRBY").arg(key).arg(delta)).await;
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("INCRBY")
            .arg(key)
            .arg(delta)
            .cmd("PEXPIRE")
            .arg(key)
            .arg(millis(ttl))
            .ignore();
        let (value,): (i64,) = self
            .call(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(value)
    }

    async fn delete(&self, key: &str) -> PortResult<bool> {
        let removed: i64 = self.run(redis::cmd("DEL").arg(key)).await?;
        Ok(removed > 0)
    }

    async fn ttl(&self, key: &str) -> PortResult<Option<Option<Duration>>> {
        let remaining: i64 = self.run(redis::cmd("PTTL").arg(key)).await?;
        Ok(match remaining {
            -2 => None,
            -1 => Some(None),
            ms => Some(Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))),
        })
    }

    async fn apply(&self, writes: Vec<CacheWrite>) -> PortResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for write in &writes {
            add_write(&mut pipe, write);
        }
        self.call(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    async fn apply_if_absent_many(&self, items: Vec<Guarded>) -> PortResult<Vec<bool>> {
        let script = redis::Script::new(APPLY_IF_ABSENT_MANY);
        let mut applied = Vec::with_capacity(items.len());
        for chunk in items.chunks(GUARDED_ITEMS_PER_CALL) {
            let mut invocation = script.prepare_invoke();
            invocation.arg(chunk.len());
            for item in chunk {
                invocation
                    .arg(&item.guard)
                    .arg(millis(item.guard_ttl))
                    .arg(item.writes.len());
                for write in &item.writes {
                    let ttl_ms = |ttl: &Option<Duration>| ttl.map_or(0, millis);
                    match write {
                        CacheWrite::Set { key, value, ttl } => invocation
                            .arg("S")
                            .arg(key)
                            .arg(value.as_ref())
                            .arg("")
                            .arg(ttl_ms(ttl)),
                        CacheWrite::IncrBy { key, delta, ttl } => invocation
                            .arg("I")
                            .arg(key)
                            .arg(*delta)
                            .arg("")
                            .arg(ttl_ms(ttl)),
                        CacheWrite::Delete { key } => {
                            invocation.arg("D").arg(key).arg("").arg("").arg(0)
                        }
                        CacheWrite::IndexAdd {
                            key,
                            member,
                            score,
                            ttl,
                        } => invocation
                            .arg("Z")
                            .arg(key)
                            .arg(member)
                            .arg(*score)
                            .arg(ttl_ms(ttl)),
                        CacheWrite::IndexRemove { key, member } => {
                            invocation.arg("R").arg(key).arg(member).arg("").arg(0)
                        }
                        CacheWrite::IndexTrim { key, below } => {
                            invocation.arg("T").arg(key).arg(*below).arg("").arg(0)
                        }
                    };
                }
            }
            let flags: Vec<i64> = self
                .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
            applied.extend(flags.into_iter().map(|flag| flag == 1));
        }
        Ok(applied)
    }

    async fn index_range(
        &self,
        key: &str,
        min_score: i64,
        limit: usize,
    ) -> PortResult<Vec<(String, i64)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
        cmd.arg(key)
            .arg("+inf")
            .arg(min_score)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let found: Vec<(String, f64)> = self.run(&cmd).await?;
        // Scores are whole numbers written by `IndexAdd`; Redis stores them as doubles.
        Ok(found
            .into_iter()
            .map(|(member, score)| (member, score as i64))
            .collect())
    }

    async fn ping(&self) -> PortResult<()> {
        let _: String = self.run(&redis::cmd("PING")).await?;
        Ok(())
    }
}
