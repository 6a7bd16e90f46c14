//! Segment's own client libraries against Pulse's Segment-compatible ingress, on the embedded
//! default and on PostgreSQL + Kafka + Redis: `@segment/analytics-node` (npm) and
//! `segment-analytics-python` (PyPI), installed once by `scripts/segment-clients` and run by the
//! test through the drivers in `scripts/segment/`, each send an identify, a track and a page
//! through their batching path (`POST /v1/batch`, flushed after each call); all six events land
//! in `events_raw` once, with the call as `event_type` and the message as the payload. The same
//! drivers given a wrong write key exit non-zero, and nothing of theirs lands.
//!
//! No skip: without node, npm or python3, or when the install fails, the test fails, saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::TestApp;
use pulse_store::{Database, Sql, StoreOptions};
use serde_json::Value;

/// How long one driver run may take (three flushes; python's consumer waits 0.5 s per batch).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory `scripts/segment-clients` installed the libraries and drivers in: run once per
/// test process (the script itself also holds a lock, for other processes).
fn clients_dir() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(install_clients) {
        Ok(dir) => dir.clone(),
        Err(why) => {
            let hint = if std::env::var_os("CI").is_some() {
                "CI runs `scripts/test`, which installs them before the tests \
                 (`scripts/segment-clients`): this machine could not"
            } else {
                "run `scripts/segment-clients` by hand to see why (it needs node, npm, python3 \
                 and the npm and PyPI registries once)"
            };
            panic!("Segment's client libraries are not available: {why}\n{hint}")
        }
    }
}

