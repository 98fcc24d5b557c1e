//! The console's stylesheet and script, compiled into the binary and served with a version in
//! their path, so a page always loads the ones it was made with and browsers may keep them.

use super::Shared;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// Where pages load the stylesheet from.
pub(crate) const CSS_PATH: &str = concat!(
    "/console/static/console-",
    env!("CARGO_PKG_VERSION"),
    ".css"
);
/// Where pages load the script from.
pub(crate) const JS_PATH: &str =
    concat!("/console/static/console-", env!("CARGO_PKG_VERSION"), ".js");

/// Where pages load the icon from.
pub(crate) const ICON_PATH: &str = "/console/static/favicon.svg";

const CSS: &str = include_str!("assets/console.css");
const ICON: &str = include_str!("assets/favicon.svg");
const JS: &str = include_str!("assets/console.js");

/// A day: the paths change with each version.
const CACHE: &str = "public, max-age=86400, immutable";

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route(
            CSS_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    CSS,
                )
                    .into_response()
            }),
        )
        .route(
            ICON_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "image/svg+xml"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    ICON,
                )
                    .into_response()
            }),
        )
        .route(
            JS_PATH,
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, CACHE),
                    ],
                    JS,
                )
                    .into_response()
            }),
        )
}
