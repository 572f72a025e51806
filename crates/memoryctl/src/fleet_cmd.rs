//! `memoryctl fleet hosts|settings|release|leave|migrate` and `memoryctl
//! store import` (spec 80): operator commands on the fleet database. They
//! need no daemon: each opens the database itself as an offline client,
//! makes one call bounded by `postgres.operator_timeout`, and prints a
//! table (or `--json`).

use crate::Ctx;
use crate::store_open::{off_runtime, open_fleet};
use clap::{Args, Subcommand};
use memoryd_core::config::ClientVersion;
use memoryd_core::store::{FileStore, StoreError};
use memoryd_store_pg::{FileState, PgStore, SettingsChange};
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum FleetAction {
    /// Every host of the fleet: daemon version, schema, last seen
    /// (database age), up or down, peers owned
    Hosts,
    /// Show the fleet's settings, or change them for every host at once
    ///
    /// Raising the floor makes sessions on every host read-only at their
    /// next write. The config's presence.* values only seed these when the
    /// database is first set up; `verify` warns where they differ.
    Settings(SettingsArgs),
    /// Mark a personality not present, so that another host may claim it
    ///
    /// For a host that is gone for good: a host never takes a present name
    /// by itself, as it cannot tell a dead host from a cut-off one.
    /// Deletes nothing: links and messages wait for the peer's new host.
    Release {
        /// The personality
        personality: String,
    },
    /// Mark every peer of this host not present and take its active
    /// sessions offline (before moving them to other hosts)
    Leave,
    /// Apply the schema's contract steps, once every host runs a memoryd
    /// that knows the new schema
    ///
    /// Refused, naming them, while a host seen within host_offline_after
    /// runs an older schema.
    Migrate {
        /// Apply the contract steps (the only kind this command applies;
        /// expand steps are applied by any daemon at start)
        #[arg(long)]
        contract: bool,
    },
}

/// `fleet settings` options; none prints the settings.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// The lowest client version admitted read-write (MAJOR.MINOR)
    #[arg(long, value_name = "V", conflicts_with = "no_floor")]
    pub min_client_version: Option<String>,
    /// Admit every client version read-write
    #[arg(long)]
    pub no_floor: bool,
    /// Silence after which a session is degraded (e.g. 30s)
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    pub degraded_after: Option<std::time::Duration>,
    /// Silence after which a session is offline (e.g. 60s)
    #[arg(long, value_name = "D", value_parser = humantime::parse_duration)]
    pub offline_after: Option<std::time::Duration>,
    /// Most undelivered messages kept per inbox
    #[arg(long, value_name = "N")]
    pub inbox_capacity: Option<usize>,
}

impl SettingsArgs {
    fn changes_something(&self) -> bool {
        self.min_client_version.is_some()
            || self.no_floor
            || self.degraded_after.is_some()
            || self.offline_after.is_some()
            || self.inbox_capacity.is_some()
    }
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Copy this host's S/store/ (links, inboxes in order, revocations)
    /// into the fleet database in one transaction
    ///
    /// Without --apply it prints what it would do and every name conflict.
    /// Presence is not imported; S/store/ is left as it is.
    Import {
        /// Make the copy (else only say what it would be)
        #[arg(long)]
        apply: bool,
    },
}

