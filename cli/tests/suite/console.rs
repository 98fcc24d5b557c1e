//! The web console of `warren-producer serve --console` (docs/console.md), against the real
//! broker, a real index file and the real binary: who may see and act (login, CSRF, another
//! site's forms), the security headers on every answer, and a read-only console that offers
//! no action. What the pages show and what their actions do to the broker is tested in a real
//! browser (`console::browser`, console/browser.rs).

mod browser;
mod support;

use std::time::Duration;
use warren_cli::demo;
use warren_tests::*;
use warren_worker::{Registry, WorkerConfig};

pub(crate) use support::{Names, Serve, TOKEN};

/// A plain HTTP client of the console that keeps its session cookie and follows no redirect.
struct Browserless {
    client: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

impl Browserless {
    fn new(serve: &Serve) -> Browserless {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browserless {
            client,
            url: serve.url.clone(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    async fn post(&self, path: &str, form: &str, origin: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_owned());
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap()
    }

    /// Logs in with `token`; returns the answer's status.
    async fn login(&mut self, token: &str) -> u16 {
        let answer = self
            .post(
                "/console/login",
                &format!("token={token}&next=/console"),
                None,
            )
            .await;
        if let Some(cookie) = answer.headers().get("set-cookie") {
            let cookie = cookie.to_str().unwrap();
            self.cookie = Some(cookie.split(';').next().unwrap().to_owned());
        }
        answer.status().as_u16()
    }

    /// The CSRF token the pages' forms carry.
    async fn csrf(&self) -> String {
        let page = self.get("/console").await.text().await.unwrap();
        let at = page
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + 19;
        page[at..at + 64].to_owned()
    }
}

/// Records in a stream, read from its start (a stream that was never declared has none).
async fn stream_length(stream: &str) -> u32 {
    use futures::StreamExt;
    use lapin::options::BasicAckOptions;
    let conn = raw_connection().await;
    let probe = conn.create_channel().await.unwrap();
    if warren_common::inspect_queue(&probe, stream).await.is_err() {
        return 0;
    }
    let mut consumer = consume_stream(&conn, stream, 100).await;
    let mut records = 0;
    // The stream is read to its end once nothing arrives for a second.
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
    {
        let delivery = delivery.expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        records += 1;
    }
    let _ = conn.close(200, "".into()).await;
    records
}

#[tokio::test]
async fn console_pages_need_a_login_and_carry_security_headers() {
    let names = Names::new("console-login");
    let serve = Serve::start(&names, &["--console-actions"]).await;
    let mut client = Browserless::new(&serve);

    let answer = client.get("/console/tasks?state=running").await;
    assert_eq!(answer.status(), 303);
    assert_eq!(
        answer.headers()["location"],
        "/console/login?next=%2Fconsole%2Ftasks%3Fstate%3Drunning"
    );
    assert_eq!(client.login("not-the-token").await, 401);
    assert!(client.cookie.is_none(), "a wrong token gets no session");
    assert_eq!(client.login(TOKEN).await, 303);

    let pages = ["/console", "/console/tasks", "/console/workers"];
    let queue_page = format!("/console/queues/{}", names.queue);
    for page in pages.iter().copied().chain([queue_page.as_str()]) {
        let answer = client.get(page).await;
        assert_eq!(answer.status(), 200, "{page}");
        let headers = answer.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{page}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{page}: {csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(headers["server-timing"]
            .to_str()
            .unwrap()
            .starts_with("app;dur="));
        let body = answer.text().await.unwrap();
        assert!(!body.contains("<script>"), "{page}: no inline script");
        assert!(!body.contains(" style="), "{page}: no inline style");
    }

    let csrf = client.csrf().await;
    let out = client
        .post("/console/logout", &format!("csrf={csrf}"), None)
        .await;
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/console/login");
    let cleared = out.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    serve.stop().await;
    names.clean_up().await;
}

#[tokio::test]
async fn console_actions_need_the_session_s_csrf_token_and_this_site() {
    let names = Names::new("console-csrf");
    let worker = names.worker().await;
    let serve = Serve::start(&names, &["--console-actions"]).await;
    let mut client = Browserless::new(&serve);
    let pause = format!("/console/queues/{}/pause", names.queue);

    let answer = client.post(&pause, "csrf=x", None).await;
    assert_eq!(answer.status(), 401, "no session");
    client.login(TOKEN).await;
    let csrf = client.csrf().await;
    // The worker writes a marker at boot (docs/wire-format.md §13): count from here.
    let records = stream_length(&names.control).await;
    assert_eq!(
        client.post(&pause, "", None).await.status(),
        403,
        "no token"
    );
    let forged = format!("csrf={}", "0".repeat(64));
    assert_eq!(client.post(&pause, &forged, None).await.status(), 403);
    let form = format!("csrf={csrf}");
    let evil = client
        .post(&pause, &form, Some("http://evil.example"))
        .await;
    assert_eq!(evil.status(), 403, "another site's form");
    assert_eq!(
        stream_length(&names.control).await,
        records,
        "nothing was written"
    );

    let origin = serve.url.clone();
    let answer = client.post(&pause, &form, Some(&origin)).await;
    assert_eq!(answer.status(), 303);
    let location = answer.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("/console/queues/{}?done=", names.queue)));
    // The page it redirects to says what was done, once.
    let page = client.get(&location).await.text().await.unwrap();
    assert!(
        page.contains(&format!("Paused `{}`", names.queue)),
        "{page}"
    );
    let again = client.get(&location).await.text().await.unwrap();
    assert!(!again.contains("Paused `"));
    wait_until(Duration::from_secs(20), "the pause record", || async {
        stream_length(&names.control).await == records + 1
    })
    .await;
    let conn = raw_connection().await;
    wait_until(
        Duration::from_secs(20),
        "the worker to stop consuming",
        || async { consumer_count(&conn, &names.queue).await == 0 },
    )
    .await;

    worker.stop().await;
    serve.stop().await;
    names.clean_up().await;
}

#[tokio::test]
async fn a_console_without_a_token_is_read_only() {
    let names = Names::new("console-open");
    let serve = Serve::start_with(&names, false, &[]).await;
    let client = Browserless::new(&serve);
    let page = client
        .get(&format!("/console/queues/{}", names.queue))
        .await;
    assert_eq!(page.status(), 200, "open without a login");
    let page = page.text().await.unwrap();
    assert!(page.contains("Read-only"));
    assert!(!page.contains("/pause\""), "no action offered");
    let confirm = client
        .get(&format!("/console/queues/{}/pause", names.queue))
        .await;
    assert_eq!(confirm.status(), 403);
    let post = client
        .post(&format!("/console/queues/{}/pause", names.queue), "", None)
        .await;
    assert_eq!(post.status(), 403);
    assert_eq!(stream_length(&names.control).await, 0);
    serve.stop().await;
    names.clean_up().await;
}

/// Consumers of `queue` (a passive declare).
async fn consumer_count(conn: &lapin::Connection, queue: &str) -> u32 {
    let channel = conn.create_channel().await.unwrap();
    let state = warren_common::inspect_queue(&channel, queue).await.unwrap();
    let _ = channel.close(200, "".into()).await;
    state.consumers
}

#[tokio::test]
async fn with_the_management_api_the_overview_shows_the_broker_s_unacked_messages() {
    let Some(node) = management_node() else {
        return;
    };
    let names = Names::new("console-management");
    let management = node.management_url().expect("the node runs the plugin");
    let mut config: WorkerConfig = test_config(&names.queue);
    config.amqp = warren_common::Amqp::new([node.url().parse().expect("a URL")]).expect("one URL");
    config.concurrency = 2;
    let mut registry = Registry::new();
    demo::register(&mut registry);
    let worker = TestWorker::start(registry, config).await;
    let serve = Serve::start_on(&names, &node.url(), &["--management-url", &management]).await;
    // Two tasks that run for a minute: held unacked by the worker all along.
    let publisher = warren_producer::Publisher::connect(
        warren_producer::PublisherConfig {
            amqp: warren_common::Amqp::new([node.url().parse().unwrap()]).unwrap(),
            default_queue: names.queue.clone(),
            ..warren_producer::PublisherConfig::default()
        },
        &Default::default(),
    )
    .await
    .unwrap();
    let sleep = demo::Sleep { ms: 60_000 };
    for _ in 0..2 {
        publisher.send(&sleep).await.unwrap();
    }
    let client = Browserless::new(&serve);
    wait_until(
        Duration::from_secs(30),
        "the overview to show 2 unacked",
        || async {
            let page = client.get("/console").await.text().await.unwrap();
            page.contains("<td class=\"num unacked\">2</td>")
        },
    )
    .await;
    let logged = serve.lines.lock().unwrap().join("\n");
    assert!(
        !logged.contains("guest:guest@"),
        "the password is masked: {logged}"
    );
    worker.stop().await;
    serve.stop().await;
    publisher.close().await;
    node.stop();
    let _ = std::fs::remove_dir_all(&names.dir);
}

/// A private node with the management plugin, or `None` (skipped) without RabbitMQ here.
fn management_node() -> Option<PrivateNode> {
    if !PrivateNode::available() {
        skip_or_fail(
            "console management",
            "RabbitMQ is not installed here: no private node",
        );
        return None;
    }
    Some(PrivateNode::start_with_management("console-mgmt"))
}
