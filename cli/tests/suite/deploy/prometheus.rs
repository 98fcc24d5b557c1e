//! The Prometheus scrape configs and alert rules: promtool accepts and unit-tests them, and the
//! alerts cover the failure modes with metrics that exist.

use super::*;

pub(super) fn promtool() -> Option<PathBuf> {
    let found = find_in_path("promtool");
    if found.is_none() {
        skip_or_fail(
            "the Prometheus files",
            "promtool is not installed (scripts/test installs Debian's prometheus package)",
        );
    }
    found
}

pub(super) fn scrape_job<'a>(config: &'a Yaml, name: &str) -> &'a Yaml {
    list(&config["scrape_configs"])
        .iter()
        .find(|job| str_of(&job["job_name"]) == name)
        .unwrap_or_else(|| panic!("no scrape job {name}"))
}

#[test]
fn promtool_accepts_the_scrape_configs() {
    let Some(promtool) = promtool() else {
        return;
    };
    for config in ["deploy/prometheus.yml", "deploy/compose/prometheus.yml"] {
        run_ok(
            Command::new(&promtool)
                .args(["check", "config", config])
                .current_dir(repo()),
        );
    }
}

#[test]
fn promtool_accepts_and_unit_tests_the_alert_rules() {
    let Some(promtool) = promtool() else {
        return;
    };
    run_ok(
        Command::new(&promtool)
            .args(["check", "rules", "deploy/alerts.yml"])
            .current_dir(repo()),
    );
    run_ok(
        Command::new(&promtool)
            .args(["test", "rules", "deploy/alerts_test.yml"])
            .current_dir(repo()),
    );
}

/// Every alert of deploy/alerts.yml: (name, expression, rule).
pub(super) fn alerts() -> Vec<(String, String, Yaml)> {
    let doc = &load("deploy/alerts.yml")[0];
    list(&doc["groups"])
        .iter()
        .flat_map(|group| list(&group["rules"]).iter())
        .map(|rule| {
            (
                str_of(&rule["alert"]).to_owned(),
                str_of(&rule["expr"]).to_owned(),
                rule.clone(),
            )
        })
        .collect()
}

/// The Warren metric families an expression reads (histogram series by their family name).
pub(super) fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("warren_"))
        .map(|metric| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s))
                .unwrap_or(metric);
            base.to_owned()
        })
        .collect()
}

#[test]
fn alert_rules_cover_the_failure_modes_with_metrics_that_exist() {
    let alerts = alerts();
    let covered = |parts: &[&str]| {
        alerts
            .iter()
            .any(|(_, expr, _)| parts.iter().all(|p| expr.contains(p)))
    };
    assert!(
        covered(&["increase(warren_tasks_dead_lettered_total"]),
        "dead letters growing"
    );
    assert!(covered(&["up{job=\"warren-worker\"} == 0"]), "workers down");
    assert!(
        covered(&["sum(warren_scheduler_leader", "== 0"]),
        "no scheduler leads"
    );
    assert!(
        covered(&["warren_broker_connected == 0"]),
        "workers not ready"
    );
    assert!(
        covered(&["histogram_quantile(", "warren_queue_latency_seconds_bucket"]),
        "latency"
    );
    assert!(
        covered(&[
            "warren_queue_ready_messages",
            "warren_queue_consumers",
            "== 0"
        ]),
        "no consumers"
    );

    // The worker's own families, and the broker connection's, which it registers too.
    let metrics_source = read("worker/src/metrics.rs") + &read("common/src/broker_metrics.rs");
    for (name, expr, rule) in &alerts {
        assert!(
            !str_of(&rule["labels"]["severity"]).is_empty(),
            "{name} has a severity"
        );
        assert!(
            !str_of(&rule["annotations"]["summary"]).is_empty(),
            "{name} has a summary"
        );
        // The scheduler's are checked against a running scheduler's /metrics
        // (shipped_schedules_load_in_a_real_scheduler_whose_healthcheck_passes).
        let worker_metrics = metric_names(expr)
            .into_iter()
            .filter(|m| !m.starts_with("warren_scheduler_"));
        for metric in worker_metrics {
            assert!(
                metrics_source.contains(&format!("\"{metric}\"")),
                "alert {name} uses {metric}, which the worker does not export"
            );
        }
    }
}

#[test]
fn scrape_configs_load_the_rules_and_define_the_alerts_jobs() {
    let jobs_in_alerts: BTreeSet<String> = alerts()
        .iter()
        .flat_map(|(_, expr, _)| {
            expr.split("job=\"")
                .skip(1)
                .map(|s| s.split('"').next().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        jobs_in_alerts.contains("warren-worker"),
        "{jobs_in_alerts:?}"
    );
    for path in ["deploy/prometheus.yml", "deploy/compose/prometheus.yml"] {
        let config = &load(path)[0];
        let dir = Path::new(path).parent().unwrap();
        let rules: Vec<PathBuf> = list(&config["rule_files"])
            .iter()
            .map(|r| normalize(&dir.join(str_of(r))))
            .collect();
        assert_eq!(rules, [PathBuf::from("deploy/alerts.yml")], "{path}");
        for job in &jobs_in_alerts {
            scrape_job(config, job);
        }
    }
    // The host lists of deploy/prometheus.yml exist, each with a target.
    let config = &load("deploy/prometheus.yml")[0];
    for job in list(&config["scrape_configs"]) {
        for sd in list(&job["file_sd_configs"]) {
            for file in list(&sd["files"]) {
                let groups = load(&format!("deploy/{}", str_of(file)));
                let targets = list(&groups[0][0]["targets"]);
                assert!(!targets.is_empty(), "{file:?} lists no target");
            }
        }
    }
}
