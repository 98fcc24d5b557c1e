//! Where the broker is: URLs (with the password masked wherever one is printed), read from
//! the command line or from a file, and the TLS settings of `amqps://` (a private CA, a client
//! certificate). [`crate::connect`] tries them in turn.
//!
//! Files are read once, by [`AmqpArgs::resolve`] at start-up, which gives an [`Amqp`]: the
//! broker's URLs, each carrying what it needs to be connected to. Everything that connects
//! takes an [`Amqp`], so an unread `--amqp-url-file` cannot reach a connection, and code that
//! passes URLs around needs no TLS knowledge.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// The broker on a developer's machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The largest frame Warren asks the broker for unless the URL's `frame_max` says otherwise:
/// 32 KiB. Larger messages are split into more frames, which costs next to nothing; the
/// broker's default (128 KiB) makes lapin hold 8 MiB of buffers per connection.
pub const DEFAULT_FRAME_MAX: u32 = 32_768;

/// An AMQP URL and the TLS settings for reaching it. Its `Display` and `Debug` mask the
/// password (and never show a key), so it is safe to log.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    url: String,
    tls: Option<Arc<TlsSettings>>,
}

/// What an `amqps://` connection trusts and presents besides the system's root certificates.
#[derive(PartialEq, Eq)]
struct TlsSettings {
    /// PEM certificates trusted in addition to the system's roots.
    ca_pem: Option<String>,
    /// PEM certificate chain and PEM private key presented to a broker that verifies peers.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl AmqpUrl {
    /// The full URL, password included: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// Whether the URL asks for TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.url
            .get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"))
    }

    /// Opens one connection, once, without retrying. Over `amqps://` the broker's certificate
    /// must chain to a system root or to a CA of `--amqp-ca-file`, and its name must match the
    /// URL's host.
    ///
    /// Unless the URL sets `frame_max`, Warren asks for [`DEFAULT_FRAME_MAX`]: lapin keeps a
    /// receive and a send buffer of 32 frames per connection, 8 MiB at RabbitMQ's default
    /// of 128 KiB, which would be most of an idle worker's memory.
    pub async fn open(&self, properties: ConnectionProperties) -> Result<Connection, lapin::Error> {
        let runtime = lapin::runtime::default_runtime()?;
        // Checked when the URL was read; lapin's message might quote the password.
        let mut uri: lapin::uri::AMQPUri = self.url.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an AMQP URL")
        })?;
        uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
        Connection::connect_uri_with_config(uri, properties, self.tls_config(), runtime).await
    }

    fn tls_config(&self) -> OwnedTLSConfig {
        let Some(tls) = &self.tls else {
            return OwnedTLSConfig::default();
        };
        OwnedTLSConfig {
            cert_chain: tls.ca_pem.clone(),
            identity: tls
                .identity
                .as_ref()
                .map(|(pem, key)| OwnedIdentity::PKCS8 {
                    pem: pem.clone(),
                    key: key.clone(),
                }),
        }
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let parsed = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "amqp" | "amqps" => {}
            other => return Err(format!("scheme `{other}` is not amqp:// or amqps://")),
        }
        if parsed.cannot_be_a_base() || parsed.host_str().is_none_or(str::is_empty) {
            return Err("no host: write amqp://USER:PASSWORD@HOST:PORT/VHOST".into());
        }
        // lapin's own parser decides what connecting accepts; one of its messages quotes the
        // whole URL, so never repeat it when it might hold the password.
        if let Err(e) = s.parse::<lapin::uri::AMQPUri>() {
            let secret = parsed.password().unwrap_or_default();
            return Err(if secret.is_empty() || !e.contains(secret) {
                format!("not an AMQP URL: {e}")
            } else {
                "not an AMQP URL".to_owned()
            });
        }
        Ok(AmqpUrl {
            url: s.to_owned(),
            tls: None,
        })
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                // Setting a password only fails for URLs that cannot have one.
                let _ = url.set_password(Some("***"));
                f.write_str(url.as_str())
            }
            Ok(url) => f.write_str(url.as_str()),
            Err(_) => f.write_str("<invalid url>"),
        }
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self}")?;
        if let Some(tls) = &self.tls {
            if tls.ca_pem.is_some() {
                f.write_str(", custom CA")?;
            }
            if tls.identity.is_some() {
                f.write_str(", client certificate")?;
            }
        }
        f.write_str(")")
    }
}

