//! docker-compose.yml: valid, its worker scaling and outliving its drain, Prometheus loading
//! the mounted config and rules, the scheduler's two replicas of the mounted schedule, and the
//! healthchecks passing against a real worker and a real scheduler.

use super::*;

/// `docker-compose config` output (resolved and normalized), or None when the tool is missing.
pub(super) fn compose_config() -> Option<Yaml> {
    let Some(compose) = find_in_path("docker-compose") else {
        skip_or_fail(
            "docker-compose.yml",
            "docker-compose is not installed (scripts/test installs Debian's docker-compose)",
        );
        return None;
    };
    run_ok(
        Command::new(&compose)
            .args(["-f", "docker-compose.yml", "config", "-q"])
            .current_dir(repo()),
    );
    let out = run_ok(
        Command::new(&compose)
            .args(["-f", "docker-compose.yml", "config"])
            .current_dir(repo()),
    );
    Some(parse(&out, "docker-compose config").remove(0))
}

/// (host address, host port) of each port a service publishes; compose v1 prints
/// `127.0.0.1:8080:8080/tcp`, v2 a mapping.
fn published(service: &Yaml) -> Vec<(String, String)> {
    list(&service["ports"])
        .iter()
        .map(|p| match p {
            Yaml::Hash(_) => (
                str_of(&p["host_ip"]).to_owned(),
                match &p["published"] {
                    Yaml::Integer(n) => n.to_string(),
                    other => str_of(other).to_owned(),
                },
            ),
            other => {
                let parts: Vec<&str> = str_of(other).split(':').collect();
                assert_eq!(parts.len(), 3, "port {other:?} names its host address");
                (parts[0].to_owned(), parts[1].to_owned())
            }
        })
        .collect()
}

/// (host source, container target) of each bind mount of a service.
pub(super) fn mounts(service: &Yaml) -> Vec<(String, String)> {
    list(&service["volumes"])
        .iter()
        .map(|v| match v {
            Yaml::Hash(_) => (
                str_of(&v["source"]).to_owned(),
                str_of(&v["target"]).to_owned(),
            ),
            other => {
                let parts: Vec<&str> = str_of(other).split(':').collect();
                (parts[0].to_owned(), parts[1].to_owned())
            }
        })
        .collect()
}

#[test]
fn compose_file_is_valid_and_has_the_five_services() {
    let Some(config) = compose_config() else {
        return;
    };
    let services = &config["services"];
    for name in ["rabbitmq", "worker", "producer", "scheduler", "prometheus"] {
        assert!(services[name].is_hash(), "service {name} is missing");
        for (host, port) in published(&services[name]) {
            assert_eq!(
                host, "127.0.0.1",
                "{name} publishes port {port} beyond localhost"
            );
        }
    }
    let rabbitmq = &services["rabbitmq"];
    assert!(!rabbitmq["healthcheck"]["test"].is_badvalue());
    let ports: Vec<String> = published(rabbitmq).into_iter().map(|p| p.1).collect();
    for port in ["5672", "15672", "15692"] {
        assert!(ports.iter().any(|p| p == port), "rabbitmq publishes {port}");
    }
    let (plugins, _) = mounts(rabbitmq)
        .into_iter()
        .find(|(_, target)| target == "/etc/rabbitmq/enabled_plugins")
        .expect("rabbitmq mounts an enabled_plugins file");
    let plugins = std::fs::read_to_string(plugins).expect("the enabled_plugins file exists");
    assert!(plugins.contains("rabbitmq_management") && plugins.contains("rabbitmq_prometheus"));
    assert!(
        plugins.trim_end().ends_with("]."),
        "an Erlang term: {plugins}"
    );

    let producer = &services["producer"];
    let command: Vec<&str> = list(&producer["command"]).iter().map(str_of).collect();
    assert_eq!(
        command,
        ["warren-producer", "serve", "--listen", "0.0.0.0:8080"]
    );
    assert_eq!(published(producer), [("127.0.0.1".into(), "8080".into())]);
}

