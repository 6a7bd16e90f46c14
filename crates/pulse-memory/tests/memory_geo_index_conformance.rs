//! The geo index suite against the in-process index.

use pulse_conformance::Fixture;
use pulse_memory::MemoryGeoIndex;

pulse_conformance::geo_index_suite!(async { Fixture::new(MemoryGeoIndex::new()) });