/// Where the broker is, every file read: its URLs, tried in turn, each with its TLS settings.
/// Made by [`AmqpArgs::resolve`] from the flags, or from URLs (`"amqp://…".parse()`, a
/// comma-separated list for the nodes of a cluster); never empty. The default is the local
/// broker ([`DEFAULT_AMQP_URL`]). Its `Debug` masks passwords, like [`AmqpUrl`]'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amqp {
    urls: Vec<AmqpUrl>,
}

impl Amqp {
    /// The broker at `urls`, tried in turn; `None` if there are none.
    pub fn new(urls: impl IntoIterator<Item = AmqpUrl>) -> Option<Self> {
        let urls: Vec<AmqpUrl> = urls.into_iter().collect();
        (!urls.is_empty()).then_some(Amqp { urls })
    }

    /// The URLs, in the order they are tried (at least one).
    pub fn urls(&self) -> &[AmqpUrl] {
        &self.urls
    }
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            urls: vec![DEFAULT_AMQP_URL.parse().expect("the default URL is valid")],
        }
    }
}

impl FromStr for Amqp {
    type Err = String;

    /// One URL, or several separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let urls = s
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(AmqpUrl::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Amqp::new(urls).ok_or_else(|| "no broker URL".to_owned())
    }
}

/// Broker connection flags shared by every Warren binary.
///
/// Where the URLs come from, first match wins: `--amqp-url-file`, then `AMQP_URL_FILE`,
/// then `--amqp-url`, then `AMQP_URL`, then the local broker (`DEFAULT_AMQP_URL`). Call
/// [`AmqpArgs::resolve`] once after parsing: it reads the files and gives the [`Amqp`] that
/// everything connecting takes.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct AmqpArgs {
    /// Broker URL; repeat the flag or separate with commas to list the nodes of a cluster,
    /// which are tried in turn. `amqps://` connects with TLS.
    #[cfg_attr(feature = "clap", arg(
        long = "amqp-url",
        env = "AMQP_URL",
        value_delimiter = ',',
        default_value = DEFAULT_AMQP_URL,
        hide_env_values = true,
        hide_default_value = true,
        global = true
    ))]
    pub urls: Vec<AmqpUrl>,
    /// File holding the broker URL(s), separated by commas or newlines (`#` starts a comment
    /// line), so the password stays out of process listings and environment dumps. Wins over
    /// --amqp-url and AMQP_URL.
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "amqp-url-file",
            env = "AMQP_URL_FILE",
            value_name = "PATH",
            global = true
        )
    )]
    pub url_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for amqps://, in addition to the system's roots
    /// (for a broker whose certificate a private CA signed).
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "amqp-ca-file",
            env = "AMQP_CA_FILE",
            value_name = "PATH",
            global = true
        )
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) to present over amqps:// to a broker that verifies
    /// peers; needs --amqp-key-file.
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "amqp-cert-file",
            env = "AMQP_CERT_FILE",
            value_name = "PATH",
            global = true
        )
    )]
    pub cert_file: Option<PathBuf>,
    /// Unencrypted PEM private key of --amqp-cert-file.
    #[cfg_attr(
        feature = "clap",
        arg(
            long = "amqp-key-file",
            env = "AMQP_KEY_FILE",
            value_name = "PATH",
            global = true
        )
    )]
    pub key_file: Option<PathBuf>,
}

