//! The cache suite against the real Redis started by `scripts/services`.

use pulse_conformance::{services, Fixture};
use pulse_redis::{RedisCache, RedisOptions};

async fn redis() -> Fixture<RedisCache> {
    let url = services::redis_url();
    match RedisCache::connect(&url, RedisOptions::default()).await {
        Ok(cache) => Fixture::new(cache),
        Err(err) => services::missing("Redis", &url, err),
    }
}

pulse_conformance::cache_suite!(redis());

#[tokio::test]
async fn an_unreachable_redis_is_reported_as_unavailable_quickly() {
    let started = std::time::Instant::now();
    let err = RedisCache::connect("redis://127.0.0.1:1", RedisOptions::default())
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.is_retryable(), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
