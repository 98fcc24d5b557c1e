//! The benchmark's smoke run: `warren-bench --smoke` runs every workload of `all` at a tiny size
//! against the real broker, exits 0, prints the table, writes a JSON report holding every
//! workload for both sides, and leaves none of its queues behind. Nothing here looks at a
//! performance figure: the machine's load decides those.

use warren_common::{Topology, TopologyError};

#[tokio::test(flavor = "multi_thread")]
async fn the_smoke_run_covers_every_workload_and_cleans_up() {
    let json = std::env::temp_dir().join(format!(
        "warren-bench-smoke-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warren-bench"))
        .args(["--smoke", "--json"])
        .arg(&json)
        .args(["--amqp-url", &warren_tests::amqp_url()])
        .output()
        .expect("warren-bench starts");
    assert!(
        output.status.success(),
        "warren-bench --smoke failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON report was written");
    let _ = std::fs::remove_file(&json);
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report is JSON");
    assert_eq!(report["smoke"], true);

    let table = String::from_utf8_lossy(&output.stdout);
    for workload in ["w1", "w2", "w3", "w4", "memory", "defaults", "calls"] {
        let rows = report["workloads"][workload]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("workload {workload} is missing from the report:\n{text}"));
        assert!(!rows.is_empty(), "workload {workload} has no rows");
        for row in rows {
            // Only the defaults workload's demo.cpu rows measure Warren alone.
            let warren_only = row["baseline"].is_null();
            let sides: &[&str] = if warren_only {
                assert_eq!(workload, "defaults", "a row without a baseline: {row}");
                &["warren"]
            } else {
                &["warren", "baseline"]
            };
            if warren_only && !row["target"].is_null() {
                // Not a timing: CPU-bound tasks never ran more at once than there are CPUs.
                assert_eq!(row["met"], true, "{workload}: {row}");
            }
            for side in sides {
                let samples = row[side]["samples"].as_array();
                assert!(
                    samples.is_some_and(|s| s.len() == 1),
                    "{workload}: `{}` has no {side} measurement: {row}",
                    row["metric"]
                );
            }
        }
        let label = format!("| {} |", workload.to_uppercase());
        assert!(
            table.contains(&label),
            "the table has no {label} row:\n{table}"
        );
    }

    let queues = report["queues"]
        .as_array()
        .expect("the report lists its queues");
    assert!(!queues.is_empty());
    let conn = warren_tests::raw_connection().await;
    for queue in queues {
        let queue = queue.as_str().expect("queue names are strings");
        let left = Topology::inspect(&conn, queue).await;
        assert!(
            matches!(left, Err(TopologyError::NotFound(_))),
            "queue `{queue}` was left behind: {left:?}"
        );
    }
}
