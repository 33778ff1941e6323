//! Broker addresses: `amqp://` and `amqps://` URLs with their credentials,
//! kept so that the password never reaches a log line, an error or a
//! `Debug` dump.
//!
//! The password is taken out of the parsed URL at once and handed to lapin
//! only through an authentication provider ([`PlainAuth`]), so even lapin's
//! own trace output of the URI it connects to carries no password.
//! [`BrokerUrl`]'s `Display` and `Debug` are the redacted form
//! `amqp://user@host:port/vhost`.

use std::fmt;
use std::str::FromStr;

use lapin::auth::AuthProvider;
use lapin::types::{LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};

use crate::error::ConfigError;

/// A broker to connect to, parsed from an `amqp://` or `amqps://` URL.
///
/// Credentials come from the URL (`amqp://user:password@host:port/vhost`,
/// percent-encoded; `%2f` is the default vhost `/`). TLS is chosen by the
/// `amqps` scheme. Prints without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The parsed URL with an empty password.
    uri: AMQPUri,
    password: Secret,
    redacted: String,
}

/// A password: compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl BrokerUrl {
    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.uri.authority.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.uri.authority.port
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// The virtual host.
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// Whether the connection uses TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme == AMQPScheme::AMQPS
    }

    /// The URL without its password, for logs and errors.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The URI lapin connects to: no password, the heartbeat set.
    pub(crate) fn lapin_uri(&self, heartbeat_secs: u16) -> AMQPUri {
        let mut uri = self.uri.clone();
        uri.query.heartbeat = Some(heartbeat_secs);
        uri
    }

    /// The authentication provider carrying the credentials, if the URL
    /// asks for password authentication (not EXTERNAL, i.e. client
    /// certificates).
    pub(crate) fn auth(&self) -> Option<PlainAuth> {
        match self.uri.query.auth_mechanism {
            Some(SASLMechanism::External) => None,
            _ => Some(PlainAuth {
                username: self.user().to_string(),
                password: self.password.clone(),
            }),
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.redacted).finish()
    }
}

impl FromStr for BrokerUrl {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ConfigError::BadUrl {
            url: redact(text),
            // lapin's messages may quote the whole URL: never let it through.
            reason: reason.replace(text, "<url>"),
        };
        if let Some(at) = misplaced_at(text) {
            return Err(bad(format!(
                "an '@' after the host (byte {at}): a password holding '/', '?' or '#' ends the \
                 host early, and the rest of it would be read as the vhost or the query; \
                 percent-encode the password ('/' as %2F, '?' as %3F, '#' as %23, '@' as %40), \
                 and write an '@' of the vhost as %40"
            )));
        }
        let mut uri: AMQPUri = text.parse().map_err(bad)?;
        match uri.query.auth_mechanism {
            None | Some(SASLMechanism::Plain) | Some(SASLMechanism::External) => {}
            Some(other) => {
                return Err(bad(format!(
                    "auth_mechanism={other} is not supported; use PLAIN (the default) or EXTERNAL"
                )))
            }
        }
        // lapin takes the host from `Url::domain`, which is empty for an IP
        // address: `amqp://10.0.0.5` would silently connect to `localhost`.
        if let Some(ip) = ip_host(text) {
            uri.authority.host = ip;
        }
        let password = Secret(std::mem::take(&mut uri.authority.userinfo.password));
        let redacted = format!(
            "{}://{}@{}:{}/{}",
            uri.scheme,
            uri.authority.userinfo.username,
            display_host(&uri.authority.host),
            uri.authority.port,
            encode_vhost(&uri.vhost),
        );
        Ok(BrokerUrl {
            uri,
            password,
            redacted,
        })
    }
}

/// The URL with any password replaced by `***` (for URLs that do not even
/// parse). A password may hold `/`, `?`, `#` and `@` unencoded, so the
/// userinfo runs from after `://` to the LAST `@`: when that over-reaches (an
/// `@` in the vhost or query), more is hidden, never less. Without an `@`,
/// a port that is not a number may be a password (`amqp://user:password`,
/// or a URL cut short at a comma): all from there on is hidden.
fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        // Not a URL shape we can take apart (it may be a piece of one, cut
        // at a comma of its password): show only a scheme it starts with.
        let start = text.split(':').next().unwrap_or_default();
        return if ["amqp", "amqps"]
            .iter()
            .any(|s| start.eq_ignore_ascii_case(s))
        {
            format!("{start}:<unparsable>")
        } else {
            "<unparsable>".to_string()
        };
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        Some(_) => text.to_string(),
        None => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            match authority.split_once(':') {
                Some((host, port))
                    if !host.starts_with('[')
                        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit())) =>
                {
                    format!("{scheme}://{host}:***")
                }
                _ => text.to_string(),
            }
        }
    }
}

/// The position of an `@` after the authority (in the vhost, the query or
/// the fragment), if there is one. A URL parser ends the authority at the
/// first `/`, `?` or `#`, so a password holding one of them unencoded puts
/// its tail (and the host) in the vhost or the query: the relay would log
/// in with the wrong credentials and show that tail wherever it shows the
/// vhost. Such a URL is refused rather than guessed at.
fn misplaced_at(text: &str) -> Option<usize> {
    let start = text.find("://")? + 3;
    let rest = text.get(start..)?;
    let end = rest.find(['/', '?', '#'])?;
    let after = rest.get(end..)?;
    after.find('@').map(|i| start + end + i)
}

/// The host of `scheme://userinfo@host:port/...` if it is an IP address
/// (IPv6 without its brackets).
fn ip_host(text: &str) -> Option<String> {
    let rest = text.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match hostport.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => hostport.split(':').next()?,
    };
    host.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

