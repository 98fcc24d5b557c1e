//! The real Prometheus server scrapes a real `warren-worker` and `warren-producer serve` with
//! the scrape configuration of `deploy/prometheus.yml` (its worker and producer jobs, file-based
//! targets and alert rules), and its query API reports exactly the tasks the test ran.
//! `promtool` only checks the files; this checks that the server reads what the binaries
//! expose, under the job labels the alert rules expect.
//!
//! Debian's `prometheus` package ships `/usr/bin/prometheus` (`scripts/test` installs it); where
//! it is missing the test says `SKIPPED`, or fails under CI (`skip_or_fail`).

use crate::{binary, WorkerProcess};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use warren_tests::*;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

/// Tasks the test publishes through the ingest and runs on the worker.
const TASKS: usize = 25;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

fn find_prometheus() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// A directory of this test's own, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `deploy/prometheus.yml` as deployed, with a 1 s scrape and evaluation interval and only the
/// Warren jobs (RabbitMQ's plugin is not enabled here). The jobs keep their file-based target
/// lists, written next to the config with the given addresses, and the alert rules are
/// copied next to it, so the server loads the same relative paths an operator's does.
fn write_config(dir: &Path, worker: &str, ingest: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus.yml")).expect("config");
    let mut doc = YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .remove(0);
    let Yaml::Hash(top) = &mut doc else {
        panic!("deploy/prometheus.yml is not a mapping")
    };
    let key = |k: &str| Yaml::String(k.to_owned());
    let mut global = yaml_rust2::yaml::Hash::new();
    global.insert(key("scrape_interval"), key("1s"));
    global.insert(key("evaluation_interval"), key("1s"));
    top.insert(key("global"), Yaml::Hash(global));
    let jobs = top.get_mut(&key("scrape_configs")).expect("scrape_configs");
    let Yaml::Array(jobs) = jobs else {
        panic!("scrape_configs is not a list")
    };
    // The processes this test runs (the scheduler's job is left out: no scheduler runs here).
    jobs.retain(|job| {
        job["job_name"]
            .as_str()
            .is_some_and(|n| ["warren-worker", "warren-producer"].contains(&n))
    });
    let names: Vec<&str> = jobs.iter().filter_map(|j| j["job_name"].as_str()).collect();
    assert_eq!(names, ["warren-worker", "warren-producer"]);
    std::fs::create_dir_all(dir.join("targets")).expect("targets dir");
    for (job, addr) in [("warren-worker", worker), ("warren-producer", ingest)] {
        let file = dir.join(format!("targets/{job}.yml"));
        std::fs::write(file, format!("- targets: [\"{addr}\"]\n")).expect("targets file");
    }
    std::fs::copy(repo().join("deploy/alerts.yml"), dir.join("alerts.yml")).expect("rules");
    let mut out = String::new();
    YamlEmitter::new(&mut out).dump(&doc).expect("YAML out");
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, out).expect("config file");
    path
}

/// Percent-encodes a query-string value (every byte but unreserved ones).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query that returns one sample (`None` while it returns none).
async fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let path = format!("/api/v1/query?query={}", encode(promql));
    let (status, body) = http_get(prometheus, &path).await.ok()?;
    assert_eq!(status, 200, "{promql}: {body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    let result = answer["data"]["result"].as_array()?;
    assert!(result.len() <= 1, "{promql}: {body}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

/// Starts `warren-producer serve` on `listen` and waits until it is ready.
async fn start_ingest(queue: &str, listen: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(binary("warren-producer"))
        .args(["serve", "--listen", listen, "--queue", queue])
        .env("AMQP_URL", amqp_url())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("warren-producer serve starts");
    let lines = capture_lines(child.stderr.take().expect("stderr is piped"));
    wait_for_line(&lines, "HTTP ingest listening", Duration::from_secs(30))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(20),
        "the ingest to be ready",
        || async { http_get(listen, "/readyz").await.is_ok_and(|r| r.0 == 200) },
    )
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_worker_and_the_ingest_and_reports_the_tasks_they_ran() {
    let Some(server) = find_prometheus() else {
        let why = "prometheus is not installed (scripts/test installs Debian's prometheus package)";
        skip_or_fail("scraping with the Prometheus server", why);
        return;
    };
    let queue = unique_queue("prom");
    let worker = WorkerProcess::start(&["--queue", &queue], &amqp_url()).await;
    let ingest_addr = format!("127.0.0.1:{}", free_port());
    let _ingest = start_ingest(&queue, &ingest_addr).await;

    let dir = TempDir(std::env::temp_dir().join(format!("warren-prom-{}", &queue[5..])));
    let config = write_config(&dir.0, &worker.admin, &ingest_addr);
    let prometheus = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(server)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let log = capture_lines(child.stderr.take().expect("stderr is piped"));
    wait_until(
        Duration::from_secs(20),
        "prometheus to be ready",
        || async {
            http_get(&prometheus, "/-/ready")
                .await
                .is_ok_and(|r| r.0 == 200)
        },
    )
    .await;

    let tasks: Vec<Value> = (0..TASKS).map(|_| json!({"task": "demo.noop"})).collect();
    let response = reqwest::Client::new()
        .post(format!("http://{ingest_addr}/v1/tasks:batch"))
        .json(&json!({ "tasks": tasks }))
        .send()
        .await
        .expect("the ingest answers");
    assert_eq!(
        response.status().as_u16(),
        202,
        "{:?}",
        response.text().await
    );

    // Both targets are scraped under the job names the alert rules use, and once the last
    // task has run, Prometheus holds exactly the counts the processes produced.
    let succeeded =
        format!(r#"sum(warren_tasks_succeeded_total{{job="warren-worker",queue="{queue}"}})"#);
    let published = r#"sum(warren_producer_published_total{job="warren-producer"})"#;
    let want = TASKS as f64;
    let counts = || async {
        (
            query(&prometheus, &succeeded).await,
            query(&prometheus, published).await,
        )
    };
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while counts().await != (Some(want), Some(want)) {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let log = log.lock().expect("not poisoned").join("\n");
    assert!(
        waited.is_ok(),
        "Prometheus reports {:?} (succeeded, published), not {TASKS} each; its log:\n{log}",
        counts().await
    );
    assert_eq!(
        query(&prometheus, r#"sum(up{job=~"warren-.*"})"#).await,
        Some(2.0)
    );
    // The worker agrees, so Prometheus neither lost nor invented a count.
    let direct = sample(&worker.scrape().await, "warren_tasks_succeeded_total", &[]);
    assert_eq!(direct, want);

    // The alert rules loaded with the config, as in a deployment.
    let (status, rules) = http_get(&prometheus, "/api/v1/rules").await.unwrap();
    assert_eq!(status, 200);
    assert!(rules.contains("\"WarrenDeadLettersGrowing\""), "{rules}");

    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;
}
