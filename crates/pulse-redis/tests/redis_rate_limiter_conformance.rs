//! The rate limiter suite against the real Redis started by `scripts/services`, on Redis's clock.

use std::time::Duration;

use pulse_conformance::rate_limit::LimiterUnderTest;
use pulse_conformance::{services, unique_name, Fixture};
use pulse_core::cache::Cache;
use pulse_core::rate_limit::{Quota, RateLimiter};
use pulse_redis::{RedisCache, RedisOptions, RedisRateLimiter};

async fn connect() -> RedisCache {
    let url = services::redis_url();
    match RedisCache::connect(&url, RedisOptions::default()).await {
        Ok(cache) => cache,
        Err(err) => services::missing("Redis", &url, err),
    }
}

async fn redis() -> Fixture<LimiterUnderTest> {
    let limiter = RedisRateLimiter::sharing(&connect().await);
    Fixture::new(LimiterUnderTest::on_real_time(limiter))
}

pulse_conformance::rate_limiter_suite!(redis());

#[tokio::test]
async fn a_bucket_expires_when_it_is_full_again_and_a_denied_call_leaves_its_expiry() {
    let cache = connect().await;
    let limiter = RedisRateLimiter::sharing(&cache);
    let key = unique_name("rate-expiry");
    let quota = Quota::new(0.1, 5).expect("valid quota");
    let spent = limiter.check(&key, &quota, 2).await.expect("check");
    let expiry = cache
        .ttl(&key)
        .await
        .expect("ttl")
        .flatten()
        .expect("the bucket expires");
    assert!(
        expiry <= Duration::from_secs(20) && expiry > Duration::from_secs(18),
        "expires in {expiry:?}, its reset was {:?}",
        spent.reset
    );
    assert!(!limiter.check(&key, &quota, 4).await.expect("check").allowed);
    let after_denial = cache.ttl(&key).await.expect("ttl").flatten();
    assert!(
        after_denial.is_some_and(|ttl| ttl <= expiry),
        "{after_denial:?}"
    );

    let read_only = unique_name("rate-read");
    limiter.check(&read_only, &quota, 0).await.expect("read");
    assert_eq!(
        cache.ttl(&read_only).await.expect("ttl"),
        None,
        "a read stores nothing"
    );
}

#[tokio::test]
async fn a_key_holding_something_else_is_a_caller_error_not_an_outage() {
    let cache = connect().await;
    let key = unique_name("rate-text");
    cache
        .set(&key, bytes::Bytes::from_static(b"text"), None)
        .await
        .expect("set");
    let err = RedisRateLimiter::sharing(&cache)
        .check(&key, &Quota::new(1.0, 1).expect("valid quota"), 1)
        .await
        .expect_err("text is no TAT");
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_retryable_error() {
    let err = RedisRateLimiter::connect("redis://127.0.0.1:1", RedisOptions::default())
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
}
