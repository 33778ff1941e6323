//! The control connection's authentication guard.
//!
//! tokio-postgres answers whatever authentication request a server sends:
//! it knows nothing of `require_auth` and sends a cleartext password over
//! plain TCP. So the control connection runs tokio-postgres over a link
//! walstream opened itself (socket and TLS exactly as for the replication
//! connection), wrapped in a [`Guarded`] stream. The guard reads the
//! server's first message as it passes; when that is an authentication
//! request the [`AuthPolicy`] refuses, the read fails, so tokio-postgres
//! never sees the request and sends nothing in answer, and the refusal is
//! kept for `connect_control` to return.
//!
//! Over TLS, tokio-postgres is told `sslnegotiation=direct`, and
//! [`Established`] (its TLS hook) hands it the guarded stream unchanged,
//! with the channel binding data of walstream's TLS session, so that
//! SCRAM-SHA-256-PLUS binds to the channel as on the replication
//! connection.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use crate::auth::{AuthMethod, AuthPolicy};
use crate::error::Error;
use crate::wire::Socket;

/// The authentication request codes of an `R` message.
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;

/// The start of the server's first message: its tag, length and, for an
/// authentication request (`R`), the request's code.
#[derive(Debug)]
enum Watch {
    Reading { head: [u8; 9], filled: usize },
    Done,
}

impl Watch {
    fn new() -> Watch {
        Watch::Reading {
            head: [0; 9],
            filled: 0,
        }
    }

    /// Looks at bytes the server sent. Returns the method the server asks
    /// for once the first message shows itself to be an authentication
    /// request walstream must check; after the first message it looks at
    /// nothing more. Other requests (GSSAPI, SSPI...) and an ErrorResponse
    /// pass: tokio-postgres refuses or reports those itself.
    fn feed(&mut self, bytes: &[u8]) -> Option<AuthMethod> {
        let Watch::Reading { head, filled } = self else {
            return None;
        };
        for (slot, byte) in head.iter_mut().skip(*filled).zip(bytes) {
            *slot = *byte;
            *filled += 1;
        }
        let [tag, l0, l1, l2, l3, c0, c1, c2, c3] = *head;
        if *filled >= 1 && tag != b'R' {
            *self = Watch::Done;
            return None;
        }
        if *filled < head.len() {
            return None;
        }
        *self = Watch::Done;
        if i32::from_be_bytes([l0, l1, l2, l3]) < 8 {
            // Too short to hold a request: tokio-postgres refuses it.
            return None;
        }
        match i32::from_be_bytes([c0, c1, c2, c3]) {
            AUTH_OK => Some(AuthMethod::Trust),
            AUTH_CLEARTEXT => Some(AuthMethod::Password),
            AUTH_MD5 => Some(AuthMethod::Md5),
            AUTH_SASL => Some(AuthMethod::ScramSha256),
            _ => None,
        }
    }
}

/// Where the guard leaves its refusal for the connecting code.
pub(crate) type Refusal = Arc<Mutex<Option<Error>>>;

/// A link whose first authentication request is checked before
/// tokio-postgres may answer it.
#[derive(Debug)]
pub(crate) struct Guarded {
    socket: Socket,
    watch: Watch,
    policy: AuthPolicy,
    refusal: Refusal,
}

impl Guarded {
    /// Guards `socket` with `policy`; the returned slot holds the refusal,
    /// if the guard refused the server's request.
    pub(crate) fn new(socket: Socket, policy: AuthPolicy) -> (Guarded, Refusal) {
        let refusal = Refusal::default();
        let guarded = Guarded {
            socket,
            watch: Watch::new(),
            policy,
            refusal: refusal.clone(),
        };
        (guarded, refusal)
    }

    /// Whether the link is TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.socket.is_tls()
    }
}

/// Takes the guard's refusal out of its slot.
pub(crate) fn take_refusal(refusal: &Refusal) -> Option<Error> {
    refusal.lock().ok().and_then(|mut slot| slot.take())
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.socket).poll_read(cx, buf))?;
        let arrived = buf.filled().get(before..).unwrap_or_default();
        let Some(method) = this.watch.feed(arrived) else {
            return Poll::Ready(Ok(()));
        };
        match this.policy.permit(method) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(refused) => {
                // tokio-postgres never sees the request.
                buf.set_filled(before);
                if let Ok(mut slot) = this.refusal.lock() {
                    *slot = Some(refused);
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "walstream refused the server's authentication request (require_auth)",
                )))
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

impl TlsStream for Guarded {
    fn channel_binding(&self) -> ChannelBinding {
        match self.socket.server_end_point_hash() {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// tokio-postgres's TLS hook for a link on which walstream already
/// negotiated TLS: it returns the stream unchanged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Established;

impl TlsConnect<Guarded> for Established {
    type Stream = Guarded;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Guarded>>;

    fn connect(self, stream: Guarded) -> Self::Future {
        std::future::ready(Ok(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: i32) -> Vec<u8> {
        let mut bytes = vec![b'R'];
        bytes.extend_from_slice(&8_i32.to_be_bytes());
        bytes.extend_from_slice(&code.to_be_bytes());
        bytes
    }

    #[test]
    fn the_first_authentication_request_is_seen_however_the_bytes_are_split() {
        for (code, method) in [
            (AUTH_OK, AuthMethod::Trust),
            (AUTH_CLEARTEXT, AuthMethod::Password),
            (AUTH_MD5, AuthMethod::Md5),
            (AUTH_SASL, AuthMethod::ScramSha256),
        ] {
            let bytes = request(code);
            for split in 0..=bytes.len() {
                let (a, b) = bytes.split_at(split);
                let mut watch = Watch::new();
                let seen = watch.feed(a).or_else(|| watch.feed(b));
                assert_eq!(seen, Some(method), "code {code} split at {split}");
                assert_eq!(watch.feed(&request(AUTH_CLEARTEXT)), None, "only the first");
            }
        }
    }

    #[test]
    fn errors_and_requests_walstream_does_not_speak_pass_unchecked() {
        let mut watch = Watch::new();
        assert_eq!(watch.feed(b"E\x00\x00\x00\x10SFATAL"), None);
        assert_eq!(watch.feed(&request(AUTH_CLEARTEXT)), None);
        let mut gss = Watch::new();
        assert_eq!(gss.feed(&request(7)), None);
        let mut short = Watch::new();
        assert_eq!(short.feed(b"R\x00\x00\x00\x04R\x00\x00\x00"), None);
    }
}
