//! What a Rust team pays for each library: without default features, a crate that only
//! publishes or only implements a worker pulls in no HTTP server, no command-line parser, no
//! progress bars, no cron or time-zone tables, no log formatting, no SQLite, and never the
//! producer; the HTTP ingest alone does not compile SQLite either (only the status index does),
//! and the status API's client is an HTTP client only.

use std::process::Command;

/// Crates that belong to the binaries and servers, not to the libraries' core.
const HEAVY: [&str; 11] = [
    "axum",
    "hyper",
    "clap",
    "indicatif",
    "croner",
    "chrono-tz",
    "toml",
    "tracing-subscriber",
    "warren-producer",
    "rusqlite",
    "libsqlite3-sys",
];

/// The crate names in `cargo tree -e normal --no-default-features -p <package>`.
fn tree(package: &str) -> Vec<String> {
    tree_with(package, &[])
}

/// The crate names in `cargo tree -e normal --no-default-features -p <package> <features>`.
fn tree_with(package: &str, features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-e",
            "normal",
            "--no-default-features",
            "--prefix",
            "none",
        ])
        .args(features)
        .args(["--format", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_libraries_without_default_features_pull_in_no_server_or_tool_crates() {
    for package in ["warren-common", "warren-worker", "warren-producer"] {
        let crates = tree(package);
        assert!(crates.iter().any(|c| c == "lapin"), "{package}: {crates:?}");
        let heavy: Vec<&String> = crates
            .iter()
            .filter(|c| HEAVY.contains(&c.as_str()) && c.as_str() != package)
            .collect();
        assert!(heavy.is_empty(), "{package} pulls in {heavy:?}");
    }
}

#[test]
fn only_the_status_index_compiles_sqlite() {
    let ingest = tree_with("warren-producer", &["--features", "http"]);
    assert!(ingest.iter().any(|c| c == "axum"), "{ingest:?}");
    let sqlite: Vec<&String> = ingest.iter().filter(|c| c.contains("sqlite")).collect();
    assert!(sqlite.is_empty(), "the ingest alone pulls in {sqlite:?}");
    let index = tree_with("warren-producer", &["--features", "status"]);
    assert!(index.iter().any(|c| c == "rusqlite"), "{index:?}");
}

#[test]
fn the_status_client_is_an_http_client_without_a_server_or_sqlite() {
    let client = tree_with("warren-producer", &["--features", "status-client"]);
    assert!(client.iter().any(|c| c == "hyper"), "{client:?}");
    let server: Vec<&String> = client
        .iter()
        .filter(|c| ["axum", "rusqlite", "libsqlite3-sys", "chrono"].contains(&c.as_str()))
        .collect();
    assert!(server.is_empty(), "the status client pulls in {server:?}");
}

#[test]
fn the_worker_does_not_depend_on_the_producer_even_with_every_feature() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["tree", "-e", "normal", "--all-features", "--prefix", "none"])
        .args(["--format", "{p}", "-p", "warren-worker"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(!text.contains("warren-producer"), "{text}");
}
