//! Tenants and keys, wired: the store is the SQL database; the key check guards every API
//! router; the admin token guards `/admin/v1`; an empty store gets the `default` tenant and a
//! key the newcomer finds in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use pulse_core::clock::SharedClock;
use pulse_core::rate_limit::RateLimiter;
use pulse_http::admin::AdminApi;
use pulse_http::auth::ApiGuard;
use pulse_store::Database;
use pulse_tenants::{AdminToken, Authenticator, IssuedKey, Tenants};

use crate::config::Config;

/// The file in the data directory holding the `default` tenant's first key (mode 0600).
pub const API_KEY_FILE: &str = "api-key";
/// The file in the data directory holding the generated admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Tenant and key administration on `store`.
pub fn service(store: &Database, clock: SharedClock) -> Tenants {
    Tenants::new(Arc::new(store.clone()), clock)
}

/// The key check and quotas in front of the API routes.
pub fn guard(
    config: &Config,
    tenants: &Tenants,
    limiter: Arc<dyn RateLimiter>,
    clock: SharedClock,
) -> Arc<ApiGuard> {
    Arc::new(ApiGuard::new(
        Authenticator::new(tenants.store().clone(), clock, config.auth.settings()),
        limiter,
        config.quotas,
        &config.prefix,
    ))
}

/// The admin routes under `/admin/v1` (tenants, keys, and the tenants' event pipelines).
pub fn admin_router(
    config: &Config,
    tenants: Tenants,
    pipelines: pulse_gateway::book::PipelineBook,
    profiles: pulse_profiles::service::ProfileService,
    clock: SharedClock,
) -> anyhow::Result<axum::Router> {
    let token = admin_token(config)?;
    Ok(pulse_http::admin::admin_router(
        AdminApi {
            tenants,
            token,
            pipelines,
            profiles,
            clock,
        },
        std::time::Duration::from_secs(config.backend_timeout_secs),
        config.http.api_body_limits(),
    ))
}

/// `PULSE_ADMIN_TOKEN` when set, else the token in `<data_dir>/admin-token`, generated there on
/// first start. Never logged: only the file's path is.
pub fn admin_token(config: &Config) -> anyhow::Result<AdminToken> {
    if let Some(token) = &config.admin_token {
        return AdminToken::new(&token.0).map_err(anyhow::Error::msg);
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    if let Some(existing) = read_secret(&path)? {
        return AdminToken::new(&existing)
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()));
    }
    let token = AdminToken::generate();
    match write_private(&path, token.expose()) {
        Ok(()) => {
            tracing::info!(file = %path.display(), "generated the admin token (set PULSE_ADMIN_TOKEN to choose one)");
            Ok(token)
        }
        // Another process on this data directory wrote it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = read_secret(&path)?.context("the admin token file vanished")?;
            AdminToken::new(&existing).map_err(anyhow::Error::msg)
        }
        Err(err) => Err(err).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// On an empty store, creates the `default` tenant with a `full` key, writes the key to
/// `<data_dir>/api-key` (mode 0600) and prints it once. Returns the key when one was made.
pub async fn bootstrap(config: &Config, tenants: &Tenants) -> anyhow::Result<Option<IssuedKey>> {
    let Some(key) = tenants
        .ensure_default()
        .await
        .context("cannot create the default tenant")?
    else {
        return Ok(None);
    };
    // A stale file from an older store would otherwise keep a dead key around.
    write_key_file(&config.data_dir, &key.api_key)?;
    let path = key_file(&config.data_dir);
    println!(
        "Created tenant \"default\" with a full API key (shown once; also in {}):\n  {}",
        path.display(),
        key.api_key
    );
    Ok(Some(key))
}

/// Where `pulse up` wrote the `default` tenant's key.
pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join(API_KEY_FILE)
}

/// Writes `key` to `<data_dir>/api-key` (mode 0600), replacing what was there.
pub fn write_key_file(data_dir: &Path, key: &str) -> anyhow::Result<()> {
    let path = key_file(data_dir);
    let _ = std::fs::remove_file(&path);
    write_private(&path, key).with_context(|| format!("cannot write {}", path.display()))
}

/// The key in `<data_dir>/api-key`, if the file is there.
pub fn read_key_file(data_dir: &Path) -> anyhow::Result<Option<String>> {
    read_secret(&key_file(data_dir))
}

/// The admin token a client of the running Pulse presents: `PULSE_ADMIN_TOKEN`, else the one
/// Pulse wrote into the data directory on its first start (never generated here).
pub fn client_admin_token(config: &Config) -> anyhow::Result<String> {
    if let Some(token) = &config.admin_token {
        return Ok(token.0.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    read_secret(&path)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no admin token: {} does not exist (start Pulse on this data directory first, or \
             set PULSE_ADMIN_TOKEN)",
            path.display()
        )
    })
}

fn read_secret(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Creates `path` readable and writable by its owner only; fails if it exists.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
