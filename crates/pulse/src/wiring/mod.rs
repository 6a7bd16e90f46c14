//! One module per domain: how the binary builds that domain's services from the open backends and
//! the configuration. A new domain adds a module here instead of growing `app.rs`.

pub mod gateway;
pub mod jobs;
pub mod orders;
pub mod profiles;
pub mod rides;
pub mod surge;
pub mod tenants;
pub mod wallet;
