//! Connection settings: [`ReplicationConfig`], parsed like libpq parses them.
//!
//! Both libpq forms are accepted: a URL
//! (`postgres://user:pw@host:5432/db?sslmode=verify-full`) and a
//! keyword/value string (`host=db port=5432 user=relay sslmode=require`).
//! Settings missing from the string fall back to libpq's environment
//! variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE,
//! PGSSLROOTCERT, PGCHANNELBINDING, PGREQUIREAUTH, PGAPPNAME,
//! PGCONNECT_TIMEOUT, PGOPTIONS, PGPASSFILE), then to libpq's defaults; a missing password is looked up in
//! the password file (~/.pgpass) when connecting.
//!
//! The password never appears in `Debug` or `Display` output (logs show
//! `user@host:port/db` only), nor in an error, whatever the operator wrote:
//! see [`ReplicationConfig`] for the two rules that keep it so where a
//! string is ambiguous (a password holding '@' or '/' unencoded would
//! otherwise turn up as a host or a database name, and the rest of a bare
//! password holding a space as an unknown option).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::auth::RequireAuth;
use crate::error::Error;

/// The default port of PostgreSQL.
const DEFAULT_PORT: u16 = 5432;

/// How hard to insist on TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain TCP unless the server asks otherwise (walstream never starts TLS
    /// in this mode).
    Allow,
    /// TLS if the server offers it, plain otherwise; the certificate is not
    /// checked (libpq's default).
    Prefer,
    /// TLS or nothing; the certificate is not checked, unless `sslrootcert`
    /// is given, in which case it behaves as `VerifyCa` (as libpq does).
    Require,
    /// TLS, and the certificate must chain to a trusted root.
    VerifyCa,
    /// TLS, the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl fmt::Display for SslMode {
    /// The libpq spelling (`verify-full`, ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl FromStr for SslMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<SslMode, Error> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::Config(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

/// Whether SCRAM authentication binds to the TLS channel, as libpq's
/// `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use it when TLS is on and the server offers SCRAM-SHA-256-PLUS.
    Prefer,
    /// Refuse to authenticate without it (so no trust, password or md5).
    Require,
}

impl FromStr for ChannelBinding {
    type Err = Error;

    fn from_str(s: &str) -> Result<ChannelBinding, Error> {
        Ok(match s {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(Error::Config(format!(
                    "channel_binding {other:?} is not one of disable, prefer, require"
                )))
            }
        })
    }
}

/// Where the server is: a TCP host name or address, or the directory of a
/// Unix socket (a host starting with `/`, as in libpq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address.
    Tcp(String),
    /// A directory holding `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl Host {
    fn parse(s: &str) -> Result<Host, Error> {
        if s.is_empty() {
            return Err(Error::Config("host is empty".into()));
        }
        Ok(if s.starts_with('/') {
            Host::Unix(PathBuf::from(s))
        } else {
            Host::Tcp(s.to_string())
        })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]"),
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One server of a connection string, which may list several (`host=a,b
/// port=5432,5433`, `postgres://a:5432,b:5433/db`), tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host (name, address or socket directory).
    pub host: Host,
    /// The address to connect to instead of resolving the host name.
    pub hostaddr: Option<IpAddr>,
    /// The TCP port (or the socket file's number).
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(_) => match self.hostaddr {
                Some(addr) => write!(f, "{} ({addr}):{}", self.host, self.port),
                None => write!(f, "{}:{}", self.host, self.port),
            },
            Host::Unix(dir) => write!(f, "{}/.s.PGSQL.{}", dir.display(), self.port),
        }
    }
}

/// Which of several servers a connection accepts (libpq's
/// `target_session_attrs`), judged on each server in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first server that accepts the connection.
    #[default]
    Any,
    /// One whose sessions may write (`transaction_read_only` off).
    ReadWrite,
    /// One whose sessions may not write.
    ReadOnly,
    /// A server that is not in recovery.
    Primary,
    /// A server in recovery (a hot standby).
    Standby,
    /// A standby if one answers, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// Whether a server in this state is acceptable (`prefer-standby`'s
    /// fallback pass aside).
    pub fn accepts(self, in_recovery: bool, read_only: bool) -> bool {
        match self {
            TargetSessionAttrs::Any => true,
            TargetSessionAttrs::ReadWrite => !read_only,
            TargetSessionAttrs::ReadOnly => read_only,
            TargetSessionAttrs::Primary => !in_recovery,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => in_recovery,
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            other => {
                return Err(Error::Config(format!(
                    "target_session_attrs {other:?} is not one of any, read-write, read-only, \
                     primary, standby, prefer-standby"
                )))
            }
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        })
    }
}

