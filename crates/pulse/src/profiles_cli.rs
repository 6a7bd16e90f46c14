//! `pulse profiles reconcile|rebuild`: a client of the running Pulse's admin API, which does
//! the work where the hot copies live and streams its progress as NDJSON; drawn here as a
//! progress line on a terminal, or a line per tenant elsewhere.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::cli::ProfilesCommand;
use crate::config::Config;

/// How long the client waits for the server to start answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command` against the Pulse that `config` describes (or `--url`).
pub async fn run(command: &ProfilesCommand, config: &Config) -> anyhow::Result<()> {
    let (path, body, url, json_out) = match command {
        ProfilesCommand::Reconcile {
            full, json, url, ..
        } => ("reconcile", json!({ "full": full }), url, *json),
        ProfilesCommand::Rebuild {
            tenant, json, url, ..
        } => ("rebuild", json!({ "tenant_id": tenant }), url, *json),
    };
    let base = url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    let token = crate::wiring::tenants::client_admin_token(config)?;
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let endpoint = format!("{}/admin/v1/profiles/{path}", base.trim_end_matches('/'));
    let mut response = client
        .post(&endpoint)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach Pulse at {base} (is it running? --url)"))?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!("{endpoint} answered {status}: {text}");
    }
    let terminal = std::io::stderr().is_terminal();
    let mut pending = String::new();
    let mut outcome = Ok(());
    while let Some(chunk) = response.chunk().await.context("the answer broke off")? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let value: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("not a JSON line: {line:?}"))?;
            if let Some(err) = value.get("error") {
                outcome = Err(anyhow::anyhow!(
                    "{}",
                    err["message"].as_str().unwrap_or("the server gave up")
                ));
            } else if let Some(progress) = value.get("progress") {
                draw(&value, progress, terminal);
            } else if let Some(done) = value.get("done") {
                if terminal {
                    eprint!("\r\x1b[2K");
                }
                if json_out {
                    println!("{}", serde_json::to_string(&value)?);
                } else {
                    report(&value, done);
                }
            }
        }
    }
    outcome
}

fn draw(line: &Value, progress: &Value, terminal: bool) {
    let text = match (progress.get("events"), progress.get("total")) {
        (Some(events), Some(total)) => {
            let (events, total) = (events.as_u64().unwrap_or(0), total.as_u64().unwrap_or(0));
            let share = if total == 0 {
                1.0
            } else {
                events as f64 / total as f64
            };
            let filled = (share * 30.0).round() as usize;
            format!(
                "rebuilding {} [{}{}] {events}/{total} events",
                line["tenant"].as_str().unwrap_or("?"),
                "#".repeat(filled.min(30)),
                " ".repeat(30 - filled.min(30)),
            )
        }
        _ => format!(
            "reconciling: {} checked, {} repaired",
            progress["checked"].as_u64().unwrap_or(0),
            progress["repaired"].as_object().map_or(0, |reasons| reasons
                .values()
                .filter_map(Value::as_u64)
                .sum::<u64>()),
        ),
    };
    if terminal {
        eprint!("\r\x1b[2K{text}");
        let _ = std::io::stderr().flush();
    }
}

fn report(line: &Value, done: &Value) {
    if let Some(tenant) = line.get("tenant").and_then(Value::as_str) {
        eprintln!(
            "tenant {tenant}: {} events read, {} applied, {} merges, {} profiles replaced, {} stale hot copies dropped",
            done["events"], done["applied"], done["merges"], done["profiles_reset"], done["hot_copies_dropped"]
        );
    } else if let Some(tenants) = done.get("tenants") {
        eprintln!("rebuilt the profiles of {tenants} tenant(s) from the archive");
    } else {
        let repaired = done["repaired"]
            .as_object()
            .map(|reasons| {
                reasons
                    .iter()
                    .map(|(reason, n)| format!("{n} {reason}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|text| !text.is_empty())
            .unwrap_or_else(|| "none".to_owned());
        eprintln!(
            "reconciled {} profiles ({} not cached): repaired {repaired}",
            done["checked"], done["not_cached"]
        );
    }
}
