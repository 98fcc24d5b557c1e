//! `warren-scheduler` as an operator runs it: replicas elect one leader through the broker, a
//! standby takes over within seconds of the leader's death, ticks are published once with
//! deterministic ids, and the missed-tick policies hold across a failover and a restart.

use lapin::options::QueueDeleteOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use warren_producer::scheduler::parse_task_id;
use warren_tests::*;

/// How long a standby may take from the leader's kill to its first tick (documented in
/// docs/scheduling.md: the lease retry, plus up to one interval until the next tick).
const TAKEOVER_LIMIT: Duration = Duration::from_secs(3);

const PUBLISHED: &str = "warren_scheduler_ticks_published_total{schedule=\"beat\"}";
const MISSED: &str = "warren_scheduler_ticks_missed_total{schedule=\"beat\"}";

/// Path of the `warren-scheduler` binary, built (in debug mode) on first use.
fn scheduler_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        escargot::CargoBuild::new()
            .package("warren-producer")
            .bin("warren-scheduler")
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .run()
            .map(|run| run.path().to_owned())
            .map_err(|e| e.to_string())
    });
    match built {
        Ok(path) => path.clone(),
        Err(e) => panic!("building warren-scheduler failed: {e}"),
    }
}

/// A schedule file in a directory of its own, removed on drop, and the names it implies.
struct Setup {
    dir: PathBuf,
    file: PathBuf,
    queue: String,
    lease: String,
}

