//! TLS end to end: a private RabbitMQ node with an `amqps://` listener whose certificate a
//! throwaway CA signed, and which requires client certificates. The real `warren-worker` runs a
//! task that the real `warren-producer` published, both over TLS, the producer reading its URL
//! from `--amqp-url-file`; without the CA (or without a client certificate) connecting fails.
//!
//! The node has its own name, ports and directories: the system node is never touched.
//! Unusable broker files (`--amqp-url-file`, the TLS files) stop both binaries with exit code 2.

use crate::binary;
use anyhow::{ensure, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::Duration;
use tokio::process::Command;
use warren_common::AmqpArgs;
use warren_tests::*;

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
const USER: &str = "warren-tls";
const PASSWORD: &str = "tls-s3cret-pw";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", &id[..12]));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files of a CA, a broker certificate for `localhost` and a client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Warren test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let server = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = leaf(vec![], USER, ExtendedKeyUsagePurpose::ClientAuth)?;
        let write = |name: &str, pem: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(Pki {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server.0)?,
            server_key: write("server.key", &server.1)?,
            client_cert: write("client.pem", &client.0)?,
            client_key: write("client.key", &client.1)?,
        })
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// A RabbitMQ node of this test's own; `Drop` stops it (and kills it if it will not stop).
struct PrivateNode {
    name: String,
    dir: PathBuf,
    tls_port: u16,
}

impl PrivateNode {
    /// Starts the node with a TLS listener that verifies client certificates against `pki.ca`.
    fn start(dir: &Path, pki: &Pki) -> anyhow::Result<PrivateNode> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let node = PrivateNode {
            name: format!("warren-tls-{}@localhost", &id[..8]),
            dir: dir.to_owned(),
            tls_port: free_port(),
        };
        let tcp_port = free_port();
        let config = format!(
            "listeners.tcp.default = {tcp_port}\n\
             listeners.ssl.default = {tls}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            tls = node.tls_port,
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
        );
        std::fs::write(dir.join("rabbitmq.conf"), config)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let status = StdCommand::new(Path::new(RABBITMQ_BIN).join("rabbitmq-server"))
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node.name)
            .env("RABBITMQ_NODE_PORT", tcp_port.to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("starting rabbitmq-server")?;
        ensure!(status.success(), "rabbitmq-server -detached: {status}");
        // `-detached` returns before the node is up; `wait` follows its pid file until it is.
        let pid_file = dir.join("pid").display().to_string();
        node.ctl(&["--timeout", "60", "wait", &pid_file])
            .with_context(|| format!("{} did not start; logs in {}", node.name, dir.display()))?;
        Ok(node)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let output = StdCommand::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .args(["-n", &self.name])
            .args(args)
            .output()
            .context("running rabbitmqctl")?;
        ensure!(
            output.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        if self.ctl(&["--timeout", "20", "stop"]).is_ok() {
            return;
        }
        // Not reachable (still booting, or wedged): kill it by the pid it writes at boot.
        let pid_file = self.dir.join("pid");
        for _ in 0..150 {
            if let Ok(pid) = std::fs::read_to_string(&pid_file) {
                let _ = StdCommand::new("kill")
                    .args(["-9", pid.trim()])
                    .stderr(Stdio::null())
                    .status();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "could not stop {}: no pid file in {}",
            self.name,
            self.dir.display()
        );
    }
}

fn tls_args(url: &str, ca: Option<&Path>, client: Option<(&Path, &Path)>) -> AmqpArgs {
    AmqpArgs {
        urls: vec![url.parse().expect("valid URL")],
        ca_file: ca.map(Path::to_owned),
        cert_file: client.map(|c| c.0.to_owned()),
        key_file: client.map(|c| c.1.to_owned()),
        ..AmqpArgs::default()
    }
}

/// One connection attempt with Warren's settings, as every Warren process makes it.
async fn try_connect(args: AmqpArgs) -> Result<(), String> {
    let amqp = args.resolve().map_err(|e| e.to_string())?;
    let url = &amqp.urls()[0];
    let props = lapin::ConnectionProperties::default();
    match tokio::time::timeout(Duration::from_secs(10), url.open(props)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "bye".into()).await;
            Ok(())
        }
    }
}

