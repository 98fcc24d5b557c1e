//! The RabbitMQ management API, when `--management-url` names it: one
//! `GET /api/queues/{vhost}` gives each queue's unacknowledged messages and rates, which AMQP
//! cannot. Plain `http://` (as the management plugin listens by default, e.g. on the Compose
//! file's port 15672), with the credentials of the URL sent as basic authentication and never
//! printed.

use crate::status::transport::Transport;
use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// How long the console waits for the management API.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The management API's address and credentials (`http://user:password@host:15672`). Its
/// `Debug` and `Display` mask the password.
#[derive(Clone)]
pub struct ManagementUrl {
    base: String,
    user: String,
    password: String,
}

impl ManagementUrl {
    /// Reads `http://user:password@host:port[/prefix]`; without credentials, `guest:guest`.
    pub fn parse(text: &str) -> Result<ManagementUrl, String> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{}` is not an http:// URL", mask(text)))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(format!("`{}` names no host", mask(text)));
        }
        let (user, password) = match userinfo {
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                (percent_decode(user), percent_decode(password))
            }
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        Ok(ManagementUrl {
            base: format!("http://{host}{}", path.trim_end_matches('/')),
            user,
            password,
        })
    }
}

impl fmt::Display for ManagementUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, rest) = self.base.split_at("http://".len());
        write!(f, "{scheme}{}:***@{rest}", self.user)
    }
}

impl fmt::Debug for ManagementUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManagementUrl({self})")
    }
}

/// `text` with the password of its userinfo masked, for error messages.
fn mask(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &text[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &text[..scheme + 3], &text[at..])
        }
        _ => text.to_owned(),
    }
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// One queue's figures from the management API.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct QueueStats {
    pub(crate) unacked: u64,
    /// Messages per second published into, delivered from and acknowledged on the queue.
    pub(crate) publish_rate: f64,
    pub(crate) deliver_rate: f64,
    pub(crate) ack_rate: f64,
}

/// A client of the management API for one virtual host.
pub(crate) struct Management {
    transport: Transport,
    path: String,
}

#[derive(Deserialize)]
struct QueueRow {
    name: String,
    #[serde(default)]
    messages_unacknowledged: u64,
    #[serde(default)]
    message_stats: Option<MessageStats>,
}

#[derive(Deserialize, Default)]
struct MessageStats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
    ack_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

impl Management {
    /// A client of the API at `url` for the virtual host `vhost`.
    pub(crate) fn new(url: &ManagementUrl, vhost: &str) -> Result<Management, String> {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", url.user, url.password));
        let transport = Transport::new(&url.base, None)
            .map_err(|e| e.to_string())?
            .with_authorization(format!("Basic {basic}"));
        let columns = "name,messages_unacknowledged,message_stats.publish_details.rate,\
            message_stats.deliver_get_details.rate,message_stats.ack_details.rate";
        Ok(Management {
            transport,
            path: format!(
                "/api/queues/{}?columns={columns}",
                crate::status::transport::encode(vhost)
            ),
        })
    }

    /// Every queue's figures, by name.
    pub(crate) async fn queues(&self) -> Result<HashMap<String, QueueStats>, String> {
        let answer = self
            .transport
            .get(&self.path, TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!(
                "{} answered {} (are the URL's credentials right?)",
                self.transport.url(&self.path),
                answer.status
            ));
        }
        let rows: Vec<QueueRow> =
            serde_json::from_slice(&answer.body).map_err(|e| format!("unexpected answer: {e}"))?;
        let rate = |r: &Option<Rate>| r.as_ref().map_or(0.0, |r| r.rate);
        Ok(rows
            .into_iter()
            .map(|row| {
                let stats = row.message_stats.unwrap_or_default();
                let figures = QueueStats {
                    unacked: row.messages_unacknowledged,
                    publish_rate: rate(&stats.publish_details),
                    deliver_rate: rate(&stats.deliver_get_details),
                    ack_rate: rate(&stats.ack_details),
                };
                (row.name, figures)
            })
            .collect())
    }
}

/// The virtual host an AMQP URL names (`amqp://host:5672/%2f` is `/`; none is `/`).
pub(crate) fn vhost_of(amqp_url: &str) -> String {
    let after_scheme = amqp_url.split_once("://").map_or(amqp_url, |(_, r)| r);
    let path = after_scheme
        .split_once('/')
        .map_or("", |(_, p)| p.split('?').next().unwrap_or(""));
    if path.is_empty() {
        "/".to_owned()
    } else {
        percent_decode(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_password_out_of_sight() {
        let url = ManagementUrl::parse("http://admin:s3cret@127.0.0.1:15672/").unwrap();
        assert_eq!(url.base, "http://127.0.0.1:15672");
        assert_eq!(
            (url.user.as_str(), url.password.as_str()),
            ("admin", "s3cret")
        );
        assert_eq!(url.to_string(), "http://admin:***@127.0.0.1:15672");
        assert!(!format!("{url:?}").contains("s3cret"));
        let guest = ManagementUrl::parse("http://rabbit:15672/api-proxy").unwrap();
        assert_eq!(guest.base, "http://rabbit:15672/api-proxy");
        assert_eq!(guest.user, "guest");
        let refused = ManagementUrl::parse("https://a:b@x").unwrap_err();
        assert!(!refused.contains(":b@"), "{refused}");
    }

    #[test]
    fn vhosts_are_read_from_amqp_urls() {
        assert_eq!(vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqps://h/prod?heartbeat=10"), "prod");
    }
}
