//! A worker for two typed tasks: the whole `main` of a production worker, with every flag
//! and `WARREN_*` variable of `warren-worker --help`, the admin server, JSON logs, signals and
//! exit codes. Run it with `cargo run -p warren-worker --example worker -- --queue default`;
//! `cargo test -p warren-worker --example worker` runs its tests, which need no broker.

mod tasks;

use std::process::ExitCode;
use warren_worker::Registry;

fn main() -> ExitCode {
    let mut registry = Registry::new();
    registry.handle(tasks::resize).handle(tasks::notify);
    warren_worker::run(registry)
}

#[cfg(test)]
mod tests {
    use super::tasks::{self, Notify, Resize, Resized};
    use std::time::Duration;
    use warren_worker::testing::{call, perform, Perform};
    use warren_worker::{Outcome, ReasonKind, Registry};

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.handle(tasks::resize).handle(tasks::notify);
        registry
    }

    #[tokio::test]
    async fn a_valid_image_is_resized() {
        let task = Resize {
            path: "cat.png".into(),
            width: 640,
        };
        assert_eq!(perform(&registry(), &task).await, Outcome::Ack);
    }

    #[tokio::test]
    async fn resizing_returns_where_the_thumbnail_is() {
        let task = Resize {
            path: "cat.png".into(),
            width: 640,
        };
        let resized: Resized = call(&registry(), &task).await.unwrap();
        assert_eq!(resized.path, "thumbnails/cat.png");
    }

    #[tokio::test]
    async fn a_zero_width_is_dead_lettered_at_once() {
        let task = Resize {
            path: "cat.png".into(),
            width: 0,
        };
        match perform(&registry(), &task).await {
            Outcome::DeadLetter(failure) => {
                assert_eq!(failure.kind, ReasonKind::Permanent);
                assert_eq!(failure.reason, "width must be positive");
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_busy_mail_service_is_retried_after_the_delay_it_asked_for() {
        let task = Notify {
            user: 7,
            text: "busy today".into(),
        };
        match perform(&registry(), &task).await {
            Outcome::Retry { after, failure } => {
                assert_eq!(after, Duration::from_secs(2));
                assert_eq!(failure.reason, "mail service busy");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        // The second attempt succeeds.
        let second = Perform::new(&registry()).attempt(2).task(&task).await;
        assert_eq!(second, Outcome::Ack);
    }
}
