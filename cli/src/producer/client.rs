//! A small HTTP/1.1 client for the API of `warren-producer serve`, on hyper's connection API
//! (already in the tree for the server): one `GET` per connection, plain `http://` only, the
//! bearer token if one is given, the whole exchange bounded by a timeout.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long a request may take, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a request: its status and body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// Why a server could not be asked.
#[derive(Debug)]
pub enum ClientError {
    /// The server URL is not `http://host[:port][/prefix]`.
    Url(String),
    /// The server did not answer (refused, reset, timed out).
    Unreachable(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Url(why) => write!(f, "--server: {why}"),
            ClientError::Unreachable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ClientError {}

/// A server's API, at a base URL.
#[derive(Debug, Clone)]
pub struct Client {
    authority: String,
    host: String,
    port: u16,
    prefix: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base` (`http://host[:port][/prefix]`), presenting `token`.
    pub fn new(base: &str, token: Option<String>) -> Result<Client, ClientError> {
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
        Ok(Client {
            authority: authority.to_string(),
            host: authority.host().trim_matches(['[', ']']).to_owned(),
            port: authority.port_u16().unwrap_or(80),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `GET path_and_query` (which starts with `/`), within [`TIMEOUT`].
    pub async fn get(&self, path_and_query: &str) -> Result<Answer, ClientError> {
        let url = format!("http://{}{}{path_and_query}", self.authority, self.prefix);
        tokio::time::timeout(TIMEOUT, self.exchange(&url))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Unreachable(format!(
                    "{url}: no answer within {}s",
                    TIMEOUT.as_secs()
                )))
            })
    }

    async fn exchange(&self, url: &str) -> Result<Answer, ClientError> {
        let unreachable = |e: &dyn fmt::Display| ClientError::Unreachable(format!("{url}: {e}"));
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
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
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
pub fn encode(text: &str) -> String {
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
        let client = Client::new("http://127.0.0.1:8080/", None).unwrap();
        assert_eq!((client.host.as_str(), client.port), ("127.0.0.1", 8080));
        assert_eq!(client.prefix, "");
        let behind = Client::new("http://warren.internal/api", None).unwrap();
        assert_eq!((behind.port, behind.prefix.as_str()), (80, "/api"));
        assert!(Client::new("https://warren.internal", None).is_err());
        assert!(Client::new("not a url", None).is_err());
    }

    #[test]
    fn ids_are_percent_encoded() {
        assert_eq!(encode("a b/c?é"), "a%20b%2Fc%3F%C3%A9");
        assert_eq!(encode("0190-abc_~."), "0190-abc_~.");
    }
}