fn install_clients() -> Result<PathBuf, String> {
    for tool in ["node", "npm", "python3"] {
        match Command::new(tool).arg("--version").output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => return Err(format!("`{tool} --version` failed: {}", output.status)),
            Err(error) => return Err(format!("`{tool}` not found ({error})")),
        }
    }
    let root = workspace_root();
    let output = Command::new(root.join("scripts/segment-clients"))
        .current_dir(&root)
        .output()
        .map_err(|error| format!("scripts/segment-clients could not run: {error}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "scripts/segment-clients failed ({}):\n{stderr}",
            output.status
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    for driver in ["node/send.mjs", "send.py", "venv/bin/python"] {
        if !dir.join(driver).exists() {
            return Err(format!(
                "scripts/segment-clients printed {dir:?}, which has no {driver}:\n{stderr}"
            ));
        }
    }
    Ok(dir)
}

/// The libraries the test runs: its name in message ids, then the command (program, script).
fn drivers(dir: &Path) -> [(&'static str, PathBuf, PathBuf); 2] {
    [
        ("node", PathBuf::from("node"), dir.join("node/send.mjs")),
        ("python", dir.join("venv/bin/python"), dir.join("send.py")),
    ]
}

/// Runs one driver against `base` with `write_key`; returns whether it succeeded, and its
/// stderr. A driver that outlives [`DRIVER_TIMEOUT`] is killed and fails the test.
async fn run_driver(
    program: &Path,
    script: &Path,
    base: &str,
    write_key: &str,
    run: &str,
) -> (bool, String) {
    let started = std::time::Instant::now();
    let child = tokio::process::Command::new(program)
        .arg(script)
        .args([base, write_key, run])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DRIVER_TIMEOUT, child)
        .await
        .unwrap_or_else(|_| panic!("{} {} hung", program.display(), script.display()))
        .unwrap_or_else(|error| panic!("{} could not run: {error}", program.display()));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!(
        "{} {} ({run}): {} in {:?}\n{stderr}",
        program.display(),
        script.display(),
        output.status,
        started.elapsed()
    );
    (output.status.success(), stderr)
}

/// Rows of `events_raw` with this event id: `(tenant, event_type, payload)`.
async fn archived(store: &Database, event_id: &str) -> Vec<(String, String, Value)> {
    let rows = store
        .fetch_all(
            &Sql::new(
                "SELECT tenant_id, event_type, CAST(payload AS TEXT) FROM events_raw \
                 WHERE event_id = $1",
            )
            .bind(event_id),
        )
        .await
        .expect("events_raw");
    rows.iter()
        .map(|row| {
            (
                row.text(0).unwrap(),
                row.text(1).unwrap(),
                serde_json::from_str(&row.text(2).unwrap()).unwrap(),
            )
        })
        .collect()
}

async fn segment_clients_deliver(app: &TestApp, store_url: &str) {
    let dir = clients_dir();
    let store = Database::connect(store_url, &StoreOptions::default())
        .await
        .expect("store");
    let run = format!("seg{}", uuid::Uuid::new_v4().simple());
    let user_id = format!("u-{run}");

    for (_, program, script) in drivers(&dir) {
        let (ok, stderr) = run_driver(&program, &script, &app.base, &app.api_key, &run).await;
        assert!(ok, "{} failed against Pulse:\n{stderr}", script.display());
    }
    // A wrong write key: Pulse answers 401, and each driver must say it failed.
    let refused_run = format!("{run}x");
    let wrong_key = "pk_aaaaaaaaaaaa_0000000000000000000000000000000000000000";
    for (_, program, script) in drivers(&dir) {
        let (ok, stderr) = run_driver(&program, &script, &app.base, wrong_key, &refused_run).await;
        assert!(
            !ok,
            "{} succeeded with a wrong write key:\n{stderr}",
            script.display()
        );
        assert!(stderr.contains("401"), "the 401 is reported:\n{stderr}");
    }

    let calls = ["identify", "track", "page"];
    let ids: Vec<(&str, &str, String)> = ["node", "python"]
        .into_iter()
        .flat_map(|library| {
            let run = &run;
            calls
                .into_iter()
                .map(move |call| (library, call, format!("{run}-{library}-{call}")))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for (_, _, id) in &ids {
        while archived(&store, id).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} never reached events_raw"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A repeat arriving later would add a second row: give it the time to.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for (library, call, id) in &ids {
        let rows = archived(&store, id).await;
        assert_eq!(rows.len(), 1, "exactly one row for {id}: {rows:?}");
        let (tenant, event_type, payload) = &rows[0];
        assert_eq!(tenant, "default", "{id}");
        assert_eq!(event_type, call, "{id}: {payload}");
        assert_eq!(payload["userId"], user_id.as_str(), "{id}: {payload}");
        assert_eq!(payload["type"], *call, "{id}: {payload}");
        assert!(payload.get("writeKey").is_none(), "{id}: {payload}");
        let library_name = match *library {
            "node" => "@segment/analytics-node",
            _ => "analytics-python",
        };
        assert_eq!(
            payload["context"]["library"]["name"], library_name,
            "{id} was sent by the library: {payload}"
        );
        match *call {
            "identify" => assert_eq!(
                payload["traits"]["email"],
                format!("{user_id}@example.com"),
                "{id}: {payload}"
            ),
            "track" => {
                assert_eq!(payload["event"], "Order Completed", "{id}: {payload}");
                assert_eq!(
                    payload["properties"]["order_id"],
                    format!("{run}-order"),
                    "{id}: {payload}"
                );
                assert_eq!(payload["properties"]["revenue"], 25.5, "{id}: {payload}");
                // Python's json sends 2^53 + 1 as it is; JavaScript's numbers stop at 2^53 - 1
                // (exact), which the node library sends. Either way Pulse keeps the integer.
                let total = match *library {
                    "node" => 9_007_199_254_740_991_u64,
                    _ => 9_007_199_254_740_993_u64,
                };
                assert_eq!(
                    payload["properties"]["total"].as_u64(),
                    Some(total),
                    "{id}: the integer kept: {payload}"
                );
            }
            _ => {
                assert_eq!(payload["name"], "Home", "{id}: {payload}");
                assert_eq!(payload["properties"]["path"], "/", "{id}: {payload}");
            }
        }
    }
    // Nothing the refused drivers sent landed.
    for (library, call, _) in &ids {
        let id = format!("{refused_run}-{library}-{call}");
        assert!(archived(&store, &id).await.is_empty(), "{id} was refused");
    }
}

#[tokio::test]
async fn embedded_segment_client_libraries_deliver_identify_track_and_page() {
    // Installed (or found) before the app runs: the install may take a while the first time.
    clients_dir();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_in(data.path(), |_| {}).await;
    let url = format!("sqlite://{}/pulse.db", data.path().display());
    segment_clients_deliver(&app, &url).await;
    app.stop().await;
}

#[tokio::test]
async fn distributed_segment_client_libraries_deliver_identify_track_and_page() {
    clients_dir();
    let store_url = pulse_conformance::services::fresh_postgres_database().await;
    let url = store_url.clone();
    let app = TestApp::spawn(|config| common::distributed(config, url)).await;
    segment_clients_deliver(&app, &store_url).await;
    app.stop().await;
}
