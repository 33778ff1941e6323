//! Opening a replication connection: socket, TLS negotiation, startup
//! packet and authentication (trust, cleartext password, md5, SCRAM-SHA-256
//! and SCRAM-SHA-256-PLUS with tls-server-end-point channel binding).
//!
//! The link (socket, keepalives, TLS) is opened by [`open_link`], which the
//! control connection uses too. Each authentication request is checked
//! against `require_auth` and the rule against cleartext passwords over
//! plain TCP (`auth::AuthPolicy`) before anything is sent in answer.
//!
//! The startup packet asks for `replication=database` and turns off the
//! session timeouts that would otherwise end a long-lived stream:
//! statement_timeout, lock_timeout and idle_in_transaction_session_timeout.
//! TCP keepalives are on unless the settings say otherwise.

use std::net::SocketAddr;

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{AuthMethod, AuthPolicy};
use crate::config::{ChannelBinding, Host, ReplicationConfig, SslMode};
use crate::error::{DbError, Error};
use crate::tls::{handshake_error, TlsSetup};
use crate::wire::{Backend, Socket, Wire};
use crate::{hosts, pgpass};

/// An authenticated replication connection, ready for commands.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) wire: Wire,
    pub(crate) auth: AuthMethod,
}

/// Connects, negotiates TLS and authenticates, within `connect_timeout`.
pub(crate) async fn connect(config: &ReplicationConfig) -> Result<Established, Error> {
    let password = password(config);
    within_connect_timeout(config, async {
        let mut wire = Wire::new(open_link(config).await?);
        let auth = startup(&mut wire, config, password.as_deref()).await?;
        Ok(Established { wire, auth })
    })
    .await
}

impl hosts::Session for Established {
    async fn open(config: &ReplicationConfig) -> Result<Established, Error> {
        connect(config).await
    }

    async fn state(&mut self) -> Result<hosts::ServerState, Error> {
        let r = self
            .wire
            .simple_query(
                hosts::STATE_QUERY,
                "reading whether the server is a standby",
            )
            .await?;
        let row = r.rows.first();
        let col = |i: usize| row.and_then(|r| r.get(i)).and_then(|v| v.as_deref());
        Ok(hosts::parse_state(col(0), col(1)))
    }

    async fn discard(self) {
        self.wire.terminate().await;
    }
}

/// The password to answer a request with: from the settings, else from
/// the password file.
pub(crate) fn password(config: &ReplicationConfig) -> Option<String> {
    match config.password() {
        Some(p) => Some(p.expose().to_string()),
        None => pgpass::lookup(config),
    }
}

/// Runs `attempt` (a connection's opening) within `connect_timeout`.
pub(crate) async fn within_connect_timeout<T>(
    config: &ReplicationConfig,
    attempt: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match config.connect_timeout() {
        Some(limit) => tokio::time::timeout(limit, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Error::ConnectTimeout {
                    target: config.target(),
                    timeout: limit,
                })
            }),
        None => attempt.await,
    }
}

/// The socket, with TLS as the settings ask, ready for a startup packet:
/// the link of both the replication and the control connection.
pub(crate) async fn open_link(config: &ReplicationConfig) -> Result<Socket, Error> {
    let tls = TlsSetup::new(config)?;
    let mut try_tls = tls.as_ref();
    loop {
        let socket = open_socket(config).await?;
        let socket = match (try_tls, socket) {
            (Some(setup), Socket::Tcp(tcp)) => match negotiate_tls(config, setup, tcp).await {
                Ok(socket) => socket,
                // libpq's prefer: a failed handshake is retried without TLS.
                Err(e) if config.sslmode() == SslMode::Prefer && !matches!(e, Error::Config(_)) => {
                    tracing::debug!(error = %e, "tls handshake failed; retrying without tls (sslmode=prefer)");
                    try_tls = None;
                    continue;
                }
                Err(e) => return Err(e),
            },
            (_, socket) => socket,
        };
        return Ok(socket);
    }
}

/// What decides whether walstream answers the server's authentication
/// request on this link.
pub(crate) fn auth_policy(config: &ReplicationConfig, socket: &Socket) -> AuthPolicy {
    AuthPolicy::new(
        config.require_auth(),
        matches!(socket, Socket::Tcp(_)),
        config.user(),
    )
}