/// One operator call on the fleet database.
enum Call<'a> {
    Hosts,
    Settings(&'a SettingsArgs),
    Release(&'a str),
    Leave,
    MigrateContract,
    Import { local: &'a FileStore, apply: bool },
}

/// Runs `call` on the store; its answer as JSON (rows, or one object).
fn admin(store: &PgStore, call: &Call<'_>) -> Result<Value, StoreError> {
    let refused = |message: String| StoreError::Unavailable { kind: memoryd_proto::ErrorKind::RequestInvalid, message };
    match call {
        Call::Hosts => Ok(encode(&store.fleet_hosts()?)),
        Call::Settings(args) => {
            if let Some(v) = &args.min_client_version {
                v.parse::<ClientVersion>().map_err(|e| refused(format!("--min-client-version: {e}")))?;
            }
            if let (Some(d), Some(o)) = (args.degraded_after, args.offline_after)
                && o <= d
            {
                return Err(refused("--offline-after must be longer than --degraded-after".to_owned()));
            }
            if args.inbox_capacity == Some(0) {
                return Err(refused("--inbox-capacity must be at least 1".to_owned()));
            }
            if args.changes_something() {
                store.update_settings(&SettingsChange {
                    min_client_version: args.min_client_version.clone(),
                    no_floor: args.no_floor,
                    degraded_after: args.degraded_after,
                    offline_after: args.offline_after,
                    inbox_capacity: args.inbox_capacity,
                })?;
            }
            let settings = store.fleet_settings_now()?;
            Ok(json!({
                "minClientVersion": settings.min_client_version.map(|v| v.to_string()),
                "degradedAfter": humantime::format_duration(settings.degraded_after).to_string(),
                "offlineAfter": humantime::format_duration(settings.offline_after).to_string(),
                "hostOfflineAfter": humantime::format_duration(settings.host_offline_after).to_string(),
                "inboxCapacity": settings.inbox_capacity,
            }))
        }
        Call::Release(personality) => {
            if !memoryd_core::fleet::names::is_personality(personality) {
                return Err(refused(format!("{personality:?} is not a personality")));
            }
            Ok(json!({"personality": personality, "wasPresent": store.release(personality)?}))
        }
        Call::Leave => {
            let (released, events) = store.leave(std::time::SystemTime::now())?;
            Ok(
                json!({"released": released, "sessionsEnded": events.iter().filter(|e| e.new_state().is_some()).count()}),
            )
        }
        Call::MigrateContract => {
            let schema = store.migrate_contract(&[])?;
            Ok(json!({"schema": schema.version, "compatFloor": schema.compat_floor, "applied": schema.applied}))
        }
        Call::Import { local, apply } => Ok(encode(&store.import(&FileState::read(local)?, *apply)?)),
    }
}

/// An answer as JSON (plain data: it always serializes).
fn encode<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// `memoryctl fleet …`.
pub fn fleet(ctx: &Ctx, action: FleetAction) -> anyhow::Result<ExitCode> {
    if let FleetAction::Migrate { contract: false } = action {
        return Err(crate::Usage(
            "`fleet migrate` applies contract steps only: pass --contract (expand steps are applied by any daemon at start)"
                .to_owned(),
        )
        .into());
    }
    let answer = off_runtime(|| -> anyhow::Result<Value> {
        let store = open_fleet(&ctx.config)?;
        let call = match &action {
            FleetAction::Hosts => Call::Hosts,
            FleetAction::Settings(args) => Call::Settings(args),
            FleetAction::Release { personality } => Call::Release(personality),
            FleetAction::Leave => Call::Leave,
            FleetAction::Migrate { .. } => Call::MigrateContract,
        };
        Ok(admin(&store, &call)?)
    })?;
    if ctx.json {
        crate::print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    }
    match &action {
        FleetAction::Hosts => print_table(&answer, "no host has joined the fleet yet"),
        FleetAction::Settings(args) if !args.changes_something() => print_object(&answer),
        FleetAction::Settings(_) => {
            println!("fleet settings changed; every host applies them now:");
            print_object(&answer);
        }
        FleetAction::Release { personality } => {
            println!("{personality} released: another host may claim it now");
        }
        FleetAction::Leave => {
            println!("this host left the fleet: its peers are not present and its sessions are offline");
            print_object(&answer);
        }
        FleetAction::Migrate { .. } => print_object(&answer),
    }
    Ok(ExitCode::SUCCESS)
}

/// `memoryctl store import [--apply]`.
pub fn store(ctx: &Ctx, action: StoreAction) -> anyhow::Result<ExitCode> {
    let StoreAction::Import { apply } = action;
    if !ctx.installed {
        return Err(ctx.absent().into());
    }
    let answer = off_runtime(|| -> anyhow::Result<Value> {
        let store = open_fleet(&ctx.config)?;
        let local = FileStore::read_only(&ctx.paths);
        Ok(admin(&store, &Call::Import { local: &local, apply })?)
    })?;
    if ctx.json {
        crate::print_json(&json!({"applied": apply, "import": answer}))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", if apply { "imported into the fleet database:" } else { "would import (run again with --apply):" });
    print_object(&answer);
    Ok(ExitCode::SUCCESS)
}

/// Rows of objects as aligned columns, headed by their keys.
fn print_table(rows: &Value, empty: &str) {
    let rows: Vec<&serde_json::Map<String, Value>> =
        rows.as_array().into_iter().flatten().filter_map(Value::as_object).collect();
    let Some(first) = rows.first() else {
        println!("{empty}");
        return;
    };
    let keys: Vec<&String> = first.keys().collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| keys.iter().map(|k| cell(r.get(*k))).collect()).collect();
    let widths: Vec<usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| cells.iter().map(|c| c[i].len()).chain([k.len()]).max().unwrap_or(0))
        .collect();
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(keys.iter().map(|k| k.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

/// One object as `key: value` lines (lists as tables under their key).
fn print_object(value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if v.as_array().is_some_and(|a| a.iter().all(Value::is_object) && !a.is_empty()) {
                    println!("{key}:");
                    print_table(v, "");
                } else {
                    println!("{key}: {}", cell(Some(v)));
                }
            }
        }
        other => println!("{}", cell(Some(other))),
    }
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items.iter().map(|i| cell(Some(i))).collect::<Vec<_>>().join(","),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_plainly() {
        assert_eq!(cell(Some(&json!(["a", "b"]))), "a,b");
        assert_eq!(cell(Some(&Value::Null)), "-");
        assert_eq!(cell(Some(&json!(3))), "3");
        assert_eq!(cell(Some(&json!("up"))), "up");
    }
}
