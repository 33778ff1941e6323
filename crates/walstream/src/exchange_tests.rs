//! What both connections send when a server asks them to authenticate,
//! seen from a fake PostgreSQL server. The server declines TLS, reads the startup packet, asks for one authentication
//! method, answers the client's first reply (or, for trust, the silence)
//! with a wrong-password error, and records every byte the client sent
//! after the request. The integration tests prove the same rules against
//! real servers; these show what goes on the wire.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::auth::AuthMethod;
use crate::config::ReplicationConfig;
use crate::error::Error;
use crate::{connect, control};

/// The request code of SSLRequest.
const SSL_REQUEST: i32 = 80_877_103;

/// A server that serves one connection.
#[derive(Debug)]
pub(crate) struct FakeServer {
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<Vec<u8>>>,
}

impl FakeServer {
    /// Listens on 127.0.0.1 and asks the first client for `method`.
    pub(crate) async fn asking(method: AuthMethod) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut client, _) = listener.accept().await?;
            serve(&mut client, method).await
        });
        FakeServer { addr, task }
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every byte the client sent after the authentication request.
    pub(crate) async fn received(self) -> Vec<u8> {
        self.task.await.unwrap().unwrap()
    }
}

async fn read_packet(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = client.read_i32().await?;
    let mut body = vec![0; usize::try_from(len - 4).unwrap_or(0)];
    client.read_exact(&mut body).await?;
    Ok(body)
}

async fn serve(client: &mut TcpStream, method: AuthMethod) -> std::io::Result<Vec<u8>> {
    // SSLRequest (sslmode=prefer) is declined, then the startup packet.
    while read_packet(client).await?.get(..4) == Some(&SSL_REQUEST.to_be_bytes()[..]) {
        client.write_all(b"N").await?;
    }
    let mut request = BytesMut::new();
    request.put_u8(b'R');
    let (code, extra): (i32, &[u8]) = match method {
        AuthMethod::Trust => (0, b""),
        AuthMethod::Password => (3, b""),
        AuthMethod::Md5 => (5, b"salt"),
        AuthMethod::ScramSha256 | AuthMethod::ScramSha256Plus => (10, b"SCRAM-SHA-256\0\0"),
    };
    request.put_i32(8 + i32::try_from(extra.len()).unwrap_or(0));
    request.put_i32(code);
    request.put_slice(extra);
    client.write_all(&request).await?;
    // From here on the client may hang up at any moment: keep what came.
    let mut received = Vec::new();
    if method == AuthMethod::Trust {
        let _ = client.write_all(&password_failed()).await;
    } else {
        let mut first = vec![0; 64 * 1024];
        let n = client.read(&mut first).await.unwrap_or(0);
        received.extend_from_slice(first.get(..n).unwrap_or_default());
        if n > 0 {
            let _ = client.write_all(&password_failed()).await;
        }
    }
    let _ = client.read_to_end(&mut received).await;
    Ok(received)
}

/// FATAL 28P01, as a server answers a wrong password.
fn password_failed() -> Vec<u8> {
    let mut body = BytesMut::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "28P01"),
        (b'M', "password authentication failed for user \"relay\""),
    ] {
        body.put_u8(field);
        body.put_slice(value.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut message = BytesMut::new();
    message.put_u8(b'E');
    message.put_i32(4 + i32::try_from(body.len()).unwrap_or(0));
    message.put_slice(&body);
    message.to_vec()
}

const PASSWORD: &str = "Secret-pw";

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Connects the replication and then the control connection, each to a
/// fresh server asking for `method`, with the settings `settings` writes
/// for the server's address; returns each one's error and what its server
/// received after asking.
pub(crate) async fn answers_to(
    method: AuthMethod,
    settings: impl Fn(SocketAddr) -> String,
) -> [(Error, Vec<u8>); 2] {
    let mut results = Vec::new();
    for control in [false, true] {
        let server = FakeServer::asking(method).await;
        let written = settings(server.addr());
        let config = ReplicationConfig::parse_with_env(&written, |_| None).unwrap();
        let err = if control {
            control::connect_control(&config).await.err()
        } else {
            connect::connect(&config).await.err()
        };
        let err = err.expect("the fake server lets nobody in");
        results.push((err, server.received().await));
    }
    results.try_into().unwrap()
}

/// [`answers_to`] with a URL for role relay, password [`PASSWORD`], and
/// `params`.
async fn answers(method: AuthMethod, params: &str) -> [(Error, Vec<u8>); 2] {
    answers_to(method, |addr| {
        format!("postgres://relay:{PASSWORD}@{addr}/db?{params}")
    })
    .await
}

#[tokio::test]
async fn a_cleartext_request_over_plain_tcp_gets_no_answer_on_either_connection() {
    for sslmode in ["disable", "prefer"] {
        for (err, received) in answers(AuthMethod::Password, &format!("sslmode={sslmode}")).await {
            assert!(received.is_empty(), "the client answered: {received:?}");
            assert!(matches!(err, Error::Auth { .. }), "{err}");
            assert!(!err.is_retryable());
            assert!(err.to_string().contains("require_auth=password"), "{err}");
        }
    }
}

#[tokio::test]
async fn require_auth_password_lets_the_cleartext_password_go() {
    for (err, received) in answers(AuthMethod::Password, "require_auth=password").await {
        assert_eq!(received.first(), Some(&b'p'), "{received:?}");
        assert!(holds(&received, PASSWORD));
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    }
}

#[tokio::test]
async fn a_method_require_auth_does_not_allow_gets_no_answer() {
    for method in [AuthMethod::Md5, AuthMethod::Password, AuthMethod::Trust] {
        for (err, received) in answers(method, "require_auth=scram-sha-256").await {
            assert!(received.is_empty(), "{method:?}: the client answered");
            assert!(matches!(err, Error::Auth { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("which require_auth=scram-sha-256 does not allow"),
                "{err}"
            );
        }
    }
    for (_, received) in answers(AuthMethod::ScramSha256, "require_auth=scram-sha-256").await {
        assert!(
            holds(&received, "SCRAM-SHA-256"),
            "the client answers SCRAM"
        );
    }
}

#[tokio::test]
async fn negation_lists_refuse_what_they_name_and_allow_the_rest() {
    for (err, received) in answers(AuthMethod::Md5, "require_auth=!md5,!password").await {
        assert!(received.is_empty());
        assert!(
            err.to_string().contains("remove !md5 from require_auth"),
            "{err}"
        );
    }
    for (err, received) in answers(AuthMethod::ScramSha256, "require_auth=!md5,!password").await {
        assert!(holds(&received, "SCRAM-SHA-256"));
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    }
    for (err, received) in answers(AuthMethod::Md5, "require_auth=!none").await {
        assert_eq!(received.first(), Some(&b'p'), "an md5 hash is sent");
        assert!(!holds(&received, PASSWORD), "never the password itself");
        assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    }
}
