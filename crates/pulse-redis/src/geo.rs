//! [`RedisGeoIndex`]: the [`GeoIndex`] port on Redis, so every Pulse process sees the same
//! drivers.
//!
//! Keys, per tenant, after the deployment's prefix and [`TenantId::key_namespace`]:
//! * `{prefix}{ns}drivers:geo` — a GEO sorted set of every driver's latest position (this name
//!   is a contract: other readers may search it directly);
//! * `{prefix}{ns}drivers:geo:meta` — a hash driver → `at_ms|available|busy|busy_at_ms` followed,
//!   when the driver reported one, by `|vehicle_type` (last, so a vehicle type may hold `|`).
//!   `at_ms` is empty for a driver only a ride event has named so far (its busy flag waits there
//!   for its first position), `busy_at_ms` empty until a ride event sets the flag.
//!
//! Every call is one Lua script, so it is atomic and each rule is checked where the data is:
//! * `update` applies each position in order only if it is newer than the stored `at_ms`
//!   (`GEOADD` + `HSET`), keeping the busy flag, and returns the applied flags. A batch runs as
//!   one script call per [`POSITIONS_PER_CALL`] positions, so one call never holds Redis long;
//!   each call is atomic, and the calls run in order.
//! * `set_busy` rewrites the flag only if the event is newer than the one that last set it.
//! * `nearest` runs `GEOSEARCH … ASC COUNT c WITHDIST`, reads the candidates' meta with `HMGET`
//!   and keeps the available, not busy, fresh ones of the vehicle type asked for, nearest first,
//!   until it has `limit`, then reads the coordinates of those it keeps (`GEOPOS`). Two things
//!   widen the search, both inside the one script call:
//!   - *the count*: filtering drops candidates, so it first asks for `limit × 4 + 16`; when
//!     fewer than `limit` survive and `GEOSEARCH` returned all it was asked for, it searches
//!     again asking for eight times as many, and once that reaches the set's size, without
//!     `COUNT` (everything within the radius). Growing geometrically keeps the retries' work
//!     below a seventh of the last search's;
//!   - *the radius*: `GEOSEARCH` reads and sorts every member within its radius whatever its
//!     `COUNT` (about 1,400 for 2 km in a city of 100,000 drivers: a millisecond of Redis), so
//!     the script searches a thirty-second of the radius first (at least
//!     [`FIRST_RADIUS_MIN_M`]) and doubles it up to the query's while fewer than `limit`
//!     qualify. Each step covers four times the area of the one before, so the steps that fell
//!     short cost at most a third of the last. This stays exact: once a search within `r` has
//!     seen every driver within `r` and found `limit` qualifying, every driver beyond `r` is
//!     farther than all of them.
//!
//!   The answer is therefore exact however many drivers near the centre are filtered out; the
//!   price is that a search whose radius holds many drivers who are nearly all busy or stale
//!   reads all of them, inside one script: over 100,000 such drivers a 50 km search would hold
//!   Redis for a quarter of a second or so (on the benchmark's machine `GEOSEARCH` of all of
//!   them takes about 40 ms, `HMGET` about 2 µs a driver).
//! * `forget_older_than` walks the meta hash with `HSCAN`, one script call per step of
//!   [`FORGET_SCAN_COUNT`] fields, removing (`ZREM` + `HDEL`) the drivers whose `at_ms` is older:
//!   housekeeping, so no call blocks Redis for the whole hash, and a driver updated between two
//!   steps is judged by its value at its own step.
//!
//! Positions are those Redis's GEO sets can hold (latitude within ±[`MAX_LATITUDE`]) and a batch
//! with an invalid one is refused whole before anything is sent — the in-process adapter refuses
//! the same. Distances and coordinates are Redis's: its haversine (Earth radius 6,372,797.56 m)
//! on positions stored as 52-bit geohashes, so a driver comes back within a metre of where it
//! reported. Times are compared as Lua numbers (doubles), exact for any Unix millisecond below
//! 2^53. The scripts touch the two keys of one tenant, passed as `KEYS`, so this suits a single
//! Redis (or one shard), as the other adapters here. GEOSEARCH needs Redis 6.2 or later.
//!
//! The index shares [`RedisCache`]'s connection and its guards: every call is bounded by
//! [`RedisOptions::response_timeout`](crate::RedisOptions), and while Redis refuses connections
//! calls fail at once with a retryable error.

use std::sync::LazyLock;

use async_trait::async_trait;
use pulse_core::cache::Cache;
use pulse_core::geo_index::{DriverPosition, GeoIndex, NearbyDriver, NearbyQuery};
use pulse_core::{PortError, PortResult, TenantId};