impl Setup {
    /// One schedule `beat` publishing every second to a fresh queue, with `missed`.
    fn new(missed: &str) -> Setup {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("warren-scheduler-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let queue = unique_queue("sched");
        let toml = format!(
            "[[schedule]]\nname = \"beat\"\ntask = \"test.beat\"\nqueue = \"{queue}\"\n\
             every = \"1s\"\nmissed = \"{missed}\"\npayload = {{ n = 1 }}\n"
        );
        let file = dir.join("schedule.toml");
        std::fs::write(&file, toml).expect("schedule file written");
        let lease = format!("test.sched.{}", &id[..12]);
        Setup {
            dir,
            file,
            queue,
            lease,
        }
    }

    /// Deletes the work queue, its dead letters, the state queue and the lease (if left).
    async fn delete_queues(&self, conn: &lapin::Connection) {
        delete_queues(conn, &self.queue).await;
        let channel = conn.create_channel().await.expect("channel");
        for name in [
            format!("{}.state.beat", self.lease),
            format!("{}.lease", self.lease),
        ] {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A running `warren-scheduler` and its log lines, each with the instant it was read.
struct Replica {
    child: Child,
    lines: Lines,
}

impl Replica {
    fn start(file: &Path, lease: &str) -> Replica {
        let mut child = Command::new(scheduler_binary())
            .arg("--schedule")
            .arg(file)
            .args(["--lease-name", lease, "--admin-addr", "127.0.0.1:0"])
            .env("AMQP_URL", amqp_url())
            .env("RUST_LOG", "info,lapin::channel=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("warren-scheduler starts");
        let lines: Lines = Default::default();
        let sink = lines.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Replica { child, lines }
    }

    /// The first line containing `needle` read after `since`, with its instant.
    fn find(&self, needle: &str, since: Instant) -> Option<(Instant, String)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .find(|(at, line)| *at >= since && line.contains(needle))
            .cloned()
    }

    async fn wait_for(&self, needle: &str, since: Instant, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((at, _)) = self.find(needle, since) {
                return at;
            }
            if Instant::now() > deadline {
                let lines = self.lines.lock().unwrap();
                let all: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
                panic!("no {needle:?} within {timeout:?}:\n{}", all.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The ticks (ms since the epoch) this replica logged as published, with their catch-up
    /// flag.
    fn ticks(&self) -> Vec<(u64, bool)> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, line)| line)
            .filter(|line| line.contains("tick published"))
            .map(|line| {
                let tick = field(line, "tick_ms").expect("tick_ms field");
                (tick, line.contains("catch_up=true"))
            })
            .collect()
    }

    async fn metrics(&self) -> String {
        let (_, line) = self
            .find(
                "admin server listening",
                Instant::now() - Duration::from_secs(3600),
            )
            .expect("the admin server started");
        let addr = line
            .split("admin_addr=")
            .nth(1)
            .expect("admin_addr field")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics body")
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the replica is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for a clean exit.
    async fn stop(mut self) {
        self.signal("-TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("the replica exits after SIGTERM")
            .expect("wait works");
        assert!(status.success(), "SIGTERM must exit 0, got {status}");
    }
}

/// The value of a sample line `name{...} value` (or `name value`) in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Milliseconds since the epoch of a tick id `beat@<RFC 3339>`.
fn tick_of(id: &str) -> u64 {
    match parse_task_id(id) {
        Some(("beat", tick)) => tick,
        _ => panic!("not a tick id of `beat`: {id}"),
    }
}

/// The ids of the messages taken out of the queue, in queue order.
async fn take_ids(conn: &lapin::Connection, queue: &str) -> Vec<String> {
    take_all(conn, queue)
        .await
        .iter()
        .map(|(props, _)| props.message_id().as_ref().expect("a task id").to_string())
        .collect()
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_a_standby_takes_over_after_a_kill() {
    let setup = Setup::new("skip");
    let conn = raw_connection().await;
    let replicas = [
        Replica::start(&setup.file, &setup.lease),
        Replica::start(&setup.file, &setup.lease),
    ];
    let began = Instant::now();
    let elected = tokio::select! {
        at = replicas[0].wait_for("became leader", began, Duration::from_secs(30)) => (0, at),
        at = replicas[1].wait_for("became leader", began, Duration::from_secs(30)) => (1, at),
    };
    let (leader, standby) = (elected.0, 1 - elected.0);
    replicas[standby]
        .wait_for("standing by", began, Duration::from_secs(10))
        .await;

    // About ten seconds of ticks, each published once.
    tokio::time::sleep_until((elected.1 + Duration::from_secs(10)).into()).await;
    let mut ids = take_ids(&conn, &setup.queue).await;
    assert!(
        (8..=12).contains(&ids.len()),
        "{} ticks in ~10 s: {ids:?}",
        ids.len()
    );
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "a tick was published twice: {ids:?}"
    );
    assert!(
        replicas[standby].ticks().is_empty(),
        "the standby published"
    );
    let leader_metrics = replicas[leader].metrics().await;
    assert_eq!(sample(&leader_metrics, "warren_scheduler_leader"), 1.0);
    let standby_metrics = replicas[standby].metrics().await;
    assert_eq!(sample(&standby_metrics, "warren_scheduler_leader"), 0.0);

    // kill -9 the leader: the broker drops its connection and with it the lease.
    let [first, second] = replicas;
    let (dead, survivor) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };
    dead.signal("-KILL");
    let killed = Instant::now();
    let took_over = survivor
        .wait_for("became leader", killed, TAKEOVER_LIMIT)
        .await;
    let first_tick = survivor
        .wait_for("tick published", took_over, TAKEOVER_LIMIT)
        .await;
    let takeover = first_tick - killed;
    eprintln!("first tick of the new leader {takeover:?} after the kill");
    assert!(
        takeover < TAKEOVER_LIMIT,
        "first tick {takeover:?} after the kill"
    );

    // A few more ticks from the new leader, then a clean stop.
    survivor
        .wait_for(
            "tick published",
            first_tick + Duration::from_millis(2500),
            Duration::from_secs(5),
        )
        .await;
    let metrics = survivor.metrics().await;
    let survivor_ticks = survivor.ticks();
    survivor.stop().await;
    drop(dead);
    ids.extend(take_ids(&conn, &setup.queue).await);

    // Ticks are one second apart, but for one gap at the failover; at most one id repeats.
    let mut ticks: Vec<u64> = ids.iter().map(|id| tick_of(id)).collect();
    ticks.sort_unstable();
    let published = ticks.len();
    ticks.dedup();
    assert!(
        published - ticks.len() <= 1,
        "more than one duplicate: {ids:?}"
    );
    let gaps: Vec<u64> = ticks
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|gap| *gap != 1000)
        .collect();
    assert!(
        gaps.len() <= 1,
        "ticks lost outside the failover: {gaps:?} in {ids:?}"
    );
    let skipped = gaps.first().map_or(0, |gap| gap / 1000 - 1);
    assert!(skipped <= 3, "{skipped} ticks skipped at the failover");
    // `skip` publishes none of the missed ticks and counts them (plus, at most, one the old
    // leader published without recording it).
    assert!(survivor_ticks.iter().all(|(_, catch_up)| !catch_up));
    let missed = sample(&metrics, MISSED) as u64;
    assert!(
        missed == skipped || missed == skipped + 1,
        "missed {missed}, gap of {skipped}"
    );
    let counted = sample(&metrics, PUBLISHED);
    assert_eq!(counted as usize, survivor_ticks.len());

    // The stopped leader released the lease: nothing holds the lease queue any more.
    let lease = format!("{}.lease", setup.lease);
    assert!(
        warren_common::Topology::inspect(&conn, &lease)
            .await
            .is_err(),
        "the lease queue outlived its holder"
    );
    setup.delete_queues(&conn).await;
}

#[tokio::test]
async fn run_once_publishes_one_catch_up_tick_after_a_restart() {
    let setup = Setup::new("run_once");
    let conn = raw_connection().await;

    let first = Replica::start(&setup.file, &setup.lease);
    let began = Instant::now();
    let led = first
        .wait_for("became leader", began, Duration::from_secs(30))
        .await;
    first
        .wait_for(
            "tick published",
            led + Duration::from_millis(2100),
            Duration::from_secs(5),
        )
        .await;
    let before = first.ticks();
    first.stop().await;
    assert!(
        before.iter().all(|(_, catch_up)| !catch_up),
        "nothing to catch up on a first run"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;

    let second = Replica::start(&setup.file, &setup.lease);
    let led = second
        .wait_for("became leader", Instant::now(), Duration::from_secs(30))
        .await;
    second
        .wait_for(
            "tick published",
            led + Duration::from_millis(1100),
            Duration::from_secs(5),
        )
        .await;
    let metrics = second.metrics().await;
    let after = second.ticks();
    second.stop().await;

    let ids = take_ids(&conn, &setup.queue).await;
    let mut ticks: Vec<u64> = ids.iter().map(|id| tick_of(id)).collect();
    ticks.sort_unstable();
    assert_eq!(ids.len(), before.len() + after.len(), "{ids:?}");
    assert!(
        ticks.windows(2).all(|w| w[0] < w[1]),
        "an id repeats: {ids:?}"
    );

    // Exactly one catch-up tick, the latest missed one: the tick just before the first
    // regular tick of the second run.
    let last_before = before
        .iter()
        .map(|(t, _)| *t)
        .max()
        .expect("first run ticked");
    let catch_ups: Vec<u64> = after.iter().filter(|(_, c)| *c).map(|(t, _)| *t).collect();
    assert_eq!(catch_ups.len(), 1, "catch-up ticks: {catch_ups:?}");
    let first_regular = after
        .iter()
        .filter(|(_, c)| !c)
        .map(|(t, _)| *t)
        .min()
        .expect("the second run ticked");
    assert_eq!(catch_ups[0], first_regular - 1000);
    let in_gap: Vec<u64> = ticks
        .iter()
        .copied()
        .filter(|t| *t > last_before && *t < first_regular)
        .collect();
    assert_eq!(in_gap, catch_ups, "ticks published for the gap");
    let gap_ticks = (first_regular - last_before) / 1000 - 1;
    assert!(gap_ticks >= 3, "the 3 s stop missed {gap_ticks} ticks");
    let missed = sample(&metrics, MISSED);
    assert_eq!(missed as u64, gap_ticks - 1, "missed ticks counted");
    setup.delete_queues(&conn).await;
}
