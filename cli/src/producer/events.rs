//! The flags of the commands that publish tasks (`publish`, `dead-letters replay`, `serve`,
//! and `warren-scheduler`) for recording a `published` event of each (docs/wire-format.md §11.4).

use warren_common::events::{PublishedEvents, DEFAULT_PAYLOAD_BYTES};

/// `--events-stream` and `--events-payload-bytes`.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishedEventsArgs {
    /// Record a `published` event for each task published in this events stream (the
    /// workers' --events-stream), so the status index knows it is queued; declared if
    /// missing. Best effort: a publish does not wait for its event.
    #[arg(long, env = "WARREN_EVENTS_STREAM")]
    pub events_stream: Option<String>,
    /// Copy at most this many bytes of each task's payload into its published event (as JSON
    /// when it fits whole); 0 copies none, e.g. for privacy.
    #[arg(long, env = "WARREN_EVENTS_PAYLOAD_BYTES", default_value_t = DEFAULT_PAYLOAD_BYTES)]
    pub events_payload_bytes: usize,
}

impl PublishedEventsArgs {
    /// What to record, if anything.
    pub fn config(&self) -> Option<PublishedEvents> {
        let stream = self.events_stream.as_ref()?;
        Some(PublishedEvents::new(stream.clone()).payload_bytes(self.events_payload_bytes))
    }
}
