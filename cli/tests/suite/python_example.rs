//! The Python example (`examples/python/publish.py`, pika) publishes tasks that a Warren worker
//! runs: the wire format holds for a producer that shares no code with Warren.
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
async fn example_python() -> Result<PathBuf, String> {
    let venv = target_dir().join("venv-pika");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let venv_arg = venv.to_str().ok_or("target path is not UTF-8")?;
        let created = run(Path::new("python3"), &["-m", "venv", venv_arg])
            .await
            .map_err(|e| format!("python3 is unavailable: {e}"))?;
        if !created.status.success() || !python.exists() {
            let _ = std::fs::remove_dir_all(&venv);
            return Err(format!(
                "python3 -m venv failed: {}",
                String::from_utf8_lossy(&created.stderr)
            ));
        }
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
    Ok(python)
}

async fn publish_py(python: &Path, queue: &str, id: &str, payload: &str) -> Output {
    let script = workspace().join("examples/python/publish.py");
    let url = amqp_url();
    let args = [
        script.to_str().expect("workspace path is UTF-8"),
        "--url",
        &url,
        "--queue",
        queue,
        "--task",
        TASK,
        "--id",
        id,
        "--payload",
        payload,
    ];
    run(python, &args).await.expect("publish.py runs")
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