/// A password that does not print itself.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Password(String);

impl Password {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"********\"")
    }
}

/// Everything needed to open a replication (or control) connection.
///
/// Parse one with [`str::parse`] / [`ReplicationConfig::parse`] from a libpq
/// URL or keyword/value string; the environment fills in what the string
/// leaves out.
///
/// Neither its `Display`/`Debug` nor a parse error shows the password. Where
/// a string is ambiguous, two rules keep it so (the second differs from
/// libpq, which accepts such URLs):
/// - a URL may hold one unencoded `@`, the one that ends its user info
///   before any `/`; write `@` as `%40` (and `/` as `%2F` in the user info)
///   everywhere else;
/// - an error about the word that follows a password written without quotes
///   does not show that word: it may be the rest of a password holding a
///   space (or an `&` in a URL's query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// The first server, then the others, tried in order.
    first: Target,
    more: Vec<Target>,
    target_session_attrs: TargetSessionAttrs,
    user: String,
    password: Option<Password>,
    dbname: String,
    sslmode: SslMode,
    sslrootcert: Option<String>,
    channel_binding: ChannelBinding,
    require_auth: RequireAuth,
    application_name: Option<String>,
    connect_timeout: Option<Duration>,
    options: Option<String>,
    keepalives: bool,
    keepalives_idle: Duration,
    keepalives_interval: Duration,
    keepalives_count: u32,
    passfile: Option<PathBuf>,
}

/// The settings as written, before defaults.
#[derive(Default)]
struct Raw {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    channel_binding: Option<String>,
    require_auth: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    connect_timeout: Option<String>,
    options: Option<String>,
    keepalives: Option<String>,
    keepalives_idle: Option<String>,
    keepalives_interval: Option<String>,
    keepalives_count: Option<String>,
    passfile: Option<String>,
    target_session_attrs: Option<String>,
    /// Whether the last setting was a password written without quotes:
    /// the next word may then be the rest of a password that holds a space
    /// (or, in a URL's query, an '&'), so errors do not show it.
    follows_bare_password: bool,
}

const KNOWN: &str = "host, hostaddr, port, user, password, dbname, sslmode, sslrootcert, \
                     channel_binding, require_auth, application_name, fallback_application_name, \
                     connect_timeout, options, keepalives, keepalives_idle, \
                     keepalives_interval, keepalives_count, passfile, target_session_attrs";

impl Raw {
    /// How an error names the setting `key`.
    fn shown_key(&self, key: &str) -> String {
        if self.follows_bare_password {
            "after the password (not shown: it may be the rest of the password; quote a \
             password that holds spaces, password='...', and percent-encode one in a URL)"
                .into()
        } else {
            format!("{key:?}")
        }
    }

    fn set(&mut self, key: &str, value: String) -> Result<(), Error> {
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "channel_binding" => &mut self.channel_binding,
            "require_auth" => &mut self.require_auth,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "options" => &mut self.options,
            "keepalives" => &mut self.keepalives,
            "keepalives_idle" => &mut self.keepalives_idle,
            "keepalives_interval" => &mut self.keepalives_interval,
            "keepalives_count" => &mut self.keepalives_count,
            "passfile" => &mut self.passfile,
            "target_session_attrs" => &mut self.target_session_attrs,
            // libpq's JDBC-compatible spelling.
            "ssl" if value == "true" => &mut self.sslmode,
            "replication" => {
                return Err(Error::Config(
                    "the replication option is set by walstream itself (replication=database \
                     for the stream); remove it from the connection string"
                        .into(),
                ))
            }
            // Accepted when they ask for what walstream does anyway.
            "gssencmode" if value != "require" => return Ok(()),
            "sslnegotiation" if value == "postgres" => return Ok(()),
            other => {
                return Err(Error::Config(format!(
                    "unsupported connection option {} (value not shown); walstream knows: \
                     {KNOWN}",
                    self.shown_key(other)
                )))
            }
        };
        *slot = Some(if key == "ssl" {
            "require".to_string()
        } else {
            value
        });
        Ok(())
    }
}