impl Default for AmqpArgs {
    fn default() -> Self {
        AmqpArgs {
            urls: vec![DEFAULT_AMQP_URL.parse().expect("the default URL is valid")],
            url_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

/// A broker flag whose value cannot be used. The message never holds a password.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct AmqpArgsError {
    /// The flag, e.g. `--amqp-url-file`.
    pub flag: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl AmqpArgsError {
    fn new(flag: &'static str, problem: impl Into<String>) -> Self {
        AmqpArgsError {
            flag,
            problem: problem.into(),
        }
    }
}

impl AmqpArgs {
    /// Where the broker is, with every file read: the URLs of `--amqp-url-file` (when given)
    /// replace `--amqp-url`, and each URL carries the TLS settings of `--amqp-ca-file`,
    /// `--amqp-cert-file` and `--amqp-key-file`. Binaries call it once at start-up.
    pub fn resolve(&self) -> Result<Amqp, AmqpArgsError> {
        let mut urls = match &self.url_file {
            Some(path) => {
                if self.urls != AmqpArgs::default().urls {
                    tracing::warn!("--amqp-url-file is set: --amqp-url and AMQP_URL are ignored");
                }
                read_url_file(path)?
            }
            None => self.urls.clone(),
        };
        if let Some(tls) = self.read_tls()? {
            if !urls.iter().any(AmqpUrl::is_tls) {
                tracing::warn!("TLS files are set but no broker URL is amqps://: they are unused");
            }
            let tls = Arc::new(tls);
            for url in &mut urls {
                url.tls = Some(tls.clone());
            }
        }
        Amqp::new(urls).ok_or_else(|| AmqpArgsError::new("--amqp-url", "no broker URL given"))
    }

    fn read_tls(&self) -> Result<Option<TlsSettings>, AmqpArgsError> {
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read_pem("--amqp-ca-file", path, "CERTIFICATE")?),
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((
                read_pem("--amqp-cert-file", cert, "CERTIFICATE")?.into_bytes(),
                read_pem("--amqp-key-file", key, "PRIVATE KEY")?.into_bytes(),
            )),
            (Some(_), None) => {
                return Err(AmqpArgsError::new(
                    "--amqp-key-file",
                    "missing: --amqp-cert-file needs the certificate's private key",
                ))
            }
            (None, Some(_)) => {
                return Err(AmqpArgsError::new(
                    "--amqp-cert-file",
                    "missing: --amqp-key-file needs the certificate it belongs to",
                ))
            }
        };
        Ok((ca_pem.is_some() || identity.is_some()).then_some(TlsSettings { ca_pem, identity }))
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<String, AmqpArgsError> {
    std::fs::read_to_string(path)
        .map_err(|e| AmqpArgsError::new(flag, format!("cannot read {}: {e}", path.display())))
}

fn read_url_file(path: &Path) -> Result<Vec<AmqpUrl>, AmqpArgsError> {
    let text = read_file("--amqp-url-file", path)?;
    parse_url_list(&text).map_err(|problem| {
        AmqpArgsError::new("--amqp-url-file", format!("{}: {problem}", path.display()))
    })
}

/// URLs separated by commas or newlines, blank lines and `#` comment lines skipped.
fn parse_url_list(text: &str) -> Result<Vec<AmqpUrl>, String> {
    let entries = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    let mut urls = Vec::new();
    for (n, entry) in entries.enumerate() {
        let url = entry
            .parse()
            .map_err(|problem| format!("entry {}: {problem}", n + 1))?;
        urls.push(url);
    }
    if urls.is_empty() {
        return Err("holds no URL".into());
    }
    Ok(urls)
}

/// Reads a PEM file, checking that it holds a block whose label ends with `label`, so that a
/// wrong file is refused at start-up rather than at every connection attempt.
fn read_pem(flag: &'static str, path: &Path, label: &str) -> Result<String, AmqpArgsError> {
    let text = read_file(flag, path)?;
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .filter_map(|rest| rest.strip_suffix("-----"))
        .collect();
    if labels.contains(&"ENCRYPTED PRIVATE KEY") {
        let problem = format!("{} is encrypted: give an unencrypted key", path.display());
        return Err(AmqpArgsError::new(flag, problem));
    }
    if !labels.iter().any(|l| l.ends_with(label)) {
        let what = label.to_lowercase();
        let problem = format!(
            "{} holds no PEM {what} (-----BEGIN {label}-----)",
            path.display()
        );
        return Err(AmqpArgsError::new(flag, problem));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    /// A file in a fresh temporary directory, removed with it.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!("warren-amqp-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir(&dir).unwrap();
            let path = dir.join("file");
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn passwords_are_masked_when_printed() {
        let url: AmqpUrl = "amqp://user:s3cret@broker:5672/%2f".parse().unwrap();
        assert_eq!(url.to_string(), "amqp://user:***@broker:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "amqp://user:s3cret@broker:5672/%2f");
    }

    #[test]
    fn only_amqp_schemes_are_accepted() {
        assert!("http://x".parse::<AmqpUrl>().unwrap_err().contains("http"));
        assert!("amqps://h:5671/v".parse::<AmqpUrl>().unwrap().is_tls());
        assert!(!"amqp://h/v".parse::<AmqpUrl>().unwrap().is_tls());
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_the_password() {
        for bad in ["amqp:s3cret", "amqp://u:s3cret@h/%2f?heartbeat=soon"] {
            let problem = bad.parse::<AmqpUrl>().unwrap_err();
            assert!(!problem.contains("s3cret"), "{problem}");
        }
    }

    #[test]
    fn url_lists_split_on_commas_and_lines_and_skip_comments() {
        let text = "# primary, then the others\n amqps://u:p@a:5671/%2f \r\n\namqps://u:p@b/%2f,amqps://u:p@c/%2f,\n";
        let hosts: Vec<String> = parse_url_list(text)
            .unwrap()
            .iter()
            .map(|u| {
                url::Url::parse(u.expose())
                    .unwrap()
                    .host_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(parse_url_list(" \n# none\n").unwrap_err(), "holds no URL");
        let problem = parse_url_list("amqp://u:p@a/%2f\nhttp://u:s3cret@b/").unwrap_err();
        assert!(
            problem.starts_with("entry 2:") && !problem.contains("s3cret"),
            "{problem}"
        );
    }

    #[test]
    fn the_url_file_wins_over_the_url_flag() {
        let file = TempFile::new("amqps://warren:s3cret@rabbit.internal/%2f\n");
        let args = AmqpArgs {
            url_file: Some(file.0.clone()),
            ..AmqpArgs::default()
        };
        let resolved = args.resolve().unwrap();
        assert_eq!(resolved.urls().len(), 1);
        assert_eq!(
            resolved.urls()[0].to_string(),
            "amqps://warren:***@rabbit.internal/%2f"
        );
        assert!(!format!("{resolved:?}").contains("s3cret"));
    }

    #[test]
    fn a_broker_is_one_url_or_several() {
        let cluster: Amqp = "amqp://u:p@a/%2f, amqp://u:p@b/%2f".parse().unwrap();
        assert_eq!(cluster.urls().len(), 2);
        assert_eq!(Amqp::default().urls()[0].expose(), DEFAULT_AMQP_URL);
        assert_eq!("".parse::<Amqp>().unwrap_err(), "no broker URL");
        assert!(Amqp::new([]).is_none());
    }

    #[test]
    fn an_unreadable_file_names_its_flag_and_path() {
        let args = AmqpArgs {
            url_file: Some("/nonexistent/warren-url".into()),
            ..AmqpArgs::default()
        };
        let error = args.resolve().unwrap_err();
        assert_eq!(error.flag, "--amqp-url-file");
        assert!(
            error.to_string().contains("/nonexistent/warren-url"),
            "{error}"
        );
    }

    #[test]
    fn tls_files_are_checked_and_attached_to_every_url() {
        let ca = TempFile::new(CERT);
        let key = TempFile::new(KEY);
        let args = AmqpArgs {
            urls: vec![
                "amqps://a/%2f".parse().unwrap(),
                "amqps://b/%2f".parse().unwrap(),
            ],
            ca_file: Some(ca.0.clone()),
            cert_file: Some(ca.0.clone()),
            key_file: Some(key.0.clone()),
            ..AmqpArgs::default()
        };
        let resolved = args.resolve().unwrap();
        for url in resolved.urls() {
            let config = url.tls_config();
            assert_eq!(config.cert_chain.as_deref(), Some(CERT));
            assert!(matches!(config.identity, Some(OwnedIdentity::PKCS8 { .. })));
            let debug = format!("{url:?}");
            assert!(
                debug.contains("custom CA") && !debug.contains("MIIE"),
                "{debug}"
            );
        }
        let wrong = AmqpArgs {
            ca_file: Some(key.0.clone()),
            ..AmqpArgs::default()
        };
        assert_eq!(wrong.resolve().unwrap_err().flag, "--amqp-ca-file");
        let half = AmqpArgs {
            cert_file: Some(ca.0.clone()),
            ..AmqpArgs::default()
        };
        assert_eq!(half.resolve().unwrap_err().flag, "--amqp-key-file");
        let encrypted = TempFile::new("-----BEGIN ENCRYPTED PRIVATE KEY-----\nx\n");
        let locked = AmqpArgs {
            cert_file: Some(ca.0.clone()),
            key_file: Some(encrypted.0.clone()),
            ..AmqpArgs::default()
        };
        assert!(locked.resolve().unwrap_err().problem.contains("encrypted"));
    }
}
