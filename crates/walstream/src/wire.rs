//! The byte level of the replication connection: the socket (TCP, Unix or
//! TLS), message framing with postgres-protocol, and the simple query
//! protocol that replication commands use.
//!
//! postgres-protocol's backend parser does not know CopyBothResponse ('W'),
//! the answer to START_REPLICATION, so [`parse_backend`] frames that one
//! itself and hands everything else to postgres-protocol.
//!
//! Memory follows the bytes that arrived, not the lengths a server
//! announces: [`parse_backend`] waits for a whole message without reserving
//! room for it, [`read_more`] grows the read buffer by at most
//! [`READ_CHUNK`] per read, and a header announcing more than PostgreSQL
//! ever sends in one message ([`MAX_MESSAGE`]) ends the connection.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{DbError, Error};

/// The largest message walstream accepts: PostgreSQL allocates at most
/// 1 GiB for one value, plus room for the message's own headers.
pub(crate) const MAX_MESSAGE: usize = (1 << 30) + (1 << 20);

/// How much room to make in the read buffer before a read: the most it
/// grows by at once.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The connection's byte stream.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Socket {
    /// The channel binding data of a TLS connection's server certificate.
    pub(crate) fn server_end_point_hash(&self) -> Option<Vec<u8>> {
        match self {
            Socket::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|cert| crate::tls::server_end_point_hash(cert)),
            _ => None,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A backend message, or the CopyBothResponse postgres-protocol cannot
/// parse.
pub(crate) enum Backend {
    Message(Message),
    CopyBothResponse,
}

/// Takes one complete backend message off the front of `buf`, or `None` if
/// more bytes are needed. Never panics on what a server sends, and never
/// reserves room for a message before its bytes arrive (postgres-protocol's
/// parser would reserve the announced length at once).
pub(crate) fn parse_backend(buf: &mut BytesMut) -> io::Result<Option<Backend>> {
    let Some(header) = Header::parse(buf)? else {
        return Ok(None);
    };
    let len = usize::try_from(header.len())
        .ok()
        .filter(|len| *len <= MAX_MESSAGE)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a message header announcing {} bytes, more than the 1 GiB PostgreSQL ever \
                     sends in one message",
                    header.len()
                ),
            )
        })?;
    let total = len + 1;
    if buf.len() < total {
        return Ok(None);
    }
    if header.tag() == b'W' {
        // Format and column formats: START_REPLICATION's copy has none that
        // matter (binary, zero columns).
        let _ = buf.split_to(total);
        return Ok(Some(Backend::CopyBothResponse));
    }
    Ok(Message::parse(buf)?.map(Backend::Message))
}

/// Reads what has arrived into `buf`: makes room for [`READ_CHUNK`] more
/// bytes when less than a quarter of that is free, so that the buffer
/// grows with the bytes received. Returns how many were read (0: the peer
/// closed the connection). Cancel-safe.
pub(crate) async fn read_more<R>(reader: &mut R, buf: &mut BytesMut) -> io::Result<usize>
where
    R: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    reader.read_buf(buf).await
}

/// The rows of a simple query, as text.
#[derive(Debug, Default)]
pub(crate) struct QueryResult {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// The only row's value of `column`, or `None` when NULL.
    pub(crate) fn value(&self, column: &str) -> Result<Option<&str>, Error> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| {
                Error::protocol(
                    "reading a command's result",
                    format!("no column {column:?} in {:?}", self.columns),
                )
            })?;
        let row = self
            .rows
            .first()
            .ok_or_else(|| Error::protocol("reading a command's result", "no row"))?;
        Ok(row.get(index).and_then(|v| v.as_deref()))
    }
}

/// A connection at the message level: a socket, its buffers, and what the
/// server told about itself at startup.
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) socket: Socket,
    pub(crate) rbuf: BytesMut,
    pub(crate) wbuf: BytesMut,
    pub(crate) params: HashMap<String, String>,
    pub(crate) backend_pid: i32,
}

impl Wire {
    pub(crate) fn new(socket: Socket) -> Wire {
        Wire {
            socket,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            backend_pid: 0,
        }
    }

    /// Writes out everything buffered in `wbuf`.
    pub(crate) async fn flush(&mut self, during: &'static str) -> Result<(), Error> {
        self.socket
            .write_all(&self.wbuf)
            .await
            .map_err(|e| Error::io(during, e))?;
        self.wbuf.clear();
        self.socket.flush().await.map_err(|e| Error::io(during, e))
    }

