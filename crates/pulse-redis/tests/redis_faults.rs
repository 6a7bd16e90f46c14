//! A Redis that stops, comes back or hangs: real `redis-server` processes that these tests start
//! (and kill) themselves on free loopback ports, so the shared test Redis is never disturbed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pulse_conformance::services;
use pulse_core::cache::Cache;
use pulse_core::PortError;
use pulse_redis::{RedisCache, RedisOptions};

/// How long a test waits for a server to start or for the adapter to notice a change.
const PATIENCE: Duration = Duration::from_secs(10);

/// A `redis-server` of this test's own on 127.0.0.1; killed when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl OwnRedis {
    /// Starts one on a free port.
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        Self::start_on(port)
    }

    /// Starts one on `port`, e.g. where a killed one listened.
    fn start_on(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("pulse-redis-faults-{port}"));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let port_arg = port.to_string();
        let args = ["--bind", "127.0.0.1", "--port", &port_arg, "--save", ""];
        let child = Command::new("redis-server")
            .args(args)
            .args(["--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| services::missing("the redis-server binary", "PATH", err));
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects once the server answers.
async fn connect(redis: &OwnRedis, options: RedisOptions) -> RedisCache {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match RedisCache::connect(&redis.url(), options.clone()).await {
            Ok(cache) => return cache,
            Err(err) if Instant::now() > deadline => services::missing("Redis", &redis.url(), err),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn value() -> Bytes {
    Bytes::from_static(b"v")
}

#[tokio::test]
async fn a_stopped_redis_fails_calls_at_once_and_is_used_again_once_it_is_back() {
    let mut redis = OwnRedis::start();
    let timeout = Duration::from_secs(2);
    let options = RedisOptions {
        connect_timeout: timeout,
        response_timeout: timeout,
    };
    let cache = connect(&redis, options).await;
    cache.set("before", value(), None).await.unwrap();

    redis.kill();
    for call in 1..=5 {
        let started = Instant::now();
        let err = cache.get("before").await.expect_err("Redis is stopped");
        let took = started.elapsed();
        assert!(matches!(err, PortError::Unavailable { .. }), "{err}");
        assert!(err.is_retryable(), "{err}");
        assert!(
            took < Duration::from_millis(200),
            "call {call} took {took:?} against a refusing Redis (timeout {timeout:?})"
        );
    }

    let _restarted = OwnRedis::start_on(redis.port);
    let deadline = Instant::now() + PATIENCE;
    while let Err(err) = cache.set("after", value(), None).await {
        assert!(Instant::now() < deadline, "not used again: {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.get("after").await.unwrap(), Some(value()));
}

#[tokio::test]
async fn a_hung_redis_still_costs_the_call_timeout() {
    let mut redis = OwnRedis::start();
    let timeout = Duration::from_millis(300);
    // A connection attempt outlasts a call, so every call waiting on one ends at its own timeout.
    let options = RedisOptions {
        connect_timeout: Duration::from_secs(2),
        response_timeout: timeout,
    };
    let cache = connect(&redis, options).await;
    redis.kill();
    let _ = cache.get("k").await.expect_err("Redis is stopped");

    // In its place, a peer that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind(("127.0.0.1", redis.port))
        .await
        .expect("the stopped Redis's port");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            held.push(stream);
        }
    });

    // It refuses nothing: once the adapter has seen that, calls wait for it and time out.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let started = Instant::now();
        let err = cache.get("k").await.expect_err("nothing answers");
        if matches!(err, PortError::Timeout { .. }) {
            assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "still failing at once: {err}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        let started = Instant::now();
        let err = cache.get("k").await.expect_err("nothing answers");
        assert!(matches!(err, PortError::Timeout { .. }), "{err}");
        assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    }
}