use crate::{RedisCache, RedisOptions};

pub use pulse_core::geo_index::MAX_LATITUDE;
use pulse_core::geo_index::{check_position, check_query};

/// Positions per `update` script call.
pub const POSITIONS_PER_CALL: usize = 1_000;

/// The smallest first radius of `nearest`, metres: below it a search finds too few drivers to be
/// worth its round.
pub const FIRST_RADIUS_MIN_M: f64 = 100.0;

/// Meta fields one `forget_older_than` step asks `HSCAN` for.
pub const FORGET_SCAN_COUNT: usize = 500;

/// `update`. KEYS: the GEO set, the meta hash. ARGV: the number of positions, then per position
/// six fields: driver, longitude, latitude, at_ms, available (0/1), and the vehicle type as
/// stored (`''` none, `'|' .. type`). Returns one 0/1 per position. Stored meta is parsed for
/// every driver of the batch before anything is written, so a meta that does not parse fails
/// the call without applying half of it.
const UPDATE_SCRIPT: &str = r#"
local META = '^([^|]*)|([^|]*)|([^|]*)|([^|]*)'
local n = tonumber(ARGV[1])
for i = 0, n - 1 do
  local id = ARGV[2 + i * 6]
  local stored = redis.call('HGET', KEYS[2], id)
  if stored and not string.match(stored, META) then
    return redis.error_reply('geo meta of driver ' .. id .. ' does not parse: ' .. stored)
  end
end
local applied = {}
for i = 0, n - 1 do
  local base = 2 + i * 6
  local id, at = ARGV[base], ARGV[base + 3]
  local busy, busy_at = '0', ''
  local newer = true
  local stored = redis.call('HGET', KEYS[2], id)
  if stored then
    local s_at, _, s_busy, s_busy_at = string.match(stored, META)
    if s_at ~= '' and tonumber(s_at) >= tonumber(at) then
      newer = false
    else
      busy, busy_at = s_busy, s_busy_at
    end
  end
  if newer then
    redis.call('GEOADD', KEYS[1], ARGV[base + 1], ARGV[base + 2], id)
    redis.call('HSET', KEYS[2], id,
      at .. '|' .. ARGV[base + 4] .. '|' .. busy .. '|' .. busy_at .. ARGV[base + 5])
    applied[i + 1] = 1
  else
    applied[i + 1] = 0
  end
end
return applied
"#;

/// `set_busy`. KEYS: the meta hash. ARGV: driver, busy (0/1), at_ms. Returns 0/1.
const SET_BUSY_SCRIPT: &str = r#"
local at, available, rest = '', '0', ''
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored then
  local s_at, s_available, _, s_busy_at, s_rest =
    string.match(stored, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)(.*)$')
  if not s_at then
    return redis.error_reply('geo meta of driver ' .. ARGV[1] .. ' does not parse: ' .. stored)
  end
  if s_busy_at ~= '' and tonumber(s_busy_at) >= tonumber(ARGV[3]) then
    return 0
  end
  at, available, rest = s_at, s_available, s_rest
end
redis.call('HSET', KEYS[1], ARGV[1], at .. '|' .. available .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. rest)
return 1
"#;

