//! The schema's migrations (spec 80): SQL files embedded in the binary,
//! numbered from 1, each with a checksum and a `compat_floor`, the lowest
//! schema a binary may know and still run on the database after it. Expand
//! steps keep the floor and are applied by any daemon at start; contract
//! steps raise it and are applied only by `memoryctl fleet migrate
//! --contract`.

use crate::db::Failure;
use memoryd_core::store::StoreError;
use memoryd_proto::ErrorKind;
use sha2::{Digest, Sha256};

/// Serializes migrations across every daemon of the fleet.
pub const MIGRATION_LOCK: i64 = 8_000_000_000;

/// One migration step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    pub compat_floor: i32,
}

impl Migration {
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// This binary's migrations, in order.
pub const MIGRATIONS: &[Migration] =
    &[Migration { version: 1, name: "fleet", sql: include_str!("../migrations/0001_fleet.sql"), compat_floor: 1 }];

/// A test build's extra steps (spec 80, scenario 7), only with the test
/// sandbox armed and `MEMORYD_TEST_EXTRA_MIGRATIONS=1`: an expand step
/// (a new table; the floor stays) and a contract step that raises the
/// floor to itself.
pub(crate) const TEST_STEPS: &[Migration] = &[
    Migration { version: 2, name: "test-expand", sql: "CREATE TABLE test_expand (x INTEGER);", compat_floor: 1 },
    Migration { version: 3, name: "test-contract", sql: "DROP TABLE test_expand;", compat_floor: 3 },
];

/// The steps this binary runs: [`MIGRATIONS`], and a test build's extras.
pub fn steps() -> Vec<Migration> {
    let mut steps = MIGRATIONS.to_vec();
    let armed = |k: &str| std::env::var_os(k).is_some_and(|v| v == "1");
    if armed("MEMORYD_TEST_SANDBOX") && armed("MEMORYD_TEST_EXTRA_MIGRATIONS") {
        steps.extend_from_slice(TEST_STEPS);
    }
    steps
}

/// The newest schema `steps` know.
pub fn newest(steps: &[Migration]) -> i32 {
    steps.iter().map(|m| m.version).max().unwrap_or(0)
}

/// What a start found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// The newest version applied.
    pub version: i32,
    /// The database's compatibility floor.
    pub compat_floor: i32,
    /// The versions this start applied.
    pub applied: Vec<i32>,
    /// Contract steps this binary has that are not applied yet.
    pub pending_contract: Vec<i32>,
}

fn incompatible(message: String) -> Failure {
    Failure::Store(StoreError::Unavailable { kind: ErrorKind::StoreIncompatible, message })
}

/// Brings `schema` up to date with `steps`' expand migrations (and, with
/// `contract`, its contract ones too), one transaction each, under the
/// migration lock; refuses a database whose applied steps do not match
/// their files or whose floor is above this binary.
pub async fn migrate(
    client: &mut deadpool_postgres::ClientWrapper,
    schema: &str,
    host_id: &str,
    steps: &[Migration],
    contract: bool,
) -> Result<Schema, Failure> {
    let newest = newest(steps);
    let mut applied_now = Vec::new();
    loop {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (version INTEGER PRIMARY KEY,
               name TEXT NOT NULL, checksum TEXT NOT NULL, compat_floor INTEGER NOT NULL,
               applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_by TEXT NOT NULL);"
        ))
        .await?;
        let rows = tx
            .query(
                &format!("SELECT version, checksum, compat_floor FROM \"{schema}\".schema_migrations ORDER BY version"),
                &[],
            )
            .await?;
        let mut version = 0;
        let mut floor = 0;
        for row in &rows {
            let v: i32 = row.get(0);
            let sum: String = row.get(1);
            version = version.max(v);
            floor = floor.max(row.get::<_, i32>(2));
            if let Some(step) = steps.iter().find(|m| m.version == v)
                && step.checksum() != sum
            {
                return Err(incompatible(format!(
                    "migration {v} ({}) applied to the fleet database does not match this memoryd's; nothing was applied (the schema was changed by another build)",
                    step.name
                )));
            }
        }
        if newest < floor {
            return Err(incompatible(format!(
                "this memoryd is older than the fleet database (its schema {newest}, the database needs at least {floor}); run memoryctl update"
            )));
        }
        let next = steps.iter().find(|m| m.version > version);
        let pending_contract: Vec<i32> = steps
            .iter()
            .filter(|m| m.version > version && m.compat_floor > floor.max(1) && !contract)
            .map(|m| m.version)
            .collect();
        match next {
            Some(step) if step.compat_floor <= floor.max(1) || contract => {
                tx.batch_execute(&format!("SET LOCAL search_path = \"{schema}\"; {}", step.sql)).await?;
                tx.execute(
                    &format!("INSERT INTO \"{schema}\".schema_migrations (version, name, checksum, compat_floor, applied_by) VALUES ($1, $2, $3, $4, $5)"),
                    &[&step.version, &step.name, &step.checksum(), &step.compat_floor, &host_id],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version = step.version, name = step.name, "fleet database migrated");
                applied_now.push(step.version);
            }
            _ => {
                tx.commit().await?;
                return Ok(Schema { version, compat_floor: floor, applied: applied_now, pending_contract });
            }
        }
    }
}
