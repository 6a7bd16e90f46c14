//! Cache key layout of the surge loop, in one place, behind the deployment's prefix (empty by
//! default, so the seed's contract `surge:{h3}` holds as is) and the tenant's namespace.

use std::sync::Arc;

use h3o::CellIndex;
use pulse_core::TenantId;

/// The keys of one deployment. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// The layout under `prefix` (empty: the contract names).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The layout of `tenant`'s data, namespaced by [`TenantId::key_namespace`] after the
    /// deployment prefix: the `default` tenant keeps the seed's `surge:{h3}`, every other
    /// tenant's keys start `t:{tenant_id}:`.
    pub fn for_tenant(&self, tenant: &TenantId) -> Self {
        if tenant.is_default() {
            return self.clone();
        }
        Self {
            prefix: format!("{}{}", self.prefix, tenant.key_namespace()).into(),
        }
    }

    /// `surge:{h3}` → [`crate::SurgeValue`] JSON (the seed's contract).
    pub fn surge(&self, cell: impl std::fmt::Display) -> String {
        format!("{}surge:{cell}", self.prefix)
    }

    /// Index of cells with a published `surge:{h3}`, scored by when that value expires (Unix
    /// ms), so readers list live cells without scanning keys.
    pub fn surge_cells(&self) -> String {
        format!("{}surge:cells", self.prefix)
    }

    /// Index of available drivers, scored by their latest ping (Unix ms); their positions are at
    /// [`Keys::driver`].
    pub fn available_drivers(&self) -> String {
        format!("{}drivers:available", self.prefix)
    }

    /// Index of drivers on a ride, scored by their latest ping or ride event (Unix ms); their
    /// positions are at [`Keys::driver`].
    pub fn drivers_on_ride(&self) -> String {
        format!("{}drivers:on-ride", self.prefix)
    }

    /// The generation of the engines' state in this cache: a random value without a TTL,
    /// written when the state is (re)built. If it vanishes — a Redis restarted without
    /// persistence — or changes, the windows were lost, and each engine rebuilds its
    /// partitions' from the log.
    pub fn state_generation(&self) -> String {
        format!("{}surge:state-generation", self.prefix)
    }

    /// Orders in a cell during one window bucket.
    pub(crate) fn demand(&self, cell: CellIndex, bucket: i64) -> String {
        format!("{}demand:{cell}:{bucket}", self.prefix)
    }

    /// Available drivers whose latest ping fell in a cell during one window bucket.
    pub(crate) fn supply(&self, cell: CellIndex, bucket: i64) -> String {
        format!("{}supply:{cell}:{bucket}", self.prefix)
    }

    /// A driver's latest ping.
    pub fn driver(&self, driver_id: &str) -> String {
        format!("{}driver:{driver_id}", self.prefix)
    }

    /// Guard marking an order as counted.
    pub(crate) fn seen_order(&self, order_id: &str) -> String {
        format!("{}seen:order:{order_id}", self.prefix)
    }

    /// A locked quote.
    pub(crate) fn quote(&self, quote_id: &uuid::Uuid) -> String {
        format!("{}quote:{quote_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_tenants_keys_are_prefixed_and_the_default_tenants_are_the_contract() {
        let cell = "8928308280fffff";
        let acme = TenantId::parse("acme").unwrap();
        let keys = Keys::with_prefix("staging.");
        assert_eq!(
            keys.for_tenant(&acme).surge(cell),
            "staging.t:acme:surge:8928308280fffff"
        );
        assert_eq!(
            Keys::default().for_tenant(&acme).driver("d1"),
            "t:acme:driver:d1"
        );
        assert_eq!(
            Keys::default()
                .for_tenant(&TenantId::default_tenant())
                .surge(cell),
            "surge:8928308280fffff"
        );
    }

    #[test]
    fn the_default_layout_is_the_contract_and_a_prefix_goes_first() {
        let cell = "8928308280fffff";
        assert_eq!(Keys::default().surge(cell), "surge:8928308280fffff");
        assert_eq!(Keys::default().surge_cells(), "surge:cells");
        assert_eq!(
            Keys::with_prefix("staging.").surge(cell),
            "staging.surge:8928308280fffff"
        );
        assert_eq!(
            Keys::with_prefix("staging.").available_drivers(),
            "staging.drivers:available"
        );
    }
}