/// `nearest`. KEYS: the GEO set, the meta hash. ARGV: longitude, latitude, radius (m), limit,
/// fresh_since_ms, the vehicle type as stored (`''` any), the first `COUNT`, the first radius
/// (m). Returns up to `limit` arrays `{driver, distance, longitude, latitude, at_ms, vehicle as
/// stored}`, nearest first, all strings (a Lua number would come back truncated to an integer).
/// `within(r)` answers the nearest qualifying drivers within `r` (driver, distance, at_ms,
/// vehicle), widening `COUNT` until it has `limit` or has seen every driver within `r`; the
/// radius itself doubles from the first one to the query's until `limit` are found. Only the
/// drivers kept get their coordinates (`GEOPOS`): `WITHCOORD` on every candidate costs about as
/// much as the search. `HMGET` goes in slices because Lua's `unpack` cannot spread more than a
/// few thousand values (`limit` is at most 500).
const NEAREST_SCRIPT: &str = r#"
local radius = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local fresh = tonumber(ARGV[5])
local vehicle = ARGV[6]
local first_count = tonumber(ARGV[7])
local total = redis.call('ZCARD', KEYS[1])
local function within(r)
  local count = first_count
  while true do
    local found
    if count < total then
      found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
        'BYRADIUS', r, 'm', 'ASC', 'COUNT', count, 'WITHDIST')
    else
      found = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
        'BYRADIUS', r, 'm', 'ASC', 'WITHDIST')
    end
    local out = {}
    local first = 1
    while first <= #found do
      local last = math.min(first + 499, #found)
      local ids = {}
      for i = first, last do ids[#ids + 1] = found[i][1] end
      local metas = redis.call('HMGET', KEYS[2], unpack(ids))
      for i = first, last do
        local meta = metas[i - first + 1]
        if meta then
          local at, available, busy, _, rest =
            string.match(meta, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)(.*)$')
          if at and at ~= '' and available == '1' and busy ~= '1' and tonumber(at) >= fresh
            and (vehicle == '' or rest == vehicle) then
            out[#out + 1] = {found[i][1], found[i][2], at, rest}
            if #out == limit then return out end
          end
        end
      end
      first = last + 1
    end
    if count >= total or #found < count then return out end
    count = count * 8
  end
end
local r = math.min(tonumber(ARGV[8]), radius)
local out
while true do
  out = within(r)
  if #out >= limit or r >= radius then break end
  r = math.min(r * 2, radius)
end
if #out == 0 then return out end
local ids = {}
for i, driver in ipairs(out) do ids[i] = driver[1] end
local coords = redis.call('GEOPOS', KEYS[1], unpack(ids))
local answer = {}
for i, driver in ipairs(out) do
  answer[i] = {driver[1], driver[2], coords[i][1], coords[i][2], driver[3], driver[4]}
end
return answer
"#;

/// One step of `forget_older_than`. KEYS: the GEO set, the meta hash. ARGV: the `HSCAN` cursor,
/// before_ms, the `COUNT`. Returns `{next cursor, drivers removed}`. A meta that does not parse
/// is left alone: housekeeping never destroys what it cannot read. A busy flag that never met a
/// position is dropped once older than `before_ms` too, but not counted: it was no driver.
const FORGET_SCRIPT: &str = r#"
local scan = redis.call('HSCAN', KEYS[2], ARGV[1], 'COUNT', ARGV[3])
local fields = scan[2]
local before = tonumber(ARGV[2])
local removed = 0
for i = 1, #fields, 2 do
  local id = fields[i]
  local at, _, _, busy_at = string.match(fields[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)')
  if at then
    if at ~= '' then
      if tonumber(at) < before then
        redis.call('ZREM', KEYS[1], id)
        removed = removed + redis.call('HDEL', KEYS[2], id)
      end
    elseif busy_at == '' or tonumber(busy_at) < before then
      redis.call('HDEL', KEYS[2], id)
    end
  end
end
return {scan[1], removed}
"#;

// The scripts, hashed once: calls send their SHA (`EVALSHA`) and load them only when Redis
// lacks them.
static UPDATE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(UPDATE_SCRIPT));
static SET_BUSY: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SET_BUSY_SCRIPT));
static NEAREST: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(NEAREST_SCRIPT));
static FORGET: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FORGET_SCRIPT));

/// Where drivers are, kept in Redis. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct RedisGeoIndex {
    redis: RedisCache,
    prefix: String,
}

impl RedisGeoIndex {
    /// Connects to `url` and checks that Redis answers; keys start with `prefix`.
    pub async fn connect(url: &str, options: RedisOptions, prefix: &str) -> PortResult<Self> {
        Ok(Self::sharing(
            &RedisCache::connect(url, options).await?,
            prefix,
        ))
    }

    /// An index on `cache`'s connection (and its timeout and refusal state), its keys starting
    /// with the deployment's `prefix`, so a process that has both holds one connection.
    pub fn sharing(cache: &RedisCache, prefix: &str) -> Self {
        Self {
            redis: cache.clone(),
            prefix: prefix.to_owned(),
        }
    }

    /// The GEO set of `tenant`'s drivers.
    pub fn geo_key(&self, tenant: &TenantId) -> String {
        format!("{}{}drivers:geo", self.prefix, tenant.key_namespace())
    }