/// Opens the TCP or Unix socket, trying each resolved address in turn.
async fn open_socket(config: &ReplicationConfig) -> Result<Socket, Error> {
    let connect_error = |source| Error::Connect {
        target: config.target(),
        source,
    };
    let host = match config.host() {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{}", config.port()));
            let stream = UnixStream::connect(&path).await.map_err(connect_error)?;
            return Ok(Socket::Unix(stream));
        }
        Host::Tcp(host) => host,
    };
    let addrs: Vec<SocketAddr> = match config.hostaddr() {
        Some(ip) => vec![SocketAddr::new(ip, config.port())],
        None => tokio::net::lookup_host((host.as_str(), config.port()))
            .await
            .map_err(connect_error)?
            .collect(),
    };
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{host} resolved to no address"),
    );
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                configure_tcp(&stream, config);
                return Ok(Socket::Tcp(stream));
            }
            Err(e) => last = e,
        }
    }
    Err(connect_error(last))
}

fn configure_tcp(stream: &TcpStream, config: &ReplicationConfig) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    if let Some((idle, interval, count)) = config.tcp_keepalive() {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(count);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::warn!(error = %e, "could not enable TCP keepalives on the replication connection");
        }
    }
}

/// SSLRequest, then a TLS handshake if the server agrees.
async fn negotiate_tls(
    config: &ReplicationConfig,
    setup: &TlsSetup,
    mut tcp: TcpStream,
) -> Result<Socket, Error> {
    let mut request = bytes::BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request)
        .await
        .map_err(|e| Error::io("asking the server for TLS", e))?;
    // Exactly one byte: anything after it belongs to the TLS handshake, and
    // nothing may be read ahead of it (CVE-2021-23222).
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| Error::io("asking the server for TLS", e))?;
    match answer {
        b'S' => {
            let tls = setup
                .connector()
                .connect(setup.server_name(), tcp)
                .await
                .map_err(|e| handshake_error(config.target(), e))?;
            Ok(Socket::Tls(Box::new(tls)))
        }
        b'N' if config.sslmode() == SslMode::Prefer => Ok(Socket::Tcp(tcp)),
        b'N' => Err(Error::Tls {
            target: config.target(),
            reason: format!(
                "the server does not accept TLS but sslmode={} requires it; set ssl = on (with \
                 ssl_cert_file and ssl_key_file) in postgresql.conf, or lower sslmode",
                config.sslmode()
            ),
            retryable: false,
        }),
        other => Err(Error::protocol(
            "asking the server for TLS",
            format!("answer byte {other:#04x} to SSLRequest (expected 'S' or 'N')"),
        )),
    }
}

/// The startup packet, authentication, and the session's opening messages
/// up to ReadyForQuery.
async fn startup(
    wire: &mut Wire,
    config: &ReplicationConfig,
    password: Option<&str>,
) -> Result<AuthMethod, Error> {
    let mut params: Vec<(&str, &str)> = vec![
        ("user", config.user()),
        ("database", config.dbname()),
        ("replication", "database"),
        (
            "application_name",
            config.application_name().unwrap_or("walstream"),
        ),
        ("client_encoding", "UTF8"),
        // A stream lives for days: no session timeout may end it.
        ("statement_timeout", "0"),
        ("lock_timeout", "0"),
        ("idle_in_transaction_session_timeout", "0"),
    ];
    if let Some(options) = config.options() {
        params.push(("options", options));
    }
    frontend::startup_message(params.iter().copied(), &mut wire.wbuf)
        .map_err(|e| Error::Config(format!("cannot encode the startup packet: {e}")))?;
    wire.flush("sending the startup packet").await?;
    let method = authenticate(wire, config, password).await?;
    if config.channel_binding() == ChannelBinding::Require && method != AuthMethod::ScramSha256Plus
    {
        return Err(auth_error(
            config,
            format!(
                "channel_binding=require, but the server authenticated the connection with \
                 {method:?}, without channel binding; use sslmode=require or stricter and \
                 scram-sha-256 in pg_hba.conf, or lower channel_binding"
            ),
        ));
    }
    const DURING: &str = "starting the session";
    loop {
        match wire.recv(DURING).await? {
            Backend::Message(Message::BackendKeyData(body)) => wire.backend_pid = body.process_id(),
            Backend::Message(Message::ReadyForQuery(_)) => return Ok(method),
            Backend::Message(Message::ErrorResponse(body)) => {
                let db = DbError::from_response(&body, DURING)?;
                return Err(Error::server("the session", db));
            }
            _ => {
                return Err(Error::protocol(
                    DURING,
                    "a message out of place after authentication",
                ))
            }
        }
    }
}