#[tokio::test]
async fn tasks_run_over_tls_and_an_unknown_ca_is_refused() {
    if !Path::new(RABBITMQ_BIN).join("rabbitmq-server").exists() {
        skip_or_fail(
            "TLS",
            &format!("RabbitMQ is not installed under {RABBITMQ_BIN}"),
        );
        return;
    }
    let dir = TempDir::new("warren-tls");
    let pki = Pki::write(&dir.0).expect("certificates");
    let node = PrivateNode::start(&dir.0, &pki).expect("private TLS node");
    node.ctl(&["add_user", USER, PASSWORD]).unwrap();
    node.ctl(&["set_permissions", "-p", "/", USER, ".*", ".*", ".*"])
        .unwrap();
    let url = format!("amqps://{USER}:{PASSWORD}@localhost:{}/%2f", node.tls_port);
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    // Without the CA the broker's certificate is not trusted: no silent success.
    let error = try_connect(tls_args(&url, None, client)).await.unwrap_err();
    assert!(
        error.contains("UnknownIssuer") || error.contains("certificate"),
        "{error}"
    );
    // With the CA but no client certificate, the broker refuses the client.
    let error = try_connect(tls_args(&url, Some(&pki.ca), None)).await;
    assert!(error.is_err(), "the broker requires a client certificate");
    try_connect(tls_args(&url, Some(&pki.ca), client))
        .await
        .expect("CA and client certificate connect");

    round_trip_with_the_binaries(&dir.0, &pki, &url).await;
    drop(node);
}

async fn round_trip_with_the_binaries(dir: &Path, pki: &Pki, url: &str) {
    let queue = unique_queue("tls");
    let mut worker = Command::new(binary("warren-worker"))
        .args(["--queue", &queue, "--admin-addr", "127.0.0.1:0"])
        .env("AMQP_URL", url)
        .env("AMQP_CA_FILE", &pki.ca)
        .env("AMQP_CERT_FILE", &pki.client_cert)
        .env("AMQP_KEY_FILE", &pki.client_key)
        .env("RUST_LOG", crate::TASK_LOG)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("warren-worker starts");
    let lines = capture_lines(worker.stderr.take().expect("piped"));
    wait_for_line(&lines, "consuming", Duration::from_secs(20))
        .await
        .unwrap();

    let url_file = dir.join("amqp-url");
    std::fs::write(&url_file, format!("# the private TLS node\n{url}\n")).unwrap();
    let id = format!("tls-{}", uuid::Uuid::new_v4());
    let flags = [
        ("--amqp-url-file", &url_file),
        ("--amqp-ca-file", &pki.ca),
        ("--amqp-cert-file", &pki.client_cert),
        ("--amqp-key-file", &pki.client_key),
    ];
    let mut publish = Command::new(binary("warren-producer"));
    publish.args([
        "publish",
        "--task",
        "demo.echo",
        "--queue",
        &queue,
        "--id",
        &id,
    ]);
    publish.args(["--payload", r#"{"over":"tls"}"#]);
    for (flag, path) in flags {
        publish.arg(flag).arg(path);
    }
    let output = tokio::time::timeout(Duration::from_secs(20), publish.output())
        .await
        .expect("the producer finishes")
        .expect("warren-producer runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "publish failed: {stdout} {stderr}");
    assert_eq!(stdout.trim(), id);
    assert!(
        stderr.contains("amqps://warren-tls:***@localhost"),
        "{stderr}"
    );

    let finished = wait_for_line(&lines, "task finished", Duration::from_secs(20))
        .await
        .unwrap();
    assert!(finished.contains(&id), "{finished}");
    let echo = wait_for_line(&lines, "echo", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(echo.contains("tls"), "{echo}");

    let pid = worker.id().expect("running").to_string();
    StdCommand::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker drains")
        .unwrap();
    assert!(status.success(), "{status}");
    let logs = lines.lock().unwrap().join("\n");
    assert!(
        !logs.contains(PASSWORD) && !stderr.contains(PASSWORD),
        "a password was logged"
    );
}

#[tokio::test]
async fn unusable_broker_files_stop_both_binaries_with_exit_code_2() {
    let dir = TempDir::new("warren-files");
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "amqps://u:p@h/%2f\n").unwrap();
    let missing = dir.0.join("missing");
    let cases: [(&[&str], &str); 3] = [
        (
            &["--amqp-url-file", missing.to_str().unwrap()],
            "--amqp-url-file",
        ),
        (
            &["--amqp-ca-file", not_pem.to_str().unwrap()],
            "--amqp-ca-file",
        ),
        (
            &["--amqp-cert-file", not_pem.to_str().unwrap()],
            "--amqp-key-file",
        ),
    ];
    for (flags, named) in cases {
        let runs: [(&str, &[&str]); 2] = [
            ("warren-worker", &["--admin-addr", "127.0.0.1:0"]),
            ("warren-producer", &["stats"]),
        ];
        for (bin, args) in runs {
            let run = Command::new(binary(bin)).args(args).args(flags).output();
            let output = tokio::time::timeout(Duration::from_secs(20), run)
                .await
                .expect("exits at once")
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{bin} {flags:?}: {stderr}");
            assert!(stderr.contains(named), "{bin} {flags:?}: {stderr}");
        }
    }
}