#[test]
fn compose_worker_scales_and_outlives_its_drain() {
    let Some(config) = compose_config() else {
        return;
    };
    let worker = &config["services"]["worker"];
    assert!(
        worker["container_name"].is_badvalue(),
        "a container_name prevents --scale worker=N"
    );
    assert!(
        published(worker).is_empty(),
        "a published port clashes with --scale worker=N"
    );
    assert!(
        !worker["build"].is_badvalue(),
        "the worker is built from the Dockerfile"
    );
    assert_eq!(
        str_of(&worker["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    let env = &worker["environment"];
    assert!(str_of(&env["AMQP_URL"]).contains("@rabbitmq:5672/"));
    let drain = seconds(str_of(&env["WARREN_SHUTDOWN_TIMEOUT"]));
    let grace = yaml_seconds(&worker["stop_grace_period"]);
    assert!(
        drain > 0 && grace > drain,
        "stop_grace_period {grace}s must exceed WARREN_SHUTDOWN_TIMEOUT {drain}s"
    );
    let script = healthcheck_script(worker);
    assert!(
        script.contains("/healthz") && script.contains("/9090"),
        "{script}"
    );
}

#[test]
fn compose_prometheus_loads_the_mounted_config_and_rules() {
    let Some(config) = compose_config() else {
        return;
    };
    let prometheus = &config["services"]["prometheus"];
    let mounts = mounts(prometheus);
    let target_of = |source: &str| {
        let source = repo().join(source);
        mounts
            .iter()
            .find(|(s, _)| Path::new(s) == source)
            .map(|(_, t)| PathBuf::from(t))
            .unwrap_or_else(|| panic!("prometheus mounts {}", source.display()))
    };
    let config_file = target_of("deploy/compose/prometheus.yml");
    let flag = format!("--config.file={}", config_file.display());
    assert!(list(&prometheus["command"])
        .iter()
        .any(|c| str_of(c) == flag));
    // The rule files resolve, inside the container, to the mounted deploy/alerts.yml.
    let alerts = target_of("deploy/alerts.yml");
    let scrape = &load("deploy/compose/prometheus.yml")[0];
    for rule_file in list(&scrape["rule_files"]) {
        let resolved = normalize(&config_file.parent().unwrap().join(str_of(rule_file)));
        assert_eq!(resolved, alerts, "rule file {rule_file:?}");
    }
    // Every worker replica, found by the compose service name, on its admin port.
    let job = scrape_job(scrape, "warren-worker");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(list(&sd["names"]), [Yaml::String("worker".into())]);
    assert_eq!(str_of(&sd["type"]), "A");
    assert_eq!(sd["port"].as_i64(), Some(9090));
    let producer = scrape_job(scrape, "warren-producer");
    assert_eq!(
        list(&producer["static_configs"][0]["targets"]),
        [Yaml::String("producer:8080".into())]
    );
}

const COMPOSE_SCHEDULE: &str = "deploy/compose/schedule.toml";
pub(super) const K8S_SCHEDULE: &str = "deploy/kubernetes/schedule.toml";

/// The port of an admin address such as `0.0.0.0:9092`.
pub(super) fn port_of(addr: &str) -> i64 {
    let (_, port) = addr.rsplit_once(':').expect("an address with a port");
    port.parse()
        .unwrap_or_else(|_| panic!("bad port in {addr}"))
}

/// The schedules of a shipped schedule file, checked against the stock worker the same
/// deployment runs: each task is one it registers, with a payload its handler decodes, on a
/// queue the workers consume (`queues`, as in WARREN_QUEUES).
pub(super) fn check_schedule(path: &str, queues: &str) {
    use warren_cli::demo;
    let schedules = schedules(path);
    assert!(!schedules.is_empty(), "{path} has no schedule");
    let mut registry = warren_worker::Registry::new();
    demo::register(&mut registry);
    let tasks = registry.names();
    for schedule in &schedules {
        let (name, task) = (&schedule.name, schedule.task.as_str());
        assert!(
            tasks.contains(&task),
            "{path}: schedule {name} publishes {task}, which the stock worker lacks ({tasks:?})"
        );
        let payload = schedule.payload.clone();
        let decodes = match task {
            "demo.sleep" => serde_json::from_value::<demo::Sleep>(payload).is_ok(),
            "demo.cpu" => serde_json::from_value::<demo::Cpu>(payload).is_ok(),
            "demo.flaky" => serde_json::from_value::<demo::Flaky>(payload).is_ok(),
            _ => true,
        };
        assert!(
            decodes,
            "{path}: schedule {name}: {task} cannot decode its payload"
        );
        assert!(
            queues.split(',').any(|q| q.trim() == schedule.queue),
            "{path}: schedule {name} publishes to {}, which no worker consumes ({queues})",
            schedule.queue
        );
    }
}

/// The schedules of a schedule file, as the scheduler reads them.
fn schedules(path: &str) -> Vec<warren_producer::scheduler::Schedule> {
    warren_producer::scheduler::schedule::parse(&read(path), path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Two replicas (one leads, one stands by) of the scheduler, each reading the repository's
/// schedule file, with the admin port that its healthcheck and Prometheus use, and time to
/// finish a tick when stopped.
#[test]
fn compose_scheduler_runs_two_replicas_of_the_mounted_schedule() {
    let Some(config) = compose_config() else {
        return;
    };
    let services = &config["services"];
    let scheduler = &services["scheduler"];
    let command: Vec<&str> = list(&scheduler["command"]).iter().map(str_of).collect();
    assert_eq!(command, ["warren-scheduler"]);
    let replicas = scheduler["scale"]
        .as_i64()
        .or(scheduler["deploy"]["replicas"].as_i64());
    assert_eq!(replicas, Some(2), "one leader and one standby");
    assert!(
        scheduler["container_name"].is_badvalue() && published(scheduler).is_empty(),
        "a container_name or a published port prevents two replicas"
    );
    assert_eq!(
        str_of(&scheduler["depends_on"]["rabbitmq"]["condition"]),
        "service_healthy"
    );
    let env = &scheduler["environment"];
    assert!(str_of(&env["AMQP_URL"]).contains("@rabbitmq:5672/"));

    let schedule = str_of(&env["WARREN_SCHEDULE"]);
    let (source, _) = mounts(scheduler)
        .into_iter()
        .find(|(_, target)| target == schedule)
        .unwrap_or_else(|| panic!("WARREN_SCHEDULE {schedule} is not mounted"));
    assert_eq!(Path::new(&source), repo().join(COMPOSE_SCHEDULE));
    let queues = str_of(&services["worker"]["environment"]["WARREN_QUEUES"]);
    check_schedule(COMPOSE_SCHEDULE, queues);

    let port = port_of(str_of(&env["WARREN_ADMIN_ADDR"]));
    assert_ne!(port, 9090, "the worker's admin port");
    let script = healthcheck_script(scheduler);
    assert!(
        script.contains("/healthz") && script.contains(&format!("/{port} ")),
        "{script}"
    );
    let exposed: Vec<String> = list(&scheduler["expose"])
        .iter()
        .map(|p| match p {
            Yaml::Integer(n) => n.to_string(),
            other => str_of(other).to_owned(),
        })
        .collect();
    assert_eq!(exposed, [port.to_string()]);
    let scrape = &load("deploy/compose/prometheus.yml")[0];
    let sd = &scrape_job(scrape, "warren-scheduler")["dns_sd_configs"][0];
    assert_eq!(list(&sd["names"]), [Yaml::String("scheduler".into())]);
    assert_eq!(sd["port"].as_i64(), Some(port));

    let confirm = seconds(str_of(&env["WARREN_CONFIRM_TIMEOUT"]));
    let grace = yaml_seconds(&scheduler["stop_grace_period"]);
    assert!(
        confirm > 0 && grace > confirm,
        "stop_grace_period {grace}s must exceed WARREN_CONFIRM_TIMEOUT {confirm}s"
    );
}

/// A GET over plain HTTP/1.0: (status, body).
pub(super) fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|r| r.1)
        .unwrap_or_default();
    (status, body.to_owned())
}

/// The real scheduler loads each shipped schedule file (a bad one stops it with exit code 2)
/// and serves its admin endpoints before the broker is reached: the compose healthcheck
/// passes, the Kubernetes probes' paths answer, and /metrics has a series per schedule and
/// every scheduler metric the alert rules use.
#[test]
fn shipped_schedules_load_in_a_real_scheduler_whose_healthcheck_passes() {
    let compose = &load("docker-compose.yml")[0];
    let script = healthcheck_script(&compose["services"]["scheduler"]);
    let port_in_script = format!(
        "/{}",
        port_of(str_of(
            &compose["services"]["scheduler"]["environment"]["WARREN_ADMIN_ADDR"]
        ))
    );
    let alert_metrics: BTreeSet<String> = alerts()
        .iter()
        .flat_map(|(_, expr, _)| metric_names(expr))
        .filter(|m| m.starts_with("warren_scheduler_"))
        .collect();
    assert!(!alert_metrics.is_empty(), "an alert on the scheduler");
    for file in [COMPOSE_SCHEDULE, K8S_SCHEDULE] {
        let logs = TempDir::new("scheduler-log");
        std::fs::create_dir_all(&logs.0).expect("a temporary directory");
        let log = logs.0.join("stderr");
        let port = free_port();
        let mut scheduler = Command::new(binary("warren-scheduler"))
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .env("WARREN_SCHEDULE", repo().join(file))
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("warren-scheduler starts");
        let here = script.replace(&port_in_script, &format!("/{port}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut healthy = false;
        while !healthy && Instant::now() < deadline {
            if let Some(status) = scheduler.try_wait().expect("the scheduler's status") {
                let stderr = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("warren-scheduler --schedule {file} exited with {status}:\n{stderr}");
            }
            std::thread::sleep(Duration::from_millis(200));
            healthy = bash_succeeds(&here);
        }
        let readyz = healthy.then(|| http_get(port, "/readyz").0);
        let metrics = healthy.then(|| http_get(port, "/metrics").1);
        let _ = scheduler.kill();
        let _ = scheduler.wait();
        assert!(healthy, "the healthcheck never passed: {here}");
        assert_eq!(readyz, Some(503), "/readyz: not ready while connecting");
        let metrics = metrics.unwrap_or_default();
        for schedule in schedules(file) {
            let name = schedule.name;
            let series = format!("warren_scheduler_ticks_published_total{{schedule=\"{name}\"}} 0");
            assert!(
                metrics.contains(&series),
                "{file}: no {series} in\n{metrics}"
            );
        }
        for metric in &alert_metrics {
            assert!(
                metrics.lines().any(|l| l.starts_with(metric.as_str())),
                "the alerts use {metric}, which the scheduler does not export"
            );
        }
    }
}

/// The shell script of a compose healthcheck `["CMD", "bash", "-c", SCRIPT]`.
fn healthcheck_script(service: &Yaml) -> String {
    let test: Vec<&str> = list(&service["healthcheck"]["test"])
        .iter()
        .map(str_of)
        .collect();
    assert_eq!(test[..3], ["CMD", "bash", "-c"], "healthcheck {test:?}");
    test[3].to_owned()
}

pub(super) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

fn bash_succeeds(script: &str) -> bool {
    Command::new("bash")
        .args(["-c", script])
        .stderr(Stdio::null())
        .status()
        .expect("bash runs")
        .success()
}

/// The image has no curl; the healthcheck speaks HTTP/1.0 over bash's /dev/tcp. It must
/// pass against the real admin server (which answers /healthz before the broker is
/// reached) and fail when nothing listens.
#[test]
fn compose_healthcheck_command_passes_against_a_real_worker() {
    let compose = &load("docker-compose.yml")[0];
    let script = healthcheck_script(&compose["services"]["worker"]);
    let producer_script = healthcheck_script(&compose["services"]["producer"]);
    assert_eq!(producer_script, script.replace("/9090", "/8080"));

    let port = free_port();
    let mut worker = Command::new(binary("warren-worker"))
        .args(["--admin-addr", &format!("127.0.0.1:{port}")])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("warren-worker starts");
    let here = script.replace("/9090", &format!("/{port}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut healthy = bash_succeeds(&here);
    while !healthy && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        healthy = bash_succeeds(&here);
    }
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        healthy,
        "the healthcheck never passed against a worker: {here}"
    );
    let closed = script.replace("/9090", &format!("/{}", free_port()));
    assert!(
        !bash_succeeds(&closed),
        "the healthcheck passed with nothing listening"
    );
}
