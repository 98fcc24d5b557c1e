//! The optional bearer token guarding `/v1`: `Authorization: Bearer <token>`, compared in
//! constant time (both sides are hashed first, so not even the token's length leaks).

use super::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The token clients must present. Its `Debug` never shows it.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8; 32]>);

impl BearerToken {
    /// A token from its text, trimmed of surrounding whitespace (a trailing newline in the
    /// token file is not part of it). `None` when nothing is left.
    pub fn new(text: &str) -> Option<Self> {
        let text = text.trim();
        (!text.is_empty()).then(|| BearerToken(Arc::new(digest(text.as_bytes()))))
    }

    /// Whether `presented` is the token.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(&digest(presented)).into()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The credentials of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let (scheme, rest) = bytes.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Middleware: answers 401 unless the request carries the token.
pub(crate) async fn require_token(
    State(token): State<Option<BearerToken>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(bearer);
    if presented.is_some_and(|p| token.matches(p)) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "a valid `Authorization: Bearer <token>` header is required",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"warren\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let token = BearerToken::new("s3cret\n").expect("not empty");
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b"s3cret2"));
        assert!(BearerToken::new(" \n").is_none());
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_parsed() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer(&v("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&v("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&v("Basic abc")), None);
        assert_eq!(bearer(&v("Bear")), None);
    }
}