impl ReplicationConfig {
    /// Parses a libpq URL or keyword/value string; what it leaves out comes
    /// from the PG* environment variables, then libpq's defaults.
    pub fn parse(s: &str) -> Result<ReplicationConfig, Error> {
        ReplicationConfig::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// Like [`parse`](Self::parse) with the environment given as a lookup
    /// function (tests, or a service that wants no environment: `|_| None`).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ReplicationConfig, Error> {
        let s = s.trim();
        let raw = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            parse_url(s)?
        } else {
            parse_keywords(s)?
        };
        ReplicationConfig::resolve(raw, env)
    }

    fn resolve(raw: Raw, env: impl Fn(&str) -> Option<String>) -> Result<ReplicationConfig, Error> {
        let pick = |given: Option<String>, var: &str| given.or_else(|| env(var));
        let targets = targets(
            &pick(raw.host, "PGHOST").unwrap_or_else(|| "localhost".into()),
            pick(raw.hostaddr, "PGHOSTADDR").as_deref(),
            pick(raw.port, "PGPORT").as_deref(),
        )?;
        let target_session_attrs = match pick(raw.target_session_attrs, "PGTARGETSESSIONATTRS") {
            Some(a) => a.parse()?,
            None => TargetSessionAttrs::Any,
        };
        let user = pick(raw.user, "PGUSER")
            .or_else(|| env("USER"))
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "no user given: set user in the connection string (postgres://user@host/db) \
                     or PGUSER"
                        .into(),
                )
            })?;
        let dbname = pick(raw.dbname, "PGDATABASE")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        let sslmode = match pick(raw.sslmode, "PGSSLMODE") {
            Some(m) => m.parse()?,
            None => SslMode::Prefer,
        };
        let channel_binding = match pick(raw.channel_binding, "PGCHANNELBINDING") {
            Some(m) => m.parse()?,
            None => ChannelBinding::Prefer,
        };
        let require_auth = match pick(raw.require_auth, "PGREQUIREAUTH") {
            Some(list) => list.parse()?,
            None => RequireAuth::default(),
        };
        let connect_timeout = match pick(raw.connect_timeout, "PGCONNECT_TIMEOUT") {
            None => Some(Duration::from_secs(30)),
            Some(t) => {
                let secs: i64 = t.trim().parse().map_err(|_| {
                    Error::Config(format!("connect_timeout {t:?} is not a number of seconds"))
                })?;
                // libpq: 0 or negative waits forever; 1 is raised to 2.
                u64::try_from(secs)
                    .ok()
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(s.max(2)))
            }
        };
        let keepalives = match raw.keepalives.as_deref() {
            None | Some("1") => true,
            Some("0") => false,
            Some(other) => {
                return Err(Error::Config(format!("keepalives {other:?} is not 0 or 1")));
            }
        };
        let secs = |v: Option<String>, name: &str, default: u64| -> Result<Duration, Error> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(s) => s
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        Error::Config(format!("{name} {s:?} is not a positive number of seconds"))
                    }),
            }
        };
        let keepalives_count = match raw.keepalives_count {
            None => 3,
            Some(c) => c.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!("keepalives_count {c:?} is not a positive number"))
            })?,
        };
        let mut targets = targets.into_iter();
        let first = targets
            .next()
            .ok_or_else(|| Error::Config("no host given".into()))?;
        Ok(ReplicationConfig {
            first,
            more: targets.collect(),
            target_session_attrs,
            password: pick(raw.password, "PGPASSWORD").map(Password),
            user,
            dbname,
            sslmode,
            sslrootcert: pick(raw.sslrootcert, "PGSSLROOTCERT").filter(|s| !s.is_empty()),
            channel_binding,
            require_auth,
            application_name: pick(raw.application_name, "PGAPPNAME")
                .or(raw.fallback_application_name),
            connect_timeout,
            options: pick(raw.options, "PGOPTIONS").filter(|s| !s.is_empty()),
            keepalives,
            keepalives_idle: secs(raw.keepalives_idle, "keepalives_idle", 30)?,
            keepalives_interval: secs(raw.keepalives_interval, "keepalives_interval", 10)?,
            keepalives_count,
            passfile: pick(raw.passfile, "PGPASSFILE").map(PathBuf::from),
        })
    }

    /// The (first) host: name, address or socket directory.
    pub fn host(&self) -> &Host {
        &self.first().host
    }

    /// The IP address to connect to instead of resolving the (first) host
    /// name (the host name is still what verify-full checks).
    pub fn hostaddr(&self) -> Option<IpAddr> {
        self.first().hostaddr
    }

    /// The (first) host's port.
    pub fn port(&self) -> u16 {
        self.first().port
    }

    /// Every server the string names, in the order they are tried.
    pub fn targets(&self) -> Vec<&Target> {
        std::iter::once(&self.first).chain(&self.more).collect()
    }

    /// Which server a connection accepts.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// The same settings for one server of the list only (`index` beyond
    /// the list: the last).
    pub fn for_target(&self, index: usize) -> ReplicationConfig {
        let mut one = self.clone();
        let all = self.targets();
        if let Some(target) = all.get(index).or(all.last()) {
            one.first = (*target).clone();
        }
        one.more.clear();
        one
    }

    fn first(&self) -> &Target {
        &self.first
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database whose changes the slot decodes.
    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The TLS mode.
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// Whether the link is verified as libpq's `verify-full` verifies it:
    /// TLS, with a server certificate that chains to a trusted root and
    /// names the host. `false` for every weaker sslmode, where an active
    /// attacker on the path can read or change the stream, and for a Unix
    /// socket (no TLS; the link does not leave the machine, see
    /// [`host`](Self::host)). A service can warn once at start when this is
    /// `false`.
    pub fn is_verify_full(&self) -> bool {
        self.sslmode == SslMode::VerifyFull
            && self
                .targets()
                .iter()
                .all(|t| matches!(t.host, Host::Tcp(_)))
    }

    /// The CA file that verifies the server (or `system` for the system's
    /// roots); see [`SslMode`].
    pub fn sslrootcert(&self) -> Option<&str> {
        self.sslrootcert.as_deref()
    }

    /// The SCRAM channel binding mode.
    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// The authentication methods the server may use (libpq's
    /// `require_auth`; default: any, but no cleartext password over plain
    /// TCP).
    pub fn require_auth(&self) -> RequireAuth {
        self.require_auth
    }

    /// The application_name the server shows in pg_stat_activity and
    /// pg_stat_replication.
    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// How long connecting (TCP, TLS and authentication) may take; `None`
    /// waits forever. Default 30 s.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// Extra server options (`-c name=value ...`).
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// Whether a password is set (from the string or PGPASSWORD; the
    /// password file is read at connect time).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    pub(crate) fn password(&self) -> Option<&Password> {
        self.password.as_ref()
    }

    pub(crate) fn passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// TCP keepalive settings: enabled, idle time, probe interval, probes.
    pub fn tcp_keepalive(&self) -> Option<(Duration, Duration, u32)> {
        self.keepalives.then_some((
            self.keepalives_idle,
            self.keepalives_interval,
            self.keepalives_count,
        ))
    }

    /// Sets the password (e.g. from a secret store).
    pub fn set_password(&mut self, password: impl Into<String>) -> &mut Self {
        self.password = Some(Password(password.into()));
        self
    }

    /// Sets which server of several a connection accepts.
    pub fn set_target_session_attrs(&mut self, attrs: TargetSessionAttrs) -> &mut Self {
        self.target_session_attrs = attrs;
        self
    }

    /// Sets the application_name.
    pub fn set_application_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.application_name = Some(name.into());
        self
    }

    /// Sets the TLS mode.
    pub fn set_sslmode(&mut self, mode: SslMode) -> &mut Self {
        self.sslmode = mode;
        self
    }

    /// Sets the authentication methods the server may use.
    pub fn set_require_auth(&mut self, require_auth: RequireAuth) -> &mut Self {
        self.require_auth = require_auth;
        self
    }

    /// Sets the connect timeout (`None`: wait forever).
    pub fn set_connect_timeout(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// `host:port` or the socket path (each, comma-separated, for a list),
    /// for messages.
    pub(crate) fn target(&self) -> String {
        self.targets()
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The servers of `host`, `hostaddr` and `port`, as libpq pairs them: each
/// a comma-separated list; `port` and `hostaddr` hold one entry for all
/// hosts or one per host (an empty entry: the default).
fn targets(host: &str, hostaddr: Option<&str>, port: Option<&str>) -> Result<Vec<Target>, Error> {
    let hosts: Vec<&str> = host.split(',').map(str::trim).collect();
    let spread = |list: Option<&str>, what: &str| -> Result<Vec<Option<String>>, Error> {
        let Some(list) = list else {
            return Ok(vec![None; hosts.len()]);
        };
        let items: Vec<Option<String>> = list
            .split(',')
            .map(|p| Some(p.trim().to_string()).filter(|p| !p.is_empty()))
            .collect();
        match items.len() {
            1 => Ok(vec![items.into_iter().next().flatten(); hosts.len()]),
            n if n == hosts.len() => Ok(items),
            n => Err(Error::Config(format!(
                "{what} lists {n} values for {} hosts; give one for all or one per host",
                hosts.len()
            ))),
        }
    };
    let ports = spread(port, "port")?;
    let addrs = spread(hostaddr, "hostaddr")?;
    hosts
        .iter()
        .zip(ports)
        .zip(addrs)
        .map(|((h, p), a)| {
            let port = match p {
                None => DEFAULT_PORT,
                Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    Error::Config(format!("port {p:?} is not a TCP port number (1-65535)"))
                })?,
            };
            let hostaddr = a
                .map(|a| {
                    a.parse::<IpAddr>().map_err(|_| {
                        Error::Config(format!("hostaddr {a:?} is not an IPv4 or IPv6 address"))
                    })
                })
                .transpose()?;
            // An empty entry is the default host, as in libpq.
            let h = if h.is_empty() { "localhost" } else { h };
            Ok(Target {
                host: Host::parse(h)?,
                hostaddr,
                port,
            })
        })
        .collect()
}

