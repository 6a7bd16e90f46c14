//! The cache suite against the in-process TTL store.

use pulse_conformance::Fixture;
use pulse_memory::MemoryCache;

pulse_conformance::cache_suite!(async { Fixture::new(MemoryCache::default()) });
