//! The Python examples (`examples/python/`, pika) publish tasks that a Warren worker runs,
//! declare its queue and the delay cascade as a worker does, and read its dead letters: the
//! wire format holds for a client that shares no code with Warren. They are the walk-through
//! of docs/wire-format.md §9.
//!
//! The example's requirements go into a virtualenv under the target directory, kept between
//! runs. Without python3 and its venv module the test says so and passes (fails under CI:
//! `skip_or_fail`).

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use warren_tests::*;
use warren_worker::{Registry, TaskContext, TaskError};

const TASK: &str = "example.record";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// `target/` (the test binary lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_owned)
        .unwrap_or_else(|| workspace().join("target"))
}

async fn run(program: &Path, args: &[&str]) -> std::io::Result<Output> {
    let run = Command::new(program).args(args).kill_on_drop(true).output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("timed out after 120 s")))
}

/// The virtualenv's python with the example's requirements installed, or why there is none.
///
/// Tests run in processes of their own, several at once: each builds a missing virtualenv in
/// a directory of its own and renames it into place when it is complete, so that none uses
/// one another is still creating.
async fn example_python() -> Result<PathBuf, String> {
    // Named after its requirements, so that changing them makes a new one.
    let requirements = std::fs::read(workspace().join("examples/python/requirements.txt"))
        .map_err(|e| format!("examples/python/requirements.txt: {e}"))?;
    let stamp = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        requirements.hash(&mut hasher);
        hasher.finish()
    };
    let venv = target_dir().join(format!("venv-pika-{stamp:016x}"));
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let building = target_dir().join(format!("venv-pika.{}", std::process::id()));
        let built = create_venv(&building).await;
        // Whoever renames first wins; the others use theirs and drop their own.
        if built.is_ok() && std::fs::rename(&building, &venv).is_err() && !python.exists() {
            let _ = std::fs::remove_dir_all(&building);
            return Err("could not move the new virtualenv into place".into());
        }
        let _ = std::fs::remove_dir_all(&building);
        built?;
    }
    Ok(python)
}

/// Creates a virtualenv at `venv` with the examples' requirements.
async fn create_venv(venv: &Path) -> Result<(), String> {
    let python = venv.join("bin").join("python");
    let venv_arg = venv.to_str().ok_or("target path is not UTF-8")?;
    let created = run(Path::new("python3"), &["-m", "venv", venv_arg])
        .await
        .map_err(|e| format!("python3 is unavailable: {e}"))?;
    if !created.status.success() || !python.exists() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&created.stderr)
        ));
    }
    let requirements = workspace().join("examples/python/requirements.txt");
    let pip = [
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        requirements.to_str().expect("workspace path is UTF-8"),
    ];
    let installed = run(&python, &pip).await.expect("the venv's python runs");
    assert!(
        installed.status.success(),
        "pip install -r examples/python/requirements.txt failed: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    Ok(())
}

/// Runs `examples/python/<script>` against the test broker.
async fn script(python: &Path, script: &str, args: &[&str]) -> Output {
    let path = workspace().join("examples/python").join(script);
    let url = amqp_url();
    let path = path.to_str().expect("workspace path is UTF-8");
    let all: Vec<&str> = [path, "--url", &url]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run(python, &all).await.expect("the script runs")
}

async fn publish_py(python: &Path, queue: &str, id: &str, payload: &str) -> Output {
    let args = [
        "--queue",
        queue,
        "--task",
        TASK,
        "--id",
        id,
        "--payload",
        payload,
    ];
    script(python, "publish.py", &args).await
}

