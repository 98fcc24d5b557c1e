//! A private RabbitMQ node for tests that stop, restart or kill the broker: its own name,
//! ports and data directory, so the system broker is never touched.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of this test's own. Stopped (and its data removed) when dropped.
pub struct PrivateNode {
    /// The Erlang node name (`warren-LABEL-SUFFIX@localhost`).
    pub name: String,
    dir: PathBuf,
    /// AMQP port.
    pub port: u16,
    dist_port: u16,
    /// The management API's port, when the node runs the plugin.
    management_port: Option<u16>,
}

impl PrivateNode {
    /// Whether private nodes can run here (RabbitMQ installed).
    pub fn available() -> bool {
        PathBuf::from(BIN).join("rabbitmq-server").exists()
    }

    /// Starts a node, or says why it cannot and returns `None` when RabbitMQ is not
    /// installed here (the test then has nothing to run against).
    pub fn start_or_skip(label: &str) -> Option<PrivateNode> {
        if !Self::available() {
            crate::skip_or_fail(label, "RabbitMQ is not installed here: no private node");
            return None;
        }
        Some(Self::start(label))
    }

    /// Starts a node on free ports and waits until it is up. A port found free can be taken
    /// by another test before the node binds it (the node then dies at once): the start is
    /// tried again on other ports, up to three times.
    pub fn start(label: &str) -> PrivateNode {
        Self::start_with(label, false)
    }

    /// Starts a node with the management plugin, its HTTP API on a free port of 127.0.0.1
    /// (see [`PrivateNode::management_url`]) and statistics collected every second.
    pub fn start_with_management(label: &str) -> PrivateNode {
        Self::start_with(label, true)
    }

    fn start_with(label: &str, management: bool) -> PrivateNode {
        for attempt in 1..=3 {
            let node = Self::prepare(label, management);
            if node.try_boot() {
                return node;
            }
            eprintln!(
                "private node {} did not start on ports {}/{} (attempt {attempt} of 3)",
                node.name, node.port, node.dist_port
            );
        }
        panic!("the private node did not start");
    }

    /// A node's name, ports, data directory and configuration, not started yet.
    fn prepare(label: &str, management: bool) -> PrivateNode {
        let port = free_port();
        let dist_port = free_port();
        let management_port = management.then(free_port);
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let dir = std::env::temp_dir().join(format!("warren-node-{label}-{suffix}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let plugins = if management {
            "[rabbitmq_management]."
        } else {
            "[]."
        };
        std::fs::write(dir.join("plugins"), plugins).expect("plugins file");
        // The system's rabbitmq.conf pins the listener to 5672: the node gets its own file.
        let mut conf = format!("listeners.tcp.local = 127.0.0.1:{port}\n");
        if let Some(http) = management_port {
            conf.push_str(&format!(
                "management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {http}\ncollect_statistics_interval = 1000\n"
            ));
        }
        std::fs::write(dir.join("rabbitmq.conf"), conf).expect("config file");
        PrivateNode {
            name: format!("warren-{label}-{suffix}@localhost"),
            dir,
            port,
            dist_port,
            management_port,
        }
    }

    /// The management API's URL (with the guest credentials), if the node runs the plugin.
    pub fn management_url(&self) -> Option<String> {
        self.management_port
            .map(|port| format!("http://guest:guest@127.0.0.1:{port}"))
    }

    /// The AMQP URL of the node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(PathBuf::from(BIN).join(program));
        let d = |sub: &str| self.dir.join(sub).to_string_lossy().into_owned();
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("plugins"))
            .env("RABBITMQ_PID_FILE", d("pid"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd
    }

    /// Starts the node (again) and waits for it.
    pub fn boot(&self) {
        assert!(self.try_boot(), "the private node did not start");
    }

    /// Starts the node and waits for it; false if it did not come up.
    fn try_boot(&self) -> bool {
        let status = self
            .command("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("rabbitmq-server runs");
        assert!(status.success(), "rabbitmq-server -detached failed");
        // `-detached` returns before the node exists; `wait` follows the pid file until the
        // node is up (await_startup right away fails: the node is not there yet).
        let pid_file = self.dir.join("pid").to_string_lossy().into_owned();
        self.command("rabbitmqctl")
            .args(["-n", &self.name, "--timeout", "60", "wait", &pid_file])
            .status()
            .expect("rabbitmqctl runs")
            .success()
    }

    /// Runs `rabbitmqctl ARGS` against the node; true if it succeeded.
    pub fn ctl(&self, args: &[&str]) -> bool {
        let mut cmd = self.command("rabbitmqctl");
        cmd.args(["-n", &self.name]).args(args);
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    /// Stops the node cleanly.
    pub fn stop(&self) {
        let _ = self
            .command("rabbitmqctl")
            .args(["-n", &self.name, "stop"])
            .status();
    }

    /// Kills the node with SIGKILL, as a crash would.
    pub fn kill(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        // Wait until the port is closed.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Private nodes clustered together (RabbitMQ's `join_cluster`), for tests that kill one.
pub struct PrivateCluster {
    /// The nodes; the first is the one the others joined.
    pub nodes: Vec<PrivateNode>,
}

impl PrivateCluster {
    /// Starts `size` nodes side by side and clusters them, or says why it cannot.
    pub fn start_or_skip(label: &str, size: usize) -> Option<PrivateCluster> {
        if !PrivateNode::available() {
            crate::skip_or_fail(label, "RabbitMQ is not installed here: no private cluster");
            return None;
        }
        let nodes: Vec<PrivateNode> = std::thread::scope(|scope| {
            let starting: Vec<_> = (0..size)
                .map(|i| scope.spawn(move || PrivateNode::start(&format!("{label}{i}"))))
                .collect();
            starting
                .into_iter()
                .map(|node| node.join().expect("a node starts"))
                .collect()
        });
        for node in &nodes[1..] {
            assert!(node.ctl(&["stop_app"]), "stopping {}", node.name);
            assert!(
                node.ctl(&["join_cluster", &nodes[0].name]),
                "{} joins {}",
                node.name,
                nodes[0].name
            );
            assert!(node.ctl(&["start_app"]), "starting {}", node.name);
        }
        Some(PrivateCluster { nodes })
    }

    /// Every node's AMQP URL, starting with node `first` (where a process connects first).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.nodes.len();
        (0..n).map(|i| self.nodes[(first + i) % n].url()).collect()
    }

    /// Index of the node holding `queue`: a quorum queue's leader, a classic queue's home.
    /// Asked of `via` (a node that is up).
    pub fn node_of(&self, queue: &str, via: usize) -> Option<usize> {
        let output = self.nodes[via]
            .command("rabbitmqctl")
            .args(["-n", &self.nodes[via].name])
            .args([
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "leader",
                "pid",
            ])
            .stdout(std::process::Stdio::piped())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find(|line| line.split('\t').next() == Some(queue))?;
        self.nodes
            .iter()
            .position(|node| line.contains(node.name.as_str()))
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        self.stop();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}