fn auth_error(config: &ReplicationConfig, reason: String) -> Error {
    Error::Auth {
        user: config.user().to_string(),
        reason,
    }
}

fn need_password<'a>(
    config: &ReplicationConfig,
    password: Option<&'a str>,
) -> Result<&'a str, Error> {
    password.ok_or_else(|| {
        auth_error(
            config,
            "the server asks for a password and none is set: put it in the connection URL, \
             PGPASSWORD or ~/.pgpass"
                .into(),
        )
    })
}

async fn authenticate(
    wire: &mut Wire,
    config: &ReplicationConfig,
    password: Option<&str>,
) -> Result<AuthMethod, Error> {
    const DURING: &str = "authenticating";
    let server_error =
        |db: DbError| Error::server(format!("authentication of role {:?}", config.user()), db);
    let cb_refused = |method: &str| {
        auth_error(
            config,
            format!(
                "channel_binding=require, but the server asks for {method} authentication; \
                 configure scram-sha-256 in pg_hba.conf and use TLS, or lower channel_binding"
            ),
        )
    };
    let require_cb = config.channel_binding() == ChannelBinding::Require;
    let policy = auth_policy(config, &wire.socket);
    match wire.recv(DURING).await? {
        Backend::Message(Message::AuthenticationOk) => {
            policy.permit(AuthMethod::Trust)?;
            if require_cb {
                return Err(cb_refused("no (trust)"));
            }
            Ok(AuthMethod::Trust)
        }
        Backend::Message(Message::AuthenticationCleartextPassword) => {
            policy.permit(AuthMethod::Password)?;
            if require_cb {
                return Err(cb_refused("cleartext password"));
            }
            let pw = need_password(config, password)?;
            frontend::password_message(pw.as_bytes(), &mut wire.wbuf)
                .map_err(|_| auth_error(config, "the password holds a NUL byte".into()))?;
            wire.flush(DURING).await?;
            expect_ok(wire, server_error).await?;
            Ok(AuthMethod::Password)
        }
        Backend::Message(Message::AuthenticationMd5Password(body)) => {
            policy.permit(AuthMethod::Md5)?;
            if require_cb {
                return Err(cb_refused("md5"));
            }
            let pw = need_password(config, password)?;
            let hash = md5_hash(config.user().as_bytes(), pw.as_bytes(), body.salt());
            frontend::password_message(hash.as_bytes(), &mut wire.wbuf)
                .map_err(|e| Error::protocol(DURING, e.to_string()))?;
            wire.flush(DURING).await?;
            expect_ok(wire, server_error).await?;
            Ok(AuthMethod::Md5)
        }
        Backend::Message(Message::AuthenticationSasl(body)) => {
            policy.permit(AuthMethod::ScramSha256)?;
            let mechanisms: Vec<String> = body
                .mechanisms()
                .map(|m| Ok(m.to_string()))
                .collect()
                .map_err(|e| Error::protocol(DURING, e.to_string()))?;
            let pw = need_password(config, password)?;
            scram(wire, config, pw, &mechanisms, server_error).await
        }
        Backend::Message(Message::ErrorResponse(body)) => {
            let db = DbError::from_response(&body, DURING)?;
            Err(server_error(db))
        }
        Backend::Message(
            Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential,
        ) => Err(auth_error(
            config,
            "the server asks for GSSAPI, SSPI, Kerberos or SCM authentication, which walstream \
             does not speak; configure scram-sha-256 (or md5) for this role in pg_hba.conf"
                .into(),
        )),
        _ => Err(Error::protocol(
            DURING,
            "a message out of place during authentication",
        )),
    }
}