    /// The hash of `tenant`'s drivers' report times, flags and vehicle types.
    pub fn meta_key(&self, tenant: &TenantId) -> String {
        format!("{}{}drivers:geo:meta", self.prefix, tenant.key_namespace())
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> PortResult<T> {
        self.redis
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }
}

/// The radius `nearest` searches first: a thirty-second of the query's, at least
/// [`FIRST_RADIUS_MIN_M`] (see the module docs).
fn first_radius_m(radius_m: f64) -> f64 {
    (radius_m / 32.0).max(FIRST_RADIUS_MIN_M)
}

/// A vehicle type as the meta stores it: nothing for none, `|type` for one.
fn stored_vehicle(vehicle_type: Option<&str>) -> String {
    vehicle_type.map_or_else(String::new, |vehicle| format!("|{vehicle}"))
}

/// One driver as the `nearest` script answers it.
type Candidate = (String, String, String, String, String, String);

fn parse_candidate(
    (driver_id, distance, lng, lat, at_ms, vehicle): Candidate,
) -> PortResult<NearbyDriver> {
    let number = |what: &str, text: &str| {
        text.parse::<f64>().map_err(|_| {
            PortError::Corrupt(format!(
                "driver {driver_id}'s {what} is not a number: {text:?}"
            ))
        })
    };
    Ok(NearbyDriver {
        distance_m: number("distance", &distance)?,
        lat: number("latitude", &lat)?,
        lng: number("longitude", &lng)?,
        at_ms: at_ms.parse().map_err(|_| {
            PortError::Corrupt(format!("driver {driver_id}'s report time is {at_ms:?}"))
        })?,
        vehicle_type: vehicle.strip_prefix('|').map(str::to_owned),
        driver_id,
    })
}

#[async_trait]
impl GeoIndex for RedisGeoIndex {
    async fn update(
        &self,
        tenant: &TenantId,
        positions: &[DriverPosition],
    ) -> PortResult<Vec<bool>> {
        positions.iter().try_for_each(check_position)?;
        let (geo, meta) = (self.geo_key(tenant), self.meta_key(tenant));
        let mut applied = Vec::with_capacity(positions.len());
        for chunk in positions.chunks(POSITIONS_PER_CALL) {
            let mut invocation = UPDATE.prepare_invoke();
            invocation.key(&geo).key(&meta).arg(chunk.len());
            for position in chunk {
                invocation
                    .arg(&position.driver_id)
                    .arg(position.lng)
                    .arg(position.lat)
                    .arg(position.at_ms)
                    .arg(u8::from(position.available))
                    .arg(stored_vehicle(position.vehicle_type.as_deref()));
            }
            let flags: Vec<i64> = self.invoke(invocation).await?;
            if flags.len() != chunk.len() {
                return Err(PortError::Corrupt(format!(
                    "the geo update script answered {} flags for {} positions",
                    flags.len(),
                    chunk.len()
                )));
            }
            applied.extend(flags.into_iter().map(|flag| flag == 1));
        }
        Ok(applied)
    }

    async fn set_busy(
        &self,
        tenant: &TenantId,
        driver_id: &str,
        busy: bool,
        at_ms: i64,
    ) -> PortResult<bool> {
        if driver_id.is_empty() {
            return Err(PortError::Invalid("a driver id is empty".into()));
        }
        let mut invocation = SET_BUSY.prepare_invoke();
        invocation
            .key(self.meta_key(tenant))
            .arg(driver_id)
            .arg(u8::from(busy))
            .arg(at_ms);
        let applied: i64 = self.invoke(invocation).await?;
        Ok(applied == 1)
    }

    async fn nearest(
        &self,
        tenant: &TenantId,
        query: &NearbyQuery,
    ) -> PortResult<Vec<NearbyDriver>> {
        check_query(query)?;
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = NEAREST.prepare_invoke();
        invocation
            .key(self.geo_key(tenant))
            .key(self.meta_key(tenant))
            .arg(query.lng)
            .arg(query.lat)
            .arg(query.radius_m)
            .arg(query.limit)
            .arg(query.fresh_since_ms)
            .arg(stored_vehicle(query.vehicle_type.as_deref()))
            .arg(query.limit * 4 + 16)
            .arg(first_radius_m(query.radius_m));
        let found: Vec<Candidate> = self.invoke(invocation).await?;
        found.into_iter().map(parse_candidate).collect()
    }

    async fn forget_older_than(&self, tenant: &TenantId, before_ms: i64) -> PortResult<u64> {
        let (geo, meta) = (self.geo_key(tenant), self.meta_key(tenant));
        let mut cursor = "0".to_owned();
        let mut removed = 0_u64;
        loop {
            let mut invocation = FORGET.prepare_invoke();
            invocation
                .key(&geo)
                .key(&meta)
                .arg(&cursor)
                .arg(before_ms)
                .arg(FORGET_SCAN_COUNT);
            let (next, step): (String, u64) = self.invoke(invocation).await?;
            removed += step;
            if next == "0" {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> PortResult<()> {
        self.redis.ping().await
    }
}
