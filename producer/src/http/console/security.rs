//! Who may see the console and act on it, and what a browser may do with its pages.
//!
//! - With a bearer token (`--auth-token-file`), every page needs a session: the login form
//!   takes the token and sets a session cookie (HttpOnly, SameSite=Strict, path `/console`)
//!   holding its expiry signed with a key drawn when the server starts, so sessions end with
//!   the process and a replica's cookie means nothing to another. Without a token the pages
//!   are open and read-only.
//! - Every action is a POST carrying a CSRF token derived from the session (an HMAC, compared
//!   in constant time), and is refused if its `Origin` names another site.
//! - Every answer carries a content security policy without inline scripts or styles and
//!   `frame-ancestors 'none'`, and is never cached. Pages escape everything they show
//!   (maud does), so nothing from a task's name, payload, error or result can run.

use super::layout::{self, Viewer};
use super::{Console, Shared};
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use maud::html;
use sha2::Sha256;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Largest form accepted (a selection of dead letters' ids).
pub(crate) const MAX_FORM_BYTES: usize = 256 * 1024;

/// How long a session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name.
const SESSION_COOKIE: &str = "warren_console";

/// The content security policy: nothing but this server's own script and stylesheet.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The key signing sessions and CSRF tokens, drawn at start.
pub(crate) struct Keys([u8; 32]);

impl Keys {
    pub(crate) fn generate() -> Keys {
        Keys(rand::random())
    }

    fn mac(&self, purpose: &str, text: &str) -> [u8; 32] {
        // An HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A session cookie's value: its expiry and the expiry's signature.
    fn session(&self, expires_ms: u64) -> String {
        format!(
            "{expires_ms}.{}",
            hex(&self.mac("session", &expires_ms.to_string()))
        )
    }

    /// Whether `value` is a session this key signed that has not expired at `now_ms`.
    fn valid_session(&self, value: &str, now_ms: u64) -> bool {
        let Some((expiry, _)) = value.split_once('.') else {
            return false;
        };
        let Ok(expires_ms) = expiry.parse::<u64>() else {
            return false;
        };
        let expected = self.session(expires_ms);
        let signed: bool = expected.as_bytes().ct_eq(value.as_bytes()).into();
        signed && now_ms < expires_ms
    }

    /// The CSRF token of a session.
    pub(crate) fn csrf(&self, session: &str) -> String {
        hex(&self.mac("csrf", session))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Middleware on every console answer: the security headers, no caching, and the time the
/// server spent (`Server-Timing`).
pub(crate) async fn headers(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let spent = started.elapsed().as_secs_f64() * 1000.0;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    if let Ok(timing) = HeaderValue::from_str(&format!("app;dur={spent:.2}")) {
        h.insert("server-timing", timing);
    }
    response
}

/// Middleware on the pages and actions: without a valid session (when a token is
/// configured), a page redirects to the login form and an action is refused; with one, the
/// handler gets the [`Viewer`]. Actions (POST) must carry the session's CSRF token and come
/// from this site.
pub(crate) async fn require_session(
    State(console): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = session_cookie(request.headers())
        .filter(|s| console.keys.valid_session(s, warren_common::now_ms()));
    let viewer = match (&console.token, session) {
        (None, _) => Viewer::open(console.config.refresh),
        (Some(_), Some(session)) => Viewer::logged_in(
            console.keys.csrf(&session),
            console.config.actions,
            console.config.refresh,
        ),
        (Some(_), None) if request.method() == Method::GET => {
            let next = request
                .uri()
                .path_and_query()
                .map_or("/console", |p| p.as_str());
            let to = format!("/console/login?next={}", encode(next));
            return Redirect::to(&to).into_response();
        }
        (Some(_), None) => {
            return refuse(StatusCode::UNAUTHORIZED, "log in again: the session ended")
        }
    };
    if request.method() == Method::POST && !same_origin(request.headers()) {
        return refuse(StatusCode::FORBIDDEN, "the form was sent from another site");
    }
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

/// Checks an action's CSRF token against the viewer's.
pub(crate) fn check_csrf(viewer: &Viewer, presented: Option<&str>) -> Result<(), Refusal> {
    let expected = viewer.csrf.as_deref().unwrap_or("");
    let presented = presented.unwrap_or("");
    let equal: bool = expected.as_bytes().ct_eq(presented.as_bytes()).into();
    if expected.is_empty() || !equal {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "the form is stale or was not made by this console: reload the page and try again",
        ));
    }
    Ok(())
}

/// An error page.
pub(crate) fn refuse(status: StatusCode, message: &str) -> Response {
    Refusal::new(status, message).into_response()
}

/// A request refused, answered with an error page saying why.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body =
            html! { p.error { (self.message) } p { a href="/console" { "Back to the console" } } };
        (self.status, layout::bare("Warren console", body)).into_response()
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether a POST comes from this site: its `Origin`, when the browser sends one, names the
/// host it was sent to. (Browsers send `Origin` on every cross-site POST.)
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some() && origin_host == host
}

/// Percent-encodes a query value.
pub(crate) fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The fields of a submitted form, in order (a field may repeat).
pub(crate) fn form_fields(body: &Bytes) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The first value of field `name`.
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The login form, open to all.
pub(crate) fn login_routes() -> Router<Shared> {
    Router::new().route("/console/login", get(login_form).post(login))
}

/// Logging out, behind the session middleware like the pages (it needs the session's CSRF
/// token).
pub(crate) fn session_routes() -> Router<Shared> {
    Router::new().route("/console/logout", post(logout))
}

/// Where to go after logging in: a console path, never another site.
fn next_path(next: Option<&str>) -> String {
    match next {
        Some(path) if path.starts_with("/console") && !path.contains("//") => path.to_owned(),
        _ => "/console".to_owned(),
    }
}

async fn login_form(State(console): State<Shared>, query: axum::extract::RawQuery) -> Response {
    let query = query.0.unwrap_or_default();
    let fields = form_fields(&Bytes::from(query));
    let next = next_path(field(&fields, "next"));
    login_page(&console, &next, None).into_response()
}

fn login_page(console: &Console, next: &str, error: Option<&str>) -> Response {
    if console.token.is_none() {
        return Redirect::to("/console").into_response();
    }
    let body = html! {
        h1 { "Log in" }
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/console/login" {
            input type="hidden" name="next" value=(next);
            label for="token" { "Token (the server's --auth-token-file)" }
            input #token type="password" name="token" autocomplete="current-password" required;
            button type="submit" { "Log in" }
        }
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (status, layout::bare("Log in: Warren console", body)).into_response()
}

async fn login(State(console): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(token) = &console.token else {
        return Redirect::to("/console").into_response();
    };
    if !same_origin(&headers) {
        return refuse(StatusCode::FORBIDDEN, "the form was sent from another site");
    }
    let fields = form_fields(&body);
    let next = next_path(field(&fields, "next"));
    let presented = field(&fields, "token").unwrap_or("").trim();
    if !token.matches(presented.as_bytes()) {
        tracing::warn!("console login refused: wrong token");
        return login_page(&console, &next, Some("That is not the token."));
    }
    let expires_ms = warren_common::now_ms() + SESSION_LIFETIME.as_millis() as u64;
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path=/console; Max-Age={}; HttpOnly; SameSite=Strict",
        console.keys.session(expires_ms),
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(viewer: Viewer, body: Bytes) -> Response {
    let fields = form_fields(&body);
    if let Err(refused) = check_csrf(&viewer, field(&fields, "csrf")) {
        return refused.into_response();
    }
    let mut response = Redirect::to("/console/login").into_response();
    let cookie = format!("{SESSION_COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict");
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let keys = Keys::generate();
        let session = keys.session(2_000);
        assert!(keys.valid_session(&session, 1_000));
        assert!(!keys.valid_session(&session, 2_000), "expired");
        assert!(!keys.valid_session(&session.replace("2000", "9000"), 1_000));
        assert!(
            !Keys::generate().valid_session(&session, 1_000),
            "another key"
        );
        assert!(!keys.valid_session("", 0));
        assert_ne!(keys.csrf(&session), keys.csrf(&keys.session(3_000)));
    }

    #[test]
    fn only_console_paths_are_followed_after_login() {
        assert_eq!(
            next_path(Some("/console/tasks?state=running")),
            "/console/tasks?state=running"
        );
        assert_eq!(next_path(Some("https://evil.example/")), "/console");
        assert_eq!(next_path(Some("/console//evil.example")), "/console");
        assert_eq!(next_path(None), "/console");
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h), "no Origin: not a cross-site browser POST");
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