async fn scram(
    wire: &mut Wire,
    config: &ReplicationConfig,
    password: &str,
    mechanisms: &[String],
    server_error: impl Fn(DbError) -> Error,
) -> Result<AuthMethod, Error> {
    const DURING: &str = "authenticating with SCRAM";
    let offers = |m: &str| mechanisms.iter().any(|o| o == m);
    let cb_hash = match config.channel_binding() {
        ChannelBinding::Disable => None,
        _ => wire.socket.server_end_point_hash(),
    };
    let (mechanism, binding, method) = match cb_hash {
        Some(hash) if offers(sasl::SCRAM_SHA_256_PLUS) => (
            sasl::SCRAM_SHA_256_PLUS,
            sasl::ChannelBinding::tls_server_end_point(hash),
            AuthMethod::ScramSha256Plus,
        ),
        // We could bind but the server does not offer it: say so ('y'), so
        // that a server that does support it detects a downgrade.
        Some(_) if offers(sasl::SCRAM_SHA_256) => (
            sasl::SCRAM_SHA_256,
            sasl::ChannelBinding::unrequested(),
            AuthMethod::ScramSha256,
        ),
        None if offers(sasl::SCRAM_SHA_256) => (
            sasl::SCRAM_SHA_256,
            sasl::ChannelBinding::unsupported(),
            AuthMethod::ScramSha256,
        ),
        _ => {
            return Err(auth_error(
                config,
                format!("the server offers only SASL mechanisms {mechanisms:?}, none of which walstream speaks"),
            ))
        }
    };
    if config.channel_binding() == ChannelBinding::Require && method != AuthMethod::ScramSha256Plus
    {
        let why = if wire.socket.is_tls() {
            "the server does not offer SCRAM-SHA-256-PLUS or its certificate's signature algorithm \
             cannot be bound"
        } else {
            "the connection is not TLS"
        };
        return Err(auth_error(
            config,
            format!("channel_binding=require, but {why}; use sslmode=require or stricter, or lower channel_binding"),
        ));
    }
    let mut exchange = sasl::ScramSha256::new(password.as_bytes(), binding);
    frontend::sasl_initial_response(mechanism, exchange.message(), &mut wire.wbuf)
        .map_err(|e| Error::protocol(DURING, e.to_string()))?;
    wire.flush(DURING).await?;
    match wire.recv(DURING).await? {
        Backend::Message(Message::AuthenticationSaslContinue(body)) => {
            exchange.update(body.data()).map_err(|e| {
                auth_error(
                    config,
                    format!("the server's SCRAM challenge is invalid: {e}"),
                )
            })?;
        }
        Backend::Message(Message::ErrorResponse(body)) => {
            let db = DbError::from_response(&body, DURING)?;
            return Err(server_error(db));
        }
        _ => return Err(Error::protocol(DURING, "expected a SASL challenge")),
    }
    frontend::sasl_response(exchange.message(), &mut wire.wbuf)
        .map_err(|e| Error::protocol(DURING, e.to_string()))?;
    wire.flush(DURING).await?;
    match wire.recv(DURING).await? {
        Backend::Message(Message::AuthenticationSaslFinal(body)) => {
            exchange.finish(body.data()).map_err(|e| {
                auth_error(
                    config,
                    format!(
                        "the server could not prove it knows the password ({e}): it may not be \
                         the server you meant to reach"
                    ),
                )
            })?;
        }
        Backend::Message(Message::ErrorResponse(body)) => {
            let db = DbError::from_response(&body, DURING)?;
            return Err(server_error(db));
        }
        _ => return Err(Error::protocol(DURING, "expected the SASL final message")),
    }
    expect_ok(wire, server_error).await?;
    Ok(method)
}

async fn expect_ok(wire: &mut Wire, server_error: impl Fn(DbError) -> Error) -> Result<(), Error> {
    const DURING: &str = "authenticating";
    match wire.recv(DURING).await? {
        Backend::Message(Message::AuthenticationOk) => Ok(()),
        Backend::Message(Message::ErrorResponse(body)) => {
            let db = DbError::from_response(&body, DURING)?;
            Err(server_error(db))
        }
        _ => Err(Error::protocol(DURING, "expected AuthenticationOk")),
    }
}
