//! The tenants domain's [`TenantStore`] on SQL: `tenants` and `api_keys`.

use pulse_core::{PortError, PortResult, TenantId};
use pulse_tenants::{KeyId, KeyRecord, Scope, Tenant, TenantQuotas, TenantStore};

use crate::sql::{Sql, SqlRow};
use crate::Database;

const TENANT_COLUMNS: &str = "tenant_id, quotas, created_at_ms";
const KEY_COLUMNS: &str = "k.key_id, k.tenant_id, k.scope, k.key_hash, k.created_at_ms, \
     k.revoked_at_ms";

fn corrupt(what: &str, err: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("{what}: {err}"))
}

/// A tenant from `tenant_id, quotas, created_at_ms` starting at column `at`.
fn tenant_from_row(row: &SqlRow, at: usize) -> PortResult<Tenant> {
    let id = row.text(at)?;
    let quotas: TenantQuotas = serde_json::from_str(&row.text(at + 1)?)
        .map_err(|err| corrupt(&format!("tenant {id} quotas"), err))?;
    Ok(Tenant {
        tenant_id: TenantId::parse(&id).map_err(|err| corrupt("tenant", err))?,
        quotas,
        created_at_ms: row.i64(at + 2)?,
    })
}

fn key_from_row(row: &SqlRow) -> PortResult<KeyRecord> {
    let id = row.text(0)?;
    let scope = row.text(2)?;
    Ok(KeyRecord {
        key_id: KeyId::parse(&id).map_err(|err| corrupt("api key", err))?,
        tenant: TenantId::parse(&row.text(1)?).map_err(|err| corrupt("api key tenant", err))?,
        scope: Scope::parse(&scope).ok_or_else(|| corrupt(&format!("key {id}"), scope))?,
        hash: row.text(3)?,
        created_at_ms: row.i64(4)?,
        revoked_at_ms: row.opt_i64(5)?,
    })
}

fn quotas_json(quotas: &TenantQuotas) -> PortResult<String> {
    serde_json::to_string(quotas).map_err(|err| PortError::Invalid(format!("quotas: {err}")))
}

fn insert_key(key: &KeyRecord) -> Sql {
    // Only for an existing tenant: the foreign key would refuse the row too, but as an error;
    // this way an unknown tenant is an answer.
    Sql::new(
        "INSERT INTO api_keys (key_id, tenant_id, scope, key_hash, created_at_ms)
         SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $2)",
    )
    .bind(key.key_id.as_str())
    .bind(key.tenant.as_str())
    .bind(key.scope.as_str())
    .bind(key.hash.as_str())
    .bind(key.created_at_ms)
}

fn key_by_id(id: &KeyId) -> Sql {
    Sql::new(format!(
        "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.key_id = $1"
    ))
    .bind(id.as_str())
}

#[async_trait::async_trait]
impl TenantStore for Database {
    async fn create_tenant(&self, tenant: &Tenant, first_key: &KeyRecord) -> PortResult<bool> {
        let insert_tenant = Sql::new(
            "INSERT INTO tenants (tenant_id, quotas, created_at_ms) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant.tenant_id.as_str())
        .bind(quotas_json(&tenant.quotas)?)
        .bind(tenant.created_at_ms);
        let insert_key = insert_key(first_key);
        self.write(move |mut tx| {
            Box::pin(async move {
                if tx.execute(&insert_tenant).await? == 0 {
                    return Ok(false);
                }
                tx.execute(&insert_key).await?;
                Ok(true)
            })
        })
        .await
    }

    async fn tenant(&self, id: &TenantId) -> PortResult<Option<Tenant>> {
        let sql = Sql::new(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE tenant_id = $1"
        ))
        .bind(id.as_str());
        let row = self.fetch_optional(&sql).await?;
        row.map(|row| tenant_from_row(&row, 0)).transpose()
    }

    async fn tenants(&self) -> PortResult<Vec<Tenant>> {
        let sql = Sql::new(format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY tenant_id"
        ));
        let rows = self.fetch_all(&sql).await?;
        rows.iter().map(|row| tenant_from_row(row, 0)).collect()
    }

    async fn set_quotas(&self, id: &TenantId, quotas: &TenantQuotas) -> PortResult<bool> {
        let sql = Sql::new("UPDATE tenants SET quotas = $2 WHERE tenant_id = $1")
            .bind(id.as_str())
            .bind(quotas_json(quotas)?);
        Ok(self.execute(sql).await? == 1)
    }

    async fn add_key(&self, key: &KeyRecord) -> PortResult<bool> {
        Ok(self.execute(insert_key(key)).await? == 1)
    }

    async fn revoke_key(&self, id: &KeyId, at_ms: i64) -> PortResult<Option<KeyRecord>> {
        let revoke = Sql::new(
            "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE key_id = $1",
        )
        .bind(id.as_str())
        .bind(at_ms);
        let read = key_by_id(id);
        self.write(move |mut tx| {
            Box::pin(async move {
                if tx.execute(&revoke).await? == 0 {
                    return Ok(None);
                }
                let row = tx.fetch_optional(&read).await?;
                row.as_ref().map(key_from_row).transpose()
            })
        })
        .await
    }

    async fn key(&self, id: &KeyId) -> PortResult<Option<(KeyRecord, Tenant)>> {
        let sql = Sql::new(format!(
            "SELECT {KEY_COLUMNS}, t.tenant_id, t.quotas, t.created_at_ms
             FROM api_keys k JOIN tenants t ON t.tenant_id = k.tenant_id
             WHERE k.key_id = $1"
        ))
        .bind(id.as_str());
        let Some(row) = self.fetch_optional(&sql).await? else {
            return Ok(None);
        };
        Ok(Some((key_from_row(&row)?, tenant_from_row(&row, 6)?)))
    }

    async fn keys_of(&self, tenant: &TenantId) -> PortResult<Vec<KeyRecord>> {
        let sql = Sql::new(format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.tenant_id = $1
             ORDER BY k.created_at_ms, k.key_id"
        ))
        .bind(tenant.as_str());
        let rows = self.fetch_all(&sql).await?;
        rows.iter().map(key_from_row).collect()
    }
}
