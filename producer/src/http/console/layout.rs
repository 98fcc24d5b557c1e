//! The frame every console page shares: the head (the compiled-in stylesheet and script, no
//! inline code), the navigation, the task search, a flash saying what the last action did,
//! and the live part (`main#live`) that the script swaps for a fresh copy every few seconds.

use super::assets;
use super::security::Refusal;
use super::Shared;
use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use maud::{html, Markup, DOCTYPE};
use std::convert::Infallible;
use std::time::Duration;

/// Who is looking, as the session middleware found: what the page may offer.
#[derive(Clone, Debug)]
pub(crate) struct Viewer {
    /// The CSRF token forms carry; none without a session.
    pub(crate) csrf: Option<String>,
    /// Whether actions are offered.
    pub(crate) actions: bool,
    /// How often the live part refreshes.
    pub(crate) refresh: Duration,
}

impl Viewer {
    /// A viewer of an open, read-only console.
    pub(crate) fn open(refresh: Duration) -> Viewer {
        Viewer {
            csrf: None,
            actions: false,
            refresh,
        }
    }

    /// A logged-in viewer.
    pub(crate) fn logged_in(csrf: String, actions: bool, refresh: Duration) -> Viewer {
        Viewer {
            csrf: Some(csrf),
            actions,
            refresh,
        }
    }

    /// The hidden CSRF field of a form.
    pub(crate) fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf.as_deref().unwrap_or("")); }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Viewer, Infallible> {
        // The session middleware inserts it before any page runs.
        Ok(parts
            .extensions
            .get::<Viewer>()
            .cloned()
            .unwrap_or_else(|| Viewer::open(crate::defaults::console::REFRESH)))
    }
}

/// What the last action did, shown once on the page it redirected to (`?done=<key>`).
pub(crate) struct Flash(pub(crate) String);

impl OptionalFromRequestParts<Shared> for Flash {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Shared,
    ) -> Result<Option<Flash>, Infallible> {
        let query = parts.uri.query().unwrap_or("");
        let key = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "done")
            .map(|(_, v)| v.into_owned());
        Ok(key.and_then(|key| console.jobs.flash(&key)).map(Flash))
    }
}

/// The sections of the navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Tasks,
    Workers,
}

/// A whole page: the frame around `live`.
pub(crate) fn page(
    viewer: &Viewer,
    title: &str,
    section: Section,
    flash: Option<Flash>,
    live: Markup,
) -> Markup {
    let tab = |s: Section| (s == section).then_some("current");
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-refresh-ms=(viewer.refresh.as_millis()) {
                header.top {
                    a.brand href="/console" { "Warren" }
                    nav {
                        a href="/console" class=[tab(Section::Overview)] { "Overview" }
                        a href="/console/tasks" class=[tab(Section::Tasks)] { "Tasks" }
                        a href="/console/workers" class=[tab(Section::Workers)] { "Workers" }
                    }
                    form.search method="get" action="/console/tasks" {
                        input type="search" name="id" placeholder="Task id" aria-label="Task id";
                        button type="submit" { "Find" }
                    }
                    @if viewer.csrf.is_some() {
                        form.logout method="post" action="/console/logout" {
                            (viewer.csrf_field())
                            button type="submit" { "Log out" }
                        }
                    }
                }
                @if let Some(Flash(message)) = flash {
                    p.flash role="status" { (message) }
                }
                main #live { (live) }
                footer {
                    @if viewer.actions { span { "Actions enabled" } } @else { span { "Read-only" } }
                    span #updated {}
                }
            }
        }
    }
}

/// A page without navigation (login, errors).
pub(crate) fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { header.top { a.brand href="/console" { "Warren" } } main { (body) } }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Warren" }
            link rel="icon" href=(assets::ICON_PATH) type="image/svg+xml";
            link rel="stylesheet" href=(assets::CSS_PATH);
            script src=(assets::JS_PATH) defer {}
        }
    }
}

/// A confirmation page: what will happen, and the form that does it.
pub(crate) fn confirm(
    viewer: &Viewer,
    title: &str,
    question: Markup,
    action: &str,
    hidden: &[(&str, &str)],
    back: &str,
) -> Markup {
    let body = html! {
        h1 { (title) }
        div.question { (question) }
        form.confirm method="post" action=(action) {
            (viewer.csrf_field())
            @for (name, value) in hidden {
                input type="hidden" name=(name) value=(value);
            }
            button.danger #confirm type="submit" { "Confirm" }
            " "
            a.cancel href=(back) { "Cancel" }
        }
    };
    page(viewer, title, Section::Overview, None, body)
}

/// A task's or worker's state as a coloured label.
pub(crate) fn badge(state: &str) -> Markup {
    html! { span class={ "state state-" (state) } { (state.replace('_', " ")) } }
}

/// The status index's readers, or the page saying the server keeps none.
pub(crate) fn readers(
    console: &super::Console,
) -> Result<std::sync::Arc<crate::status::query::Readers>, Refusal> {
    console.app.index.clone().ok_or_else(|| {
        Refusal::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "This server keeps no status index: start it with --events-stream and --index.",
        )
    })
}

/// The page for an index that could not be read.
pub(crate) fn unreadable(error: rusqlite::Error) -> Refusal {
    tracing::error!(%error, "console: cannot read the status index");
    Refusal::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "The status index cannot be read (the server's log says why).",
    )
}

/// What is wrong with the index, if anything: incomplete (events lost to retention or a
/// recreated stream) or catching up.
pub(crate) fn index_problems(
    fresh: &crate::status::query::Freshness,
    caught_up: bool,
    now_ms: u64,
) -> Vec<(bool, Markup)> {
    let mut problems = Vec::new();
    if let Some(since) = fresh.incomplete_since_ms {
        problems.push((
            true,
            html! { "The index is incomplete since " (super::format::time(since)) ": the events stream lost events it had not read (retention, or the stream was recreated)." },
        ));
    }
    if !caught_up {
        let behind = fresh
            .last_event_at_ms
            .map(|at| format!(" (its newest event is {})", super::format::ago(at, now_ms)));
        problems.push((
            false,
            html! { "The index is catching up with the events stream" (behind.unwrap_or_default()) ": what it shows may be behind." },
        ));
    }
    problems
}

/// A list of problems; the serious ones stand out.
pub(crate) fn problems(list: &[(bool, Markup)]) -> Markup {
    html! {
        @if !list.is_empty() {
            ul.problems #problems {
                @for (serious, problem) in list {
                    li class=[serious.then_some("bad")] { (problem) }
                }
            }
        }
    }
}
