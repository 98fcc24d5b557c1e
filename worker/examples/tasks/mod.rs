//! Two typed tasks and their handlers, shared by the worker example and its tests.

use serde::{Deserialize, Serialize};
use warren_worker::{Task, TaskContext, TaskError};

/// Resize an image.
#[derive(Debug, Serialize, Deserialize)]
pub struct Resize {
    pub path: String,
    pub width: u32,
}

impl Task for Resize {
    const NAME: &'static str = "images.resize";
}

/// What resizing made: the task's result.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Resized {
    pub path: String,
    pub width: u32,
}

/// Send a user a notification.
#[derive(Debug, Serialize, Deserialize)]
pub struct Notify {
    pub user: u64,
    pub text: String,
}

impl Task for Notify {
    const NAME: &'static str = "users.notify";
}

pub async fn resize(ctx: TaskContext, task: Resize) -> Result<Resized, TaskError> {
    if task.width == 0 {
        // No retry can fix this: dead-lettered at once, with this reason.
        return Err(TaskError::permanent("width must be positive"));
    }
    tracing::info!(id = %ctx.id, path = %task.path, width = task.width, "resized");
    // What the handler returns is the task's result: shown with its status, and sent to a
    // caller waiting with `Publisher::call`.
    Ok(Resized {
        path: format!("thumbnails/{}", task.path),
        width: task.width,
    })
}

pub async fn notify(ctx: TaskContext, task: Notify) -> Result<(), TaskError> {
    if ctx.attempt == 1 && task.text.contains("busy") {
        // The mail service said "try again in 2 s": the next attempt waits that long
        // instead of the worker's backoff.
        let busy = TaskError::retryable("mail service busy");
        return Err(busy.retry_after(std::time::Duration::from_secs(2)));
    }
    tracing::info!(user = task.user, "notified");
    Ok(())
}
