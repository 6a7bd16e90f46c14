//! The layering rule, enforced: core and domain crates talk to the outside world only through
//! ports, so none of them may depend — directly or through another crate — on a database,
//! broker, cache or HTTP client/server library. Only adapters (and the binary) may.
//!
//! Reads the workspace's real dependency graph from `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::Command;

use serde_json::Value;

/// Libraries that do I/O against a backend; only adapters may use them.
const IO_LIBRARIES: [&str; 5] = ["sqlx", "rdkafka", "redis", "reqwest", "axum"];

/// Crates that hold ports, platform machinery or domain logic.
const CORE_AND_DOMAIN_CRATES: [&str; 15] = [
    "pulse-core",
    "pulse-geo",
    "pulse-proto",
    "pulse-outbox",
    "pulse-runtime",
    "pulse-resilience",
    "pulse-trace",
    "pulse-surge",
    "pulse-orders",
    "pulse-tenants",
    "pulse-gateway",
    "pulse-jobs",
    "pulse-marketplace",
    "pulse-ledger",
    "pulse-profiles",
];

/// The triple rustc builds for by default.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

/// The dependency graph (normal dependencies only: tests and builds may use anything), by
/// package name.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The graph of this platform only: the others' crates need not be downloaded.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--offline",
            "--filter-platform",
        ])
        .arg(host_triple())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata JSON");
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            (
                package["id"].as_str().expect("id"),
                package["name"].as_str().expect("name"),
            )
        })
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("nodes") {
        let name = names[node["id"].as_str().expect("node id")].to_owned();
        let deps = node["deps"].as_array().expect("deps").iter().filter(|dep| {
            dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind["kind"].is_null()))
        });
        let entry = graph.entry(name).or_default();
        for dep in deps {
            entry.insert(names[dep["pkg"].as_str().expect("dep pkg")].to_owned());
        }
    }
    graph
}

/// For each I/O library `start` reaches, the chain of crates that leads there.
fn io_paths(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Vec<Vec<String>> {
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    let mut seen = BTreeSet::from([start.to_owned()]);
    let mut found = Vec::new();
    while let Some(name) = queue.pop_front() {
        if IO_LIBRARIES.contains(&name.as_str()) {
            let mut path = vec![name.clone()];
            while let Some(up) = parent.get(path.last().expect("non-empty")) {
                path.push(up.clone());
            }
            path.reverse();
            found.push(path);
            continue;
        }
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                parent.insert(dep.clone(), name.clone());
                queue.push_back(dep.clone());
            }
        }
    }
    found
}

#[test]
fn core_and_domain_crates_reach_no_io_library() {
    let graph = normal_dependencies();
    let mut violations = Vec::new();
    for krate in CORE_AND_DOMAIN_CRATES {
        assert!(graph.contains_key(krate), "{krate} is not in the workspace");
        for path in io_paths(&graph, krate) {
            violations.push(path.join(" → "));
        }
    }
    assert!(
        violations.is_empty(),
        "core and domain crates must reach backends through ports, not libraries:\n{}",
        violations.join("\n")
    );
}

/// The check sees through the graph: the adapters it does not cover do reach their libraries,
/// so a domain crate that depended on one of them would be caught.
#[test]
fn the_check_finds_the_libraries_adapters_use() {
    let graph = normal_dependencies();
    for (adapter, library) in [
        ("pulse-store", "sqlx"),
        ("pulse-kafka", "rdkafka"),
        ("pulse-redis", "redis"),
        ("pulse-http", "axum"),
        ("pulse", "sqlx"),
    ] {
        let paths = io_paths(&graph, adapter);
        assert!(
            paths
                .iter()
                .any(|path| path.last().map(String::as_str) == Some(library)),
            "{adapter} should reach {library}: {paths:?}"
        );
    }
}