/// The script's stdout, having checked that it exited 0.
fn succeeded(output: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{what} failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

type Seen = Arc<Mutex<Vec<(TaskContext, serde_json::Value)>>>;

fn recording_registry(seen: &Seen) -> Registry {
    let mut registry = Registry::new();
    let seen = seen.clone();
    registry.register(TASK, move |ctx: TaskContext, payload: serde_json::Value| {
        seen.lock().unwrap().push((ctx, payload));
        async { Ok::<_, TaskError>(()) }
    });
    registry
}

#[tokio::test]
async fn a_task_published_with_pika_runs_on_a_warren_worker() {
    let python = match example_python().await {
        Ok(python) => python,
        Err(why) => {
            skip_or_fail("the pika example", &why);
            return;
        }
    };
    let queue = unique_queue("python");
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), test_config(&queue)).await;

    let id = format!("py-{}", uuid::Uuid::new_v4());
    let payload = json!({"order": 42, "lines": [1, 2, 3], "note": "from pika ✓"});
    let output = publish_py(&python, &queue, &id, &payload.to_string()).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "publish.py failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), id);

    wait_until(Duration::from_secs(20), "the task to run", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    let report = worker.stop().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (ctx, got) = &seen[0];
    assert_eq!(ctx.id, id);
    assert_eq!(got, &payload);
    assert_eq!((ctx.attempt, ctx.schema_version), (1, 1));
    let created = ctx.created_ms.expect("x-warren-created-ms was read");
    assert!(
        warren_common::now_ms().abs_diff(created) < 60_000,
        "{created}"
    );
    assert_eq!(report.totals.succeeded, 1);
    let conn = raw_connection().await;
    assert_eq!(ready_count(&conn, &format!("{queue}.dead")).await, 0);
    delete_queues(&conn, &queue).await;

    // With no queue bound, the broker returns the task: the script says so and fails.
    let missing = unique_queue("python-missing");
    let output = publish_py(&python, &missing, "py-unroutable", "{}").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("unroutable") && stderr.contains(&missing),
        "{stderr}"
    );
}

/// Declared from Python before any worker, the queue is what a worker declares (it would stop
/// on a 406 otherwise); a delayed task waits its time in the cascade; a task no worker knows
/// is dead-lettered, and dead_letters.py reads its record and leaves it in the queue.
#[tokio::test]
async fn the_python_examples_declare_publish_later_and_read_dead_letters() {
    let python = match example_python().await {
        Ok(python) => python,
        Err(why) => {
            skip_or_fail("the pika examples", &why);
            return;
        }
    };
    let queue = unique_queue("python-walk");
    let check = ["--queue", queue.as_str(), "--check"];
    let missing = script(&python, "declare.py", &check).await;
    assert_eq!(missing.status.code(), Some(6), "nothing is declared yet");
    let declare = script(&python, "declare.py", &["--queue", &queue]).await;
    succeeded(&declare, "declare.py");
    succeeded(
        &script(&python, "declare.py", &check).await,
        "declare.py --check",
    );

    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), test_config(&queue)).await;

    let id = format!("py-later-{}", uuid::Uuid::new_v4());
    let args = [
        "--queue", &queue, "--task", TASK, "--id", &id, "--delay", "2",
    ];
    let published_at = std::time::Instant::now();
    let delayed = script(&python, "publish.py", &args).await;
    assert_eq!(succeeded(&delayed, "publish.py --delay"), id);
    let unknown = format!("py-unknown-{}", uuid::Uuid::new_v4());
    let args = [
        "--queue",
        &queue,
        "--task",
        "example.nobody",
        "--id",
        &unknown,
    ];
    succeeded(&script(&python, "publish.py", &args).await, "publish.py");

    wait_until(Duration::from_secs(20), "the delayed task to run", || {
        let n = seen.lock().unwrap().len();
        async move { n >= 1 }
    })
    .await;
    let waited = published_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1900),
        "ran after {waited:?}"
    );
    assert_eq!(seen.lock().unwrap()[0].0.id, id);
    let conn = raw_connection().await;
    let dead_queue = format!("{queue}.dead");
    wait_until(
        Duration::from_secs(10),
        "the unknown task's dead letter",
        || {
            let conn = &conn;
            let dead_queue = &dead_queue;
            async move { ready_count(conn, dead_queue).await == 1 }
        },
    )
    .await;

    let listed = script(&python, "dead_letters.py", &["--queue", &queue]).await;
    let listed = succeeded(&listed, "dead_letters.py");
    let dead: serde_json::Value = serde_json::from_str(&listed).expect("one JSON line");
    assert_eq!(dead["id"], unknown.as_str());
    assert_eq!(dead["task"], "example.nobody");
    assert_eq!(dead["kind"], "unknown_task");
    assert_eq!(dead["attempts"], 1);
    assert_eq!(
        ready_count(&conn, &dead_queue).await,
        1,
        "it is still there"
    );

    // A delayed task for a queue that does not exist is refused before it is sent.
    let missing_queue = unique_queue("python-missing");
    let args = ["--queue", &missing_queue, "--task", TASK, "--delay", "1"];
    let refused = script(&python, "publish.py", &args).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&missing_queue), "{stderr}");

    let report = worker.stop().await;
    assert_eq!(
        (report.totals.succeeded, report.totals.dead_lettered),
        (1, 1)
    );
    delete_queues(&conn, &queue).await;
}

