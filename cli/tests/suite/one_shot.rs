//! The one-shot commands (`publish`, `stats`, `dead-letters`) of the real `warren-producer`
//! binary, run as an operator runs them: they give up on a broker they cannot reach, and their
//! output for an expected answer such as a missing queue holds no lapin error line.

use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// The shared broker of the test machines (or `AMQP_URL`).
fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The binary cargo built for this test, with the defaults a user has: no `RUST_LOG`, no
/// connect timeout or queue from the environment.
fn producer(args: &[&str], amqp_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren-producer"));
    cmd.args(args)
        .env("AMQP_URL", amqp_url)
        .env_remove("AMQP_URL_FILE")
        .env_remove("RUST_LOG")
        .env_remove("WARREN_CONNECT_TIMEOUT")
        .env_remove("WARREN_QUEUE")
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end, at most `limit`, returning its output and how long it took.
async fn run(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let output = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} still runs after {limit:?}"))
        .expect("warren-producer runs");
    (output, started.elapsed())
}

/// A port on the loopback interface that nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a bound address").port()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn all_of(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr_of(output)
    )
}

/// Lines that lapin logged itself (its targets, its io loop's span) or that say `ERROR`.
fn lapin_or_error_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("ERROR") || l.contains("io_loop") || l.contains("lapin"))
        .collect()
}

#[tokio::test]
async fn one_shot_commands_give_up_on_an_unreachable_broker_with_exit_69() {
    let port = closed_port();
    let url = format!("amqp://warren:s3cret-pw@127.0.0.1:{port}/%2f");
    let masked = format!("amqp://warren:***@127.0.0.1:{port}/%2f");
    let publish = producer(
        &["publish", "--task", "demo.noop", "--connect-timeout", "1s"],
        &url,
    );
    let stats = {
        // The timeout from the environment, as a deployment would set it.
        let mut cmd = producer(&["stats", "--queue", "q"], &url);
        cmd.env("WARREN_CONNECT_TIMEOUT", "1s");
        cmd
    };
    let list = producer(
        &[
            "dead-letters",
            "list",
            "--queue",
            "q",
            "--connect-timeout",
            "1s",
        ],
        &url,
    );
    let limit = Duration::from_secs(20);
    let runs = tokio::join!(run(publish, limit), run(stats, limit), run(list, limit));
    for (name, (output, took)) in [("publish", runs.0), ("stats", runs.1), ("list", runs.2)] {
        let text = all_of(&output);
        assert_eq!(output.status.code(), Some(69), "{name}: {text}");
        // It kept trying for the whole timeout rather than failing at the first refusal.
        assert!(
            took >= Duration::from_secs(1),
            "{name} gave up after {took:?}"
        );
        let message = stderr_of(&output);
        let last = message.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: could not connect to the broker within 1s")
                && last.contains(&masked),
            "{name}: {last}"
        );
        assert!(
            !text.contains("s3cret-pw"),
            "{name} printed the password: {text}"
        );
        assert_eq!(lapin_or_error_lines(&text), Vec::<&str>::new(), "{name}");
    }
}

#[tokio::test]
async fn a_missing_queue_is_a_clear_message_without_lapin_errors() {
    let queue = format!("test.missing.{}", uuid::Uuid::new_v4().simple());
    let url = amqp_url();
    let limit = Duration::from_secs(60);
    let stats = producer(&["stats", "--queue", &queue], &url);
    let list = producer(&["dead-letters", "list", "--queue", &queue], &url);
    let ((stats, _), (list, _)) = tokio::join!(run(stats, limit), run(list, limit));

    let text = all_of(&stats);
    assert_eq!(stats.status.code(), Some(1), "{text}");
    assert!(
        stderr_of(&stats).contains(&format!(
            "error: reading the work queue: queue `{queue}` does not exist"
        )),
        "{text}"
    );
    assert_eq!(lapin_or_error_lines(&text), Vec::<&str>::new());

    let text = all_of(&list);
    assert_eq!(list.status.code(), Some(1), "{text}");
    assert!(
        stderr_of(&list).contains(&format!("error: no dead-letter queue for `{queue}`")),
        "{text}"
    );
    assert_eq!(lapin_or_error_lines(&text), Vec::<&str>::new());
}

/// lapin's lines come back when a user asks for them, so the test above would see them if the
/// command did not leave them out.
#[tokio::test]
async fn lapin_lines_show_when_rust_log_asks_for_them() {
    let queue = format!("test.missing.{}", uuid::Uuid::new_v4().simple());
    let mut stats = producer(&["stats", "--queue", &queue], &amqp_url());
    stats.env("RUST_LOG", "info");
    let (output, _) = run(stats, Duration::from_secs(60)).await;
    let text = all_of(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    let lapin = lapin_or_error_lines(&text);
    assert!(
        lapin
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("lapin") && l.contains(&queue)),
        "{text}"
    );
}
