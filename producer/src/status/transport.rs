//! The HTTP/1.1 exchange under [`super::StatusClient`], on hyper's connection API (already
//! in the tree for the server): one `GET` per connection, plain `http://` only, the bearer
//! token if one is given, the whole exchange bounded by a timeout.

use super::client::ClientError;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;

/// The answer to a request: its status and body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// A server at a base URL.
#[derive(Clone)]
pub(crate) struct Transport {
    authority: String,
    host: String,
    port: u16,
    prefix: String,
    /// The `Authorization` header's value, if any.
    authorization: Option<String>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: never printed.
        f.debug_struct("Transport")
            .field("authority", &self.authority)
            .field("prefix", &self.prefix)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Transport {
    /// The server at `base` (`http://host[:port][/prefix]`), presenting `token`.
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Transport, ClientError> {
        let uri: Uri = base
            .parse()
            .map_err(|e| ClientError::Url(format!("`{base}` is not a URL: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::Url(format!(
                "`{base}`: only http:// is supported (put a TLS proxy's plain side here)"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::Url(format!("`{base}` names no host")))?;
        Ok(Transport {
            authority: authority.to_string(),
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            authorization: token.map(|token| format!("Bearer {token}")),
        })
    }

    /// Sends `value` as the `Authorization` header instead (e.g. `Basic ...`).
    pub(crate) fn with_authorization(mut self, value: String) -> Transport {
        self.authorization = Some(value);
        self
    }

    /// The full URL of `path_and_query` (which starts with `/`).
    pub(crate) fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}{path_and_query}", self.authority, self.prefix)
    }

    /// `GET path_and_query`, within `timeout`.
    pub(crate) async fn get(
        &self,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let url = self.url(path_and_query);
        tokio::time::timeout(timeout, self.exchange(&url))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Unreachable {
                    url: url.clone(),
                    reason: format!("no answer within {timeout:?}"),
                })
            })
    }

    async fn exchange(&self, url: &str) -> Result<Answer, ClientError> {
        let unreachable = |e: &dyn fmt::Display| ClientError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::get(url)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(authorization) = &self.authorization {
            request = request.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Url(format!("`{url}`: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

/// `text` percent-encoded for a URL path segment or query value.
pub(crate) fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_http_with_an_optional_prefix() {
        let server = Transport::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!((server.host.as_str(), server.port), ("127.0.0.1", 8080));
        assert_eq!(server.prefix, "");
        let behind = Transport::new("http://warren.internal/api", None).unwrap();
        assert_eq!((behind.port, behind.prefix.as_str()), (80, "/api"));
        assert_eq!(behind.url("/v1/x"), "http://warren.internal/api/v1/x");
        assert!(Transport::new("https://warren.internal", None).is_err());
        assert!(Transport::new("not a url", None).is_err());
    }

    #[test]
    fn ids_are_percent_encoded() {
        assert_eq!(encode("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
        assert_eq!(encode("0190-abc_~."), "0190-abc_~.");
    }
}