    /// The next message that is not a notice or a parameter status (those
    /// are logged and recorded).
    pub(crate) async fn recv(&mut self, during: &'static str) -> Result<Backend, Error> {
        loop {
            match parse_backend(&mut self.rbuf)
                .map_err(|e| Error::protocol(during, e.to_string()))?
            {
                Some(Backend::Message(Message::NoticeResponse(body))) => {
                    if let Ok(notice) = DbError::parse(body.fields()) {
                        tracing::info!(notice = %notice, "postgres notice");
                    }
                }
                Some(Backend::Message(Message::ParameterStatus(body))) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value()) {
                        self.params.insert(name.to_string(), value.to_string());
                    }
                }
                Some(message) => return Ok(message),
                None => {
                    let n = read_more(&mut self.socket, &mut self.rbuf)
                        .await
                        .map_err(|e| Error::io(during, e))?;
                    if n == 0 {
                        return Err(Error::io(
                            during,
                            io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection",
                            ),
                        ));
                    }
                }
            }
        }
    }

    /// Runs one command with the simple query protocol and collects its rows
    /// as text. A server error is returned after ReadyForQuery, so that the
    /// connection stays usable.
    pub(crate) async fn simple_query(
        &mut self,
        sql: &str,
        during: &'static str,
    ) -> Result<QueryResult, Error> {
        frontend::query(sql, &mut self.wbuf)
            .map_err(|e| Error::Config(format!("cannot send {sql:?}: {e}")))?;
        self.flush(during).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.recv(during).await? {
                Backend::Message(Message::RowDescription(body)) => {
                    result.columns = body
                        .fields()
                        .map(|f| Ok(f.name().to_string()))
                        .collect()
                        .map_err(|e| Error::protocol(during, e.to_string()))?;
                }
                Backend::Message(Message::DataRow(body)) => {
                    let buffer = body.buffer();
                    let row = body
                        .ranges()
                        .map(|range| {
                            Ok(range.and_then(|r| {
                                buffer
                                    .get(r)
                                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                            }))
                        })
                        .collect()
                        .map_err(|e| Error::protocol(during, e.to_string()))?;
                    result.rows.push(row);
                }
                Backend::Message(Message::CommandComplete(_))
                | Backend::Message(Message::EmptyQueryResponse) => {}
                Backend::Message(Message::ErrorResponse(body)) => {
                    let db = DbError::from_response(&body, during)?;
                    error = Some(db);
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(db) => Err(Error::server(sql_command(sql), db)),
                        None => Ok(result),
                    };
                }
                Backend::CopyBothResponse => {
                    return Err(Error::protocol(during, "CopyBothResponse to a query"))
                }
                Backend::Message(_) => {
                    return Err(Error::protocol(during, "a message out of place in a query"))
                }
            }
        }
    }

    /// Sends Terminate and closes the socket (best effort).
    pub(crate) async fn terminate(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush("closing the connection").await;
        let _ = self.socket.shutdown().await;
    }
}

/// The first word(s) of a command, for error messages.
pub(crate) fn sql_command(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn copy_both_response_is_framed_by_hand() {
        let mut buf = BytesMut::new();
        // 'W', length 7, format 0, zero columns; then a CopyData 'd'.
        buf.put_u8(b'W');
        buf.put_i32(7);
        buf.put_u8(0);
        buf.put_i16(0);
        buf.put_u8(b'd');
        buf.put_i32(5);
        buf.put_u8(b'k');
        assert!(matches!(
            parse_backend(&mut buf).unwrap(),
            Some(Backend::CopyBothResponse)
        ));
        match parse_backend(&mut buf).unwrap() {
            Some(Backend::Message(Message::CopyData(body))) => assert_eq!(body.data(), b"k"),
            _ => panic!("expected CopyData"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn partial_and_hostile_input_never_panics() {
        let mut partial = BytesMut::from(&b"W\x00\x00\x00\x07\x00"[..]);
        assert!(parse_backend(&mut partial).unwrap().is_none());
        let mut short_len = BytesMut::from(&b"W\x00\x00\x00\x02"[..]);
        assert!(parse_backend(&mut short_len).is_err());
        let mut huge = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
        assert!(parse_backend(&mut huge).is_err());
        let mut unknown = BytesMut::from(&b"?\x00\x00\x00\x04"[..]);
        assert!(parse_backend(&mut unknown).is_err());
    }

    /// A CopyData header announcing `len` bytes of payload, then `body`.
    fn copy_data_header(len: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![b'd'];
        bytes.extend_from_slice(&(len + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_header_announcing_a_huge_message_reserves_nothing_for_it() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&copy_data_header(1 << 30, b"only a few bytes"));
        assert!(parse_backend(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "reserved {} bytes", buf.capacity());
    }

    #[tokio::test]
    async fn the_reader_grows_with_the_bytes_that_arrive_not_the_announced_length() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        let mut wire = Wire::new(Socket::Unix(ours));
        server
            .write_all(&copy_data_header(1 << 30, &[7; 1000]))
            .await
            .unwrap();
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            wire.recv("reading a test message"),
        )
        .await;
        assert!(waiting.is_err(), "the message is not complete yet");
        assert_eq!(wire.rbuf.len(), 1005);
        assert!(
            wire.rbuf.capacity() <= 2 * READ_CHUNK,
            "the buffer holds {} bytes for 1005 received",
            wire.rbuf.capacity()
        );
    }

    #[tokio::test]
    async fn a_message_larger_than_postgres_ever_sends_fails_the_connection() {
        let (ours, mut server) = UnixStream::pair().unwrap();
        let mut wire = Wire::new(Socket::Unix(ours));
        let too_long = u32::try_from(MAX_MESSAGE).unwrap();
        server
            .write_all(&copy_data_header(too_long, b"x"))
            .await
            .unwrap();
        let err = match wire.recv("reading a test message").await {
            Err(e) => e,
            Ok(_) => panic!("an oversized message was accepted"),
        };
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("more than the 1 GiB"), "{err}");
        assert!(wire.rbuf.capacity() < 1 << 20);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..8 {
                match parse_backend(&mut buf) {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }

    #[test]
    fn command_names_are_short() {
        assert_eq!(
            sql_command("CREATE_REPLICATION_SLOT \"s\" LOGICAL pgoutput"),
            "CREATE_REPLICATION_SLOT \"s\""
        );
        assert_eq!(sql_command("IDENTIFY_SYSTEM"), "IDENTIFY_SYSTEM");
    }
}
