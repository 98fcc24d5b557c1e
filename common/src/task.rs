//! Typed tasks: a payload type that names its task once.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A task type: the payload a producer sends and a handler receives, and the task's name on
/// the wire (`x-warren-task`), written once, here.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Resize {
///     path: String,
///     width: u32,
/// }
///
/// impl warren_common::Task for Resize {
///     const NAME: &'static str = "images.resize";
/// }
/// ```
///
/// `Publisher::send(&Resize { .. })` publishes it and `Registry::handle` registers its
/// handler, both by this name. Producers in other languages, and the string-named
/// `Publisher::publish` and `Registry::register`, use the same name.
///
/// A task's result is its handler's return type, not part of this trait: a handler returning
/// `Result<(), TaskError>` needs nothing more, which keeps the common case (no result) free of
/// boilerplate on stable Rust, where associated types cannot have defaults.
pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The task name: what workers dispatch on. Dots group names (`images.resize`).
    const NAME: &'static str;
}