/// A delayed task whose queue was deleted before its delay ended is listed by unroutable.py,
/// and `--move` puts it back into its queue once that exists again. (Other tests' tasks in the
/// shared `warren.delay.unroutable` are listed too; their queues are gone, so they stay.)
#[tokio::test]
async fn unroutable_py_lists_and_moves_a_task_whose_queue_was_gone() {
    let python = match example_python().await {
        Ok(python) => python,
        Err(why) => {
            skip_or_fail("the pika examples", &why);
            return;
        }
    };
    let queue = unique_queue("python-gone");
    succeeded(
        &script(&python, "declare.py", &["--queue", &queue]).await,
        "declare.py",
    );
    let id = format!("py-gone-{}", uuid::Uuid::new_v4());
    let args = [
        "--queue", &queue, "--task", TASK, "--id", &id, "--delay", "1",
    ];
    succeeded(&script(&python, "publish.py", &args).await, "publish.py");
    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;

    let mut listed = String::new();
    for _ in 0..40 {
        listed = succeeded(
            &script(&python, "unroutable.py", &[]).await,
            "unroutable.py",
        );
        if listed.contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let line = listed.lines().find(|l| l.starts_with(&id));
    assert_eq!(
        line,
        Some(format!("{id} {TASK} {queue} 4 bytes").as_str()),
        "{listed}"
    );

    succeeded(
        &script(&python, "declare.py", &["--queue", &queue]).await,
        "declare.py",
    );
    let moved = succeeded(
        &script(&python, "unroutable.py", &["--move"]).await,
        "unroutable.py --move",
    );
    assert!(moved.contains(" moved"), "{moved}");
    let back = take_all(&conn, &queue).await;
    let ids: Vec<_> = back.iter().map(|(p, _)| p.message_id().clone()).collect();
    assert_eq!(ids, [Some(id.as_str().into())], "{moved}");
    delete_queues(&conn, &queue).await;
}

/// events.py reads the events stream knowing only docs/wire-format.md §11: each task's
/// ending with its source and sequence number, and the worker's heartbeats and farewell.
#[tokio::test]
async fn events_py_reads_the_events_stream_by_the_documented_format() {
    let python = match example_python().await {
        Ok(python) => python,
        Err(why) => {
            skip_or_fail("the pika examples", &why);
            return;
        }
    };
    let queue = unique_queue("python-events");
    let stream = format!("{queue}.events");
    let mut config = test_config(&queue);
    config.events_stream = Some(stream.clone());
    let worker_id = config.worker_id.clone();
    let seen: Seen = Default::default();
    let worker = TestWorker::start(recording_registry(&seen), config).await;
    let publisher = publisher(&queue).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let options = warren_producer::TaskOptions::new().codec(warren_common::Codec::Json);
        let id = publisher.publish(TASK, &json!({ "n": n }), &options).await;
        ids.push(id.expect("published").to_string());
    }
    wait_until(Duration::from_secs(10), "the three tasks", || {
        let done = seen.lock().unwrap().len() == 3;
        async move { done }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(report.totals.succeeded, 3);

    let output = script(&python, "events.py", &[&stream, "--idle", "2"]).await;
    let lines = succeeded(&output, "events.py");
    let records: Vec<serde_json::Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let events: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("event").is_some())
        .collect();
    let mut succeeded_ids: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "succeeded")
        .map(|e| e["id"].as_str().expect("an id"))
        .collect();
    succeeded_ids.sort();
    ids.sort();
    assert_eq!(succeeded_ids, ids);
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event["source"], worker_id.as_str());
        assert_eq!(
            event["seq"], n as u64,
            "one source numbers its events from 0"
        );
        assert_eq!(event["queue"], queue.as_str());
        assert_eq!(event["task"], TASK);
    }
    let farewell = records
        .iter()
        .find(|r| r["record"] == "farewell")
        .expect("the worker said farewell");
    assert_eq!(farewell["worker"], worker_id.as_str());
    assert_eq!(farewell["counts"]["succeeded"], 3);

    let missing = script(&python, "events.py", &["no.such.stream", "--idle", "1"]).await;
    assert_eq!(missing.status.code(), Some(6));
    let conn = raw_connection().await;
    delete_queues(&conn, &queue).await;
    let channel = conn.create_channel().await.unwrap();
    let _ = channel
        .queue_delete(stream.as_str().into(), Default::default())
        .await;
}