impl FromStr for ReplicationConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<ReplicationConfig, Error> {
        ReplicationConfig::parse(s)
    }
}

/// `user@host:port/db`: what a log line may show.
impl fmt::Display for ReplicationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}/{}", self.user, self.target(), self.dbname)
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Config(format!("invalid percent-encoding in the URL's {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::Config(format!("the URL's {what} is not UTF-8 once decoded")))
}

/// One `host[:port]` of a URL (`[v6addr]:port` for IPv6).
fn url_host_port(hostport: &str) -> Result<(String, Option<String>), Error> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| Error::Config("the URL's IPv6 host has no closing ']'".into()))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                Error::Config("unexpected text after the URL's IPv6 host".into())
            })?),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (percent_decode(h, "host")?, Some(p)),
            None => (percent_decode(hostport, "host")?, None),
        }
    };
    let port = port.filter(|p| !p.is_empty());
    if let Some(p) = port {
        // Not shown: in a URL missing its '@', it is the password.
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Config(
                "the URL's port (after the host's ':') is not a number; write \
                 postgres://user:password@host:port/dbname (the port is not shown: without \
                 the '@' it may be a password)"
                    .into(),
            ));
        }
    }
    Ok((host, port.map(str::to_string)))
}

/// `postgres[ql]://[user[:password]@][host][:port][,host[:port]...][/dbname][?k=v&...]`
fn parse_url(s: &str) -> Result<Raw, Error> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    // The user info ends at the first '@' before any '/', as in libpq (so a
    // password may hold '?', '#', ':' and spaces unencoded).
    let (userinfo, rest) = match rest.find(['@', '/']) {
        Some(i) if rest.get(i..=i) == Some("@") => (rest.get(..i), rest.get(i + 1..).unwrap_or("")),
        _ => (None, rest),
    };
    // Any other '@' may be part of a password holding '@' or '/', and
    // whatever this parse made of it (a host, a port, a database name)
    // would show it: refuse the URL, showing none of it.
    if rest.contains('@') {
        return Err(Error::Config(
            "the URL holds an '@' that does not end its user info (a second '@', or one after \
             a '/'); percent-encode '@' as %40 and '/' as %2F in the user name and password, \
             and '@' as %40 anywhere else (the URL is not shown: it may hold the password)"
                .into(),
        ));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i + 1..)),
        None => (rest, None),
    };
    let mut raw = Raw::default();
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            raw.user = Some(percent_decode(user, "user")?);
        }
        if let Some(p) = password {
            raw.password = Some(percent_decode(p, "password")?);
        }
    }
    if !hostport.is_empty() {
        // `host[:port]`, or several separated by commas (libpq's multi-host
        // URL): each host with its own port or none (the default).
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for one in hostport.split(',') {
            let (host, port) = url_host_port(one)?;
            hosts.push(host);
            ports.push(port.unwrap_or_default());
        }
        if hosts.len() > 1 || hosts.iter().any(|h| !h.is_empty()) {
            raw.host = Some(hosts.join(","));
        }
        if ports.iter().any(|p| !p.is_empty()) {
            raw.port = Some(ports.join(","));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.dbname = Some(percent_decode(db, "database name")?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "the URL's query parameter {} has no '=value'",
                raw.shown_key(pair)
            ))
        })?;
        let key = percent_decode(k, "query parameter")?;
        raw.set(&key, percent_decode(v, "query parameter")?)?;
        raw.follows_bare_password = key == "password";
    }
    Ok(raw)
}