fn display_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn encode_vhost(vhost: &str) -> String {
    let mut out = String::with_capacity(vhost.len());
    for byte in vhost.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// PLAIN authentication with the URL's credentials. Its `Debug` hides the
/// password.
pub(crate) struct PlainAuth {
    username: String,
    password: Secret,
}

impl fmt::Debug for PlainAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainAuth")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

impl AuthProvider for PlainAuth {
    fn mechanism(&self) -> ShortString {
        ShortString::from(SASLMechanism::Plain.name())
    }

    fn auth_starter(&self) -> Result<LongString, String> {
        let mut response = Vec::with_capacity(self.username.len() + self.password.0.len() + 2);
        response.push(0);
        response.extend_from_slice(self.username.as_bytes());
        response.push(0);
        response.extend_from_slice(self.password.0.as_bytes());
        Ok(LongString::from(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let url: BrokerUrl = "amqp://relay:p%40ss-w0rd-xyz@mq.example.com:5673/prod"
            .parse()
            .unwrap();
        for shown in [
            url.to_string(),
            format!("{url:?}"),
            url.redacted().to_string(),
        ] {
            assert!(!shown.contains("p@ss-w0rd-xyz"), "{shown}");
            assert!(!shown.contains("p%40ss-w0rd-xyz"), "{shown}");
        }
        assert_eq!(url.to_string(), "amqp://relay@mq.example.com:5673/prod");
        assert_eq!(url.user(), "relay");
        // The URI handed to lapin has no password either.
        let uri = url.lapin_uri(10);
        assert!(uri.authority.userinfo.password.is_empty());
        assert!(!format!("{uri:?}").contains("w0rd"));
        assert!(!format!("{:?}", url.auth().unwrap()).contains("w0rd"));
    }

    #[test]
    fn a_bad_url_error_does_not_show_the_password() {
        let err = "amqp://relay:hunter2-secret@host:notaport/%2f"
            .parse::<BrokerUrl>()
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        let err = "amqp:relay:hunter2-secret@host"
            .parse::<BrokerUrl>()
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }

    #[test]
    fn a_bad_url_error_hides_a_password_holding_url_delimiters() {
        // Unencoded, `/` ends the authority for a URL parser: the password
        // runs to the last '@' all the same.
        for (url, tail) in [
            ("amqp://u:Amq/pSecret@host", "pSecret"),
            ("amqp://u:a?b#c@d/e@host:5672/%2f", "c@d"),
            ("amqps://u:p@ss:w/rd@host/vh", "w/rd"),
            // A parser takes `relay-secrets` for the host and the rest of
            // the password for the vhost.
            (
                "amqp://relay-secrets:\\,\\iO,': % %O/g@127.0.0.1:5672/%2f",
                "%25O",
            ),
            ("amqp://u:1234/Tail@host", "Tail"),
        ] {
            let err = url.parse::<BrokerUrl>().expect_err(url);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(tail), "{shown}");
            assert!(shown.contains("percent-encode the password"), "{shown}");
        }
        // An '@' in the vhost is refused too: it cannot be told from one
        // ending a password; %40 says which it is.
        assert!("amqp://u:p@host/vh@x".parse::<BrokerUrl>().is_err());
        let url: BrokerUrl = "amqp://u:p@host/vh%40x".parse().unwrap();
        assert_eq!(url.vhost(), "vh@x");
        assert_eq!(redact("amqp://u:Amq/pSecret@host"), "amqp://u:***@host");
        assert_eq!(
            redact("amqp://u:a?b#c@d/e@host:5672/%2f"),
            "amqp://u:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672/%2f"), "amqp://host:5672/%2f");
        assert_eq!(redact("amqps://[::1]:5671/%2f"), "amqps://[::1]:5671/%2f");
        // No '@': a port that is not a number is hidden with what follows.
        assert_eq!(redact("amqp://guest:guest"), "amqp://guest:***");
        assert_eq!(redact("amqp://u:L?x y#'/'%v"), "amqp://u:***");
        // Not a URL: perhaps the middle of a password cut at its commas.
        assert_eq!(redact("middle-of-a-password"), "<unparsable>");
        assert_eq!(redact("tail@host:5672/%2f"), "<unparsable>");
        assert_eq!(redact("amqp:u:pw@host"), "amqp:<unparsable>");
        assert_eq!(redact("amqp://u@host/%2f"), "amqp://u@host/%2f");
    }

    #[test]
    fn ip_hosts_are_kept() {
        let url: BrokerUrl = "amqp://guest:guest@10.1.2.3:5672/%2f".parse().unwrap();
        assert_eq!(url.host(), "10.1.2.3");
        assert_eq!(url.vhost(), "/");
        assert_eq!(url.to_string(), "amqp://guest@10.1.2.3:5672/%2F");
        let url: BrokerUrl = "amqps://u:p@[::1]/%2f".parse().unwrap();
        assert_eq!(url.host(), "::1");
        assert_eq!(url.port(), 5671);
        assert!(url.is_tls());
        let url: BrokerUrl = "amqp://u:p@rabbit.internal/".parse().unwrap();
        assert_eq!(url.host(), "rabbit.internal");
    }

    #[test]
    fn plain_auth_sends_the_sasl_plain_response() {
        let url: BrokerUrl = "amqp://alice:s3cret@h/%2f".parse().unwrap();
        let response = url.auth().unwrap().auth_starter().unwrap();
        assert_eq!(response.as_bytes(), b"\0alice\0s3cret");
        let url: BrokerUrl = "amqps://h/%2f?auth_mechanism=external".parse().unwrap();
        assert!(url.auth().is_none());
    }
}
