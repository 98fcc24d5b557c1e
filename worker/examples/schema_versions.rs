//! Payloads that change while older messages are still queued, waiting for a retry or kept as
//! dead letters (`docs/wire-format.md` §5, `docs/failures.md`): a JSON payload that gains
//! fields old messages lack, a JSON handler that picks the payload's type by schema version,
//! and a bincode handler that decodes each version itself. Run
//! `cargo run -p warren-worker --example schema_versions`: old and new messages go through
//! `warren_worker::testing` as a worker would run them, without a broker, and what the worker
//! would do with each is printed.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warren_common::{Codec, TaskOptions};
use warren_worker::testing::Perform;
use warren_worker::{HandlerOptions, Payload, TaskContext, TaskError};
use warren_worker::{Outcome, Permanent, Registry, Task};

#[derive(Debug, Serialize, Deserialize)]
struct Thumbnail {
    image: String,
    width: u32,
    #[serde(default)] // added later: old messages decode with `false`
    keep_aspect: bool,
    quality: Option<u8>, // added later: old messages decode with `None`
}

impl Task for Thumbnail {
    const NAME: &'static str = "images.thumbnail";
}

async fn thumbnail(_: TaskContext, task: Thumbnail) -> Result<(), TaskError> {
    let Thumbnail {
        image,
        width,
        keep_aspect,
        quality,
    } = task;
    tracing::info!(image, width, keep_aspect, ?quality, "thumbnail made");
    Ok(())
}

/// The first version of `images.resize`.
#[derive(Debug, Serialize, Deserialize)]
struct ResizeV1 {
    image: String,
    width: u32,
}

/// The second version: a height besides the width.
#[derive(Debug, Serialize, Deserialize)]
struct ResizeV2 {
    image: String,
    width: u32,
    height: Option<u32>,
}

impl From<ResizeV1> for ResizeV2 {
    fn from(v1: ResizeV1) -> Self {
        ResizeV2 {
            image: v1.image,
            width: v1.width,
            height: None,
        }
    }
}

async fn resize_image(job: &ResizeV2) -> Result<(), TaskError> {
    tracing::info!(
        image = job.image,
        width = job.width,
        height = job.height,
        "resized"
    );
    Ok(())
}

async fn resize_v1(job: ResizeV1) -> Result<(), TaskError> {
    resize_image(&job.into()).await
}

async fn resize_v2(job: ResizeV2) -> Result<(), TaskError> {
    resize_image(&job).await
}

/// Workers of the JSON tasks: `images.thumbnail`, and `resize`, whose payload is taken as a
/// `serde_json::Value` and read as the type of its schema version.
fn json_worker() -> Registry {
    let mut registry = Registry::new();
    registry.handle(thumbnail);
    registry.register("resize", |ctx: TaskContext, v: Value| async move {
        match ctx.schema_version {
            1 => resize_v1(serde_json::from_value::<ResizeV1>(v).map_err(Permanent)?).await,
            2 => resize_v2(serde_json::from_value::<ResizeV2>(v).map_err(Permanent)?).await,
            n => Err(TaskError::permanent(format!("resize: unknown schema {n}"))),
        }
    });
    registry
}

async fn resize(ctx: TaskContext, payload: Payload) -> Result<(), TaskError> {
    let job: ResizeV2 = match ctx.schema_version {
        1 => payload.decode::<ResizeV1>()?.into(), // your From<ResizeV1> for ResizeV2
        2 => payload.decode()?,
        v => return Err(TaskError::permanent(format!("unknown schema version {v}"))),
    };
    resize_image(&job).await?;
    Ok(())
}

/// Workers of a bincode `images.resize`: bincode is not self-describing, so the handler
/// decodes the payload itself, by schema version.
fn bincode_worker() -> Registry {
    let mut registry = Registry::new();
    registry.register_raw("images.resize", HandlerOptions::default(), resize);
    registry
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (json, bincode) = (json_worker(), bincode_worker());
    let version = |n| TaskOptions::new().schema_version(n);
    let json_version = |n| version(n).codec(Codec::Json);
    let v1 = ResizeV1 {
        image: "cat.png".into(),
        width: 640,
    };
    let v2 = ResizeV2 {
        image: "cat.png".into(),
        width: 640,
        height: Some(480),
    };
    let new = Thumbnail {
        image: "cat.png".into(),
        width: 64,
        keep_aspect: true,
        quality: Some(80),
    };
    let old = json!({"image": "cat.png", "width": 64});

    let run = || Perform::new(&json).options(json_version(1));
    show("thumbnail", run().task(&new).await, true);
    show(
        "thumbnail, old fields",
        run().named(Thumbnail::NAME, &old).await,
        true,
    );
    for (n, payload) in [(1, json!(v1)), (2, json!(v2)), (3, json!(v2))] {
        let run = Perform::new(&json).options(json_version(n));
        show(
            &format!("JSON, schema {n}"),
            run.named("resize", &payload).await,
            n < 3,
        );
    }
    let run = |n| Perform::new(&bincode).options(version(n));
    show(
        "bincode, schema 1",
        run(1).named("images.resize", &v1).await,
        true,
    );
    show(
        "bincode, schema 2",
        run(2).named("images.resize", &v2).await,
        true,
    );
    show(
        "bincode, 1 sent as 2",
        run(2).named("images.resize", &v1).await,
        false,
    );
}

/// Prints what a worker does with the task, having checked that it succeeds or not.
fn show(what: &str, outcome: Outcome, succeeds: bool) {
    assert_eq!(outcome == Outcome::Ack, succeeds, "{what}: {outcome:?}");
    match outcome {
        Outcome::DeadLetter(failure) => {
            println!(
                "{what}: dead-lettered ({}): {}",
                failure.kind, failure.reason
            )
        }
        other => println!("{what}: {other:?}"),
    }
}
