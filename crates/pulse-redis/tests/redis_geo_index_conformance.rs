//! The geo index suite against the real Redis started by `scripts/services`, plus what only the
//! Redis adapter has: its key layout (a contract) and the errors of a Redis that is away or of
//! meta it cannot read.

use pulse_conformance::{services, unique_name, Fixture};
use pulse_core::cache::Cache;
use pulse_core::geo_index::{DriverPosition, GeoIndex, NearbyQuery};
use pulse_core::{PortError, TenantId};
use pulse_redis::{RedisCache, RedisGeoIndex, RedisOptions};

async fn connect() -> RedisCache {
    let url = services::redis_url();
    match RedisCache::connect(&url, RedisOptions::default()).await {
        Ok(cache) => cache,
        Err(err) => services::missing("Redis", &url, err),
    }
}

async fn redis() -> Fixture<RedisGeoIndex> {
    Fixture::new(RedisGeoIndex::sharing(&connect().await, "pulse-test:"))
}

pulse_conformance::geo_index_suite!(redis());

fn position(driver: &str, at_ms: i64) -> DriverPosition {
    DriverPosition {
        driver_id: driver.to_owned(),
        lat: 52.52,
        lng: 13.405,
        at_ms,
        available: true,
        vehicle_type: Some("car".to_owned()),
    }
}

/// A plain connection, for what the adapter's own calls do not show.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(services::redis_url())
        .expect("a valid URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

#[tokio::test]
async fn drivers_live_in_a_geo_set_and_a_meta_hash_named_after_prefix_and_tenant() {
    let cache = connect().await;
    let prefix = format!("{}:", unique_name("geo-keys"));
    let index = RedisGeoIndex::sharing(&cache, &prefix);
    let acme = TenantId::parse("acme").expect("tenant id");
    let default = TenantId::default_tenant();
    index
        .update(&default, &[position("d1", 1_000)])
        .await
        .expect("update");
    index
        .update(&acme, &[position("d2", 1_000)])
        .await
        .expect("update");
    assert!(index
        .set_busy(&acme, "d2", true, 2_000)
        .await
        .expect("busy"));

    assert_eq!(index.geo_key(&default), format!("{prefix}drivers:geo"));
    assert_eq!(index.geo_key(&acme), format!("{prefix}t:acme:drivers:geo"));
    assert_eq!(
        index.meta_key(&acme),
        format!("{prefix}t:acme:drivers:geo:meta")
    );
    let members = |key: String| {
        let cache = cache.clone();
        async move {
            let found = cache.index_range(&key, 0, 10).await.expect("range");
            found
                .into_iter()
                .map(|(member, _)| member)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(members(format!("{prefix}drivers:geo")).await, ["d1"]);
    assert_eq!(members(format!("{prefix}t:acme:drivers:geo")).await, ["d2"]);

    let mut conn = raw().await;
    let geopos: Vec<Option<(f64, f64)>> = redis::cmd("GEOPOS")
        .arg(format!("{prefix}drivers:geo"))
        .arg("d1")
        .query_async(&mut conn)
        .await
        .expect("GEOPOS");
    let (lng, lat) = geopos[0].expect("a position");
    assert!((lng - 13.405).abs() < 1e-5 && (lat - 52.52).abs() < 1e-5);
    let meta: Option<String> = redis::cmd("HGET")
        .arg(format!("{prefix}t:acme:drivers:geo:meta"))
        .arg("d2")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    assert_eq!(meta.as_deref(), Some("1000|1|1|2000|car"));

    for tenant in [&default, &acme] {
        index
            .forget_older_than(tenant, i64::MAX)
            .await
            .expect("forget");
    }
    let left: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}drivers:geo"))
        .arg(format!("{prefix}drivers:geo:meta"))
        .arg(format!("{prefix}t:acme:drivers:geo"))
        .arg(format!("{prefix}t:acme:drivers:geo:meta"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0, "forgetting everyone leaves no keys behind");
}

#[tokio::test]
async fn forget_walks_a_large_hash_in_steps() {
    let index = RedisGeoIndex::sharing(&connect().await, &format!("{}:", unique_name("geo-big")));
    let tenant = TenantId::default_tenant();
    // Enough drivers that the hash is a real hash table and HSCAN takes many steps, and that
    // `update` splits the batch into several script calls.
    let positions: Vec<DriverPosition> = (0..5_000)
        .map(|i| DriverPosition {
            lat: 52.4 + f64::from(i % 100) * 0.002,
            lng: 13.3 + f64::from(i / 100) * 0.004,
            ..position(&format!("d{i}"), if i % 2 == 0 { 1_000 } else { 5_000 })
        })
        .collect();
    let applied = index.update(&tenant, &positions).await.expect("update");
    assert!(applied.iter().all(|applied| *applied));
    assert_eq!(applied.len(), 5_000);
    assert_eq!(
        index
            .forget_older_than(&tenant, 2_000)
            .await
            .expect("forget"),
        2_500
    );
    let query = NearbyQuery {
        lat: 52.5,
        lng: 13.4,
        radius_m: 50_000.0,
        limit: 500,
        vehicle_type: None,
        fresh_since_ms: 0,
    };
    let found = index.nearest(&tenant, &query).await.expect("nearest");
    assert_eq!(found.len(), 500);
    assert!(found.iter().all(|driver| driver.at_ms == 5_000));
    assert_eq!(
        index
            .forget_older_than(&tenant, i64::MAX)
            .await
            .expect("forget"),
        2_500
    );
}

#[tokio::test]
async fn meta_that_does_not_parse_is_a_caller_error_and_nothing_of_the_batch_applies() {
    let index = RedisGeoIndex::sharing(&connect().await, &format!("{}:", unique_name("geo-bad")));
    let tenant = TenantId::default_tenant();
    let mut conn = raw().await;
    let _: () = redis::cmd("HSET")
        .arg(index.meta_key(&tenant))
        .arg("broken")
        .arg("not meta")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let err = index
        .update(
            &tenant,
            &[position("fine", 1_000), position("broken", 1_000)],
        )
        .await
        .expect_err("unreadable meta");
    assert!(matches!(err, PortError::Invalid(_)), "{err}");
    assert!(!err.is_retryable(), "{err}");
    let members: i64 = redis::cmd("ZCARD")
        .arg(index.geo_key(&tenant))
        .query_async(&mut conn)
        .await
        .expect("ZCARD");
    assert_eq!(
        members, 0,
        "the batch's first position was not applied either"
    );
    assert!(index.set_busy(&tenant, "broken", true, 1).await.is_err());
    assert_eq!(
        index
            .forget_older_than(&tenant, i64::MAX)
            .await
            .expect("forget"),
        0,
        "housekeeping leaves what it cannot read"
    );
    let _: () = redis::cmd("DEL")
        .arg(index.meta_key(&tenant))
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_error() {
    let err = RedisGeoIndex::connect("redis://127.0.0.1:1", RedisOptions::default(), "")
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
}