/// `key=value key2='quoted \' value'`, as libpq's conninfo strings.
fn parse_keywords(s: &str) -> Result<Raw, Error> {
    let mut raw = Raw::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(raw);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(Error::Config(format!(
                "missing '=' after {} in the connection string (expected key=value pairs or a \
                 postgres:// URL)",
                raw.shown_key(&key)
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if_eq(&'\'').is_some();
        if quoted {
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::Config(format!(
                            "unterminated quoted value for {} in the connection string",
                            raw.shown_key(&key)
                        )))
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        raw.set(&key, value)?;
        raw.follows_bare_password = key == "password" && !quoted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ReplicationConfig {
        ReplicationConfig::parse_with_env(s, no_env).unwrap()
    }

    #[test]
    fn several_hosts_pair_with_their_ports_as_libpq_does() {
        let c = parse("host=a,b port=5432,5433 user=u target_session_attrs=read-write");
        let hosts: Vec<String> = c.targets().iter().map(|t| t.to_string()).collect();
        assert_eq!(hosts, ["a:5432", "b:5433"]);
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(c.to_string(), "u@a:5432,b:5433/u");
        // One port for all hosts; the first host is what host() reports.
        let c = parse("host=a,b port=6000 user=u");
        assert_eq!(
            c.targets().iter().map(|t| t.port).collect::<Vec<_>>(),
            [6000, 6000]
        );
        assert_eq!(c.host(), &Host::Tcp("a".into()));
        // Each server alone, for a connection to that one.
        let second = c.for_target(1);
        assert_eq!(second.targets().len(), 1);
        assert_eq!(second.host(), &Host::Tcp("b".into()));
        // A URL's list: each host with its port or the default.
        let c = parse("postgres://u@[::1]:5433,db2,db3:6000/shop?target_session_attrs=primary");
        let hosts: Vec<String> = c.targets().iter().map(|t| t.to_string()).collect();
        assert_eq!(hosts, ["[::1]:5433", "db2:5432", "db3:6000"]);
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::Primary);
        assert_eq!(c.dbname(), "shop");
        // Empty hosts are the default host, each with its port.
        let c = parse("postgres://u@:5433,:5434/shop");
        let hosts: Vec<String> = c.targets().iter().map(|t| t.to_string()).collect();
        assert_eq!(hosts, ["localhost:5433", "localhost:5434"]);
        for (text, attrs) in [
            ("any", TargetSessionAttrs::Any),
            ("read-write", TargetSessionAttrs::ReadWrite),
            ("read-only", TargetSessionAttrs::ReadOnly),
            ("primary", TargetSessionAttrs::Primary),
            ("standby", TargetSessionAttrs::Standby),
            ("prefer-standby", TargetSessionAttrs::PreferStandby),
        ] {
            assert_eq!(text.parse::<TargetSessionAttrs>().unwrap(), attrs);
            assert_eq!(attrs.to_string(), text);
        }
        // A standby suits standby and prefer-standby; a read-only primary
        // suits primary but not read-write.
        assert!(TargetSessionAttrs::Standby.accepts(true, true));
        assert!(!TargetSessionAttrs::Primary.accepts(true, true));
        assert!(TargetSessionAttrs::Primary.accepts(false, true));
        assert!(!TargetSessionAttrs::ReadWrite.accepts(false, true));
    }

    #[test]
    fn urls_parse_like_libpq() {
        let c = parse("postgres://relay:s%40cret@db.example:6543/shop?sslmode=verify-full&application_name=outbox");
        assert_eq!(c.host(), &Host::Tcp("db.example".into()));
        assert_eq!(c.port(), 6543);
        assert_eq!(c.user(), "relay");
        assert_eq!(c.password().unwrap().expose(), "s@cret");
        assert_eq!(c.dbname(), "shop");
        assert_eq!(c.sslmode(), SslMode::VerifyFull);
        assert_eq!(c.application_name(), Some("outbox"));

        let c = parse("postgresql://u@[::1]:5433");
        assert_eq!(c.host(), &Host::Tcp("::1".into()));
        assert_eq!(c.port(), 5433);
        assert_eq!(c.dbname(), "u", "dbname defaults to the user");

        let c = parse("postgres://u@%2Fvar%2Frun%2Fpostgresql/db");
        assert_eq!(c.host(), &Host::Unix("/var/run/postgresql".into()));

        let c = parse("postgres://u@h/db?ssl=true&connect_timeout=1&hostaddr=10.0.0.5");
        assert_eq!(c.sslmode(), SslMode::Require);
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(c.hostaddr(), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.target(), "h (10.0.0.5):5432");
    }

    #[test]
    fn keyword_strings_parse_with_quotes_and_escapes() {
        let c = parse(
            "host=db port = 5433 user=relay password='it\\'s a secret' dbname=shop \
             sslmode=require channel_binding=require keepalives_idle=5 options='-c a=b'",
        );
        assert_eq!(c.host(), &Host::Tcp("db".into()));
        assert_eq!(c.port(), 5433);
        assert_eq!(c.password().unwrap().expose(), "it's a secret");
        assert_eq!(c.channel_binding(), ChannelBinding::Require);
        assert_eq!(c.options(), Some("-c a=b"));
        assert_eq!(
            c.tcp_keepalive(),
            Some((Duration::from_secs(5), Duration::from_secs(10), 3))
        );
        let c = parse("host=/tmp/sock user=u connect_timeout=0 keepalives=0");
        assert_eq!(c.host(), &Host::Unix("/tmp/sock".into()));
        assert_eq!(c.connect_timeout(), None);
        assert_eq!(c.tcp_keepalive(), None);
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        let err = |s: &str| {
            ReplicationConfig::parse_with_env(s, no_env)
                .unwrap_err()
                .to_string()
        };
        assert!(err("host=h user=u sslmode=strict").contains("sslmode \"strict\""));
        assert!(err("host=h user=u bogus=1").contains("unsupported connection option \"bogus\""));
        assert!(err("host=h user=u replication=database").contains("set by walstream"));
        assert!(err("host=h user=u port=99999").contains("not a TCP port"));
        assert!(err("host=h user=u password='open").contains("unterminated"));
        assert!(err("host=a,b,c port=1,2 user=u").contains("2 values for 3 hosts"));
        assert_eq!(
            parse("host=a,,b user=u").targets()[1].host,
            Host::Tcp("localhost".into())
        );
        assert!(err("host=a user=u target_session_attrs=master").contains("read-write"));
        assert!(err("postgres://h/db").contains("no user given"));
        assert!(err("host=h user").contains("missing '='"));
        assert!(err("postgres://u@h/db?sslmode").contains("no '=value'"));
        assert!(err("postgres://u@h/%zz").contains("percent-encoding"));
        let err = err("postgres://relay:Qz1Wv2/shop");
        assert!(
            err.contains("port (after the host's ':') is not a number"),
            "{err}"
        );
        assert!(!err.contains("Qz1Wv2"), "{err}");
    }

    #[test]
    fn environment_fills_what_the_string_leaves_out() {
        let env = |name: &str| {
            Some(
                match name {
                    "PGHOST" => "envhost",
                    "PGPORT" => "7777",
                    "PGUSER" => "envuser",
                    "PGPASSWORD" => "envpw",
                    "PGSSLMODE" => "disable",
                    "PGAPPNAME" => "envapp",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let c = ReplicationConfig::parse_with_env("postgres://given@/db", env).unwrap();
        assert_eq!(c.host(), &Host::Tcp("envhost".into()));
        assert_eq!(c.port(), 7777);
        assert_eq!(c.user(), "given", "the string wins over the environment");
        assert_eq!(c.password().unwrap().expose(), "envpw");
        assert_eq!(c.sslmode(), SslMode::Disable);
        assert_eq!(c.application_name(), Some("envapp"));
        let c = ReplicationConfig::parse_with_env("", env).unwrap();
        assert_eq!((c.user(), c.dbname()), ("envuser", "envuser"));
        // The defaults of libpq.
        let c = parse("user=u");
        assert_eq!(c.host(), &Host::Tcp("localhost".into()));
        assert_eq!(c.port(), 5432);
        assert_eq!(c.sslmode(), SslMode::Prefer);
        assert_eq!(c.channel_binding(), ChannelBinding::Prefer);
    }

    #[test]
    fn require_auth_comes_from_the_url_the_keywords_or_pgrequireauth() {
        use crate::AuthMethod;
        let c = parse("postgres://u@h/db?require_auth=scram-sha-256");
        assert!(!c.require_auth().allows(AuthMethod::Md5));
        let c = parse("user=u require_auth = '!md5, !password'");
        assert!(!c.require_auth().allows(AuthMethod::Password));
        assert!(c.require_auth().allows(AuthMethod::ScramSha256));
        let env = |name: &str| (name == "PGREQUIREAUTH").then(|| "password".to_string());
        let c = ReplicationConfig::parse_with_env("user=u", env).unwrap();
        assert!(c.require_auth().allows_cleartext_over_plain_tcp());
        let c = ReplicationConfig::parse_with_env("user=u require_auth=md5", env).unwrap();
        assert!(
            !c.require_auth().allows(AuthMethod::Password),
            "the string wins"
        );
        assert!(parse("user=u").require_auth().is_default());
        let err =
            ReplicationConfig::parse_with_env("user=u require_auth=md5,!none", no_env).unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert!(err.to_string().contains("mixes methods"), "{err}");
    }

    #[test]
    fn only_verify_full_over_tcp_counts_as_verify_full() {
        assert!(parse("host=db user=u sslmode=verify-full").is_verify_full());
        for weaker in [
            "host=db user=u",
            "host=db user=u sslmode=verify-ca",
            "host=db user=u sslmode=require sslrootcert=ca.pem",
            "host=db user=u sslmode=disable",
            "host=/run/postgresql user=u sslmode=verify-full",
        ] {
            assert!(!parse(weaker).is_verify_full(), "{weaker}");
        }
        let mut c = parse("host=db user=u");
        c.set_sslmode(SslMode::VerifyFull);
        assert!(c.is_verify_full());
    }

    #[test]
    fn a_url_password_may_hold_what_libpq_allows_unencoded() {
        let c = parse("postgres://relay:p?w#d:x y,z@db/shop?sslmode=require");
        assert_eq!(c.password().unwrap().expose(), "p?w#d:x y,z");
        assert_eq!(c.host(), &Host::Tcp("db".into()));
        assert_eq!(c.sslmode(), SslMode::Require);
        let c = parse("postgres://db?sslmode=disable&user=u");
        assert_eq!((c.host(), c.user()), (&Host::Tcp("db".into()), "u"));
    }

    #[test]
    fn an_unencoded_at_outside_the_user_info_is_refused_showing_nothing() {
        for url in [
            "postgres://relay:Qz1@Wv2@Db3/shop",
            "postgres://relay:Qz1/Wv2@Db3/shop",
            "postgres://relay:Qz1@Db3/shop?application_name=Wv2@Xy4",
            "postgres://Db3/Wv2@Xy4",
        ] {
            let err = ReplicationConfig::parse_with_env(url, no_env).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("percent-encode '@' as %40"), "{text}");
            for part in ["Qz1", "Wv2", "Db3", "Xy4"] {
                assert!(!text.contains(part), "{text}");
            }
        }
        let c = parse("postgres://relay:pa%40ss%2F@db/shop?application_name=a%40b");
        assert_eq!(c.password().unwrap().expose(), "pa@ss/");
        assert_eq!(c.application_name(), Some("a@b"));
    }

    #[test]
    fn the_word_after_a_bare_password_is_never_shown() {
        for s in [
            "user=u password=hunter2 and-more host=h",
            "user=u password=hunter2 and-more=x",
            "user=u password=hunter2 and-more='x",
            "postgres://u@h/db?password=hunter2&and-more",
            "postgres://u@h/db?password=hunter2&and-more=x",
        ] {
            let text = ReplicationConfig::parse_with_env(s, no_env)
                .unwrap_err()
                .to_string();
            assert!(text.contains("after the password (not shown"), "{text}");
            assert!(!text.contains("and-more"), "{text}");
        }
        // A quoted password ends where its quote does: the next word shows.
        let err =
            ReplicationConfig::parse_with_env("user=u password='a b' bogus=1", no_env).unwrap_err();
        assert!(err.to_string().contains("\"bogus\""), "{err}");
    }

    #[test]
    fn the_password_never_prints() {
        let c = parse("postgres://relay:hunter2@db/shop");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_string().contains("hunter2"));
        assert_eq!(c.to_string(), "relay@db:5432/shop");
        let err = ReplicationConfig::parse_with_env("user=u password=hunter2 nope=x", no_env)
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let err = ReplicationConfig::parse_with_env("user=u nope=hunter2", no_env).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
    }
}
