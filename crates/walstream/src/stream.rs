//! The replication stream: the frames the server sends after
//! START_REPLICATION, read on the consumer's demand.
//!
//! It owns the read half of the connection. [`ReplicationStream::next`]
//! reads and parses only when the consumer asks, so a slow consumer slows
//! the server (TCP backpressure) instead of filling memory; answering the
//! server meanwhile is the feedback task's job (see `feedback`), which owns
//! the write half. XLogData payloads are `Bytes` slices of the read buffer:
//! no copy, and no pgoutput decoding here.
//!
//! A stream ends with a typed error (see [`Error::is_retryable`]), or with
//! [`ReplicationStream::shutdown`]: last ack, CopyDone, the server's
//! CommandComplete, Terminate.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pgoutput::{Lsn, PgTimestamp};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::error::{DbError, Error};
use crate::feedback::{self, AckHandle, Shared, Stop};
use crate::wire::{parse_backend, read_more, Backend, Socket};

/// One frame of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// WAL data: for pgoutput, one logical replication message.
    XLogData(XLogData),
    /// The server's keepalive: where its WAL ends.
    Keepalive(Keepalive),
}

/// An XLogData message ('w').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Where this message's WAL starts (for pgoutput: a Begin's first LSN, a
    /// change's LSN, a Commit's end LSN).
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when it sent the message.
    pub server_time: PgTimestamp,
    /// The payload: one pgoutput message, undecoded.
    pub data: Bytes,
}

/// A primary keepalive message ('k').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// The server's WAL position: every transaction committed before it has
    /// been sent. With nothing in flight downstream, acking it lets the
    /// server release idle WAL.
    pub wal_end: Lsn,
    /// The server's clock when it sent the keepalive.
    pub server_time: PgTimestamp,
    /// The server wants a reply soon (walstream's feedback task answers).
    pub reply_requested: bool,
}

/// Parses the contents of one CopyData message of the stream.
pub(crate) fn parse_frame(mut data: Bytes) -> Result<Frame, Error> {
    const DURING: &str = "reading the replication stream";
    let Some(&tag) = data.first() else {
        return Err(Error::protocol(DURING, "an empty CopyData message"));
    };
    match tag {
        b'w' if data.len() >= 25 => {
            data.advance(1);
            let wal_start = Lsn::from_u64(data.get_u64());
            let wal_end = Lsn::from_u64(data.get_u64());
            let server_time = PgTimestamp::from_micros(data.get_i64());
            Ok(Frame::XLogData(XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            }))
        }
        b'k' if data.len() >= 18 => {
            data.advance(1);
            let wal_end = Lsn::from_u64(data.get_u64());
            let server_time = PgTimestamp::from_micros(data.get_i64());
            let reply_requested = data.get_u8() != 0;
            Ok(Frame::Keepalive(Keepalive {
                wal_end,
                server_time,
                reply_requested,
            }))
        }
        b'w' | b'k' => Err(Error::protocol(
            DURING,
            format!(
                "a truncated '{}' message of {} bytes",
                char::from(tag),
                data.len()
            ),
        )),
        other => Err(Error::protocol(
            DURING,
            format!("a CopyData message of unknown kind {other:#04x}"),
        )),
    }
}

/// Tuning of a stream, fixed at START_REPLICATION.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    pub(crate) receive_timeout: Duration,
}

/// The frames of one START_REPLICATION, and the way to end it cleanly.
///
/// Dropping it without [`shutdown`](Self::shutdown) closes the connection
/// abruptly (the server notices; nothing acked is lost).
#[derive(Debug)]
pub struct ReplicationStream {
    /// `None` once shut down.
    reader: Option<ReadHalf<Socket>>,
    rbuf: BytesMut,
    shared: Arc<Shared>,
    feedback: Option<JoinHandle<Option<WriteHalf<Socket>>>>,
    stop: Option<oneshot::Sender<Stop>>,
    settings: StreamSettings,
    last_received: Instant,
    /// Fires at `last_received + receive_timeout` or earlier; re-armed
    /// lazily (when it fires early), not on every read, so that the hot
    /// path does not touch the timer wheel.
    silence: Pin<Box<Sleep>>,
    ended: bool,
    slot: String,
}

impl ReplicationStream {
    pub(crate) fn new(
        reader: ReadHalf<Socket>,
        rbuf: BytesMut,
        shared: Arc<Shared>,
        feedback: JoinHandle<Option<WriteHalf<Socket>>>,
        stop: oneshot::Sender<Stop>,
        settings: StreamSettings,
        slot: &str,
    ) -> ReplicationStream {
        ReplicationStream {
            reader: Some(reader),
            rbuf,
            shared,
            feedback: Some(feedback),
            stop: Some(stop),
            silence: Box::pin(tokio::time::sleep(settings.receive_timeout)),
            settings,
            last_received: Instant::now(),
            ended: false,
            slot: slot.to_string(),
        }
    }

    /// A handle to acknowledge LSNs with (one more clone of the handle
    /// [`ReplicationClient::start_replication`](crate::ReplicationClient::start_replication)
    /// returned).
    pub fn ack_handle(&self) -> AckHandle {
        AckHandle::new(self.shared.clone())
    }

    /// The slot this stream reads.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// The next frame. Cancel-safe: dropping the future (in a `select!`)
    /// loses nothing. An error ends the stream; [`Error::is_retryable`] says
    /// whether to reconnect.
    pub async fn next(&mut self) -> Result<Frame, Error> {
        if self.ended {
            return Err(Error::StreamEnded {
                reason: "the stream already ended with an error or a shutdown".into(),
            });
        }
        let result = self.next_inner().await;
        if result.is_err() {
            self.ended = true;
        }
        result
    }

    async fn next_inner(&mut self) -> Result<Frame, Error> {
        const DURING: &str = "reading the replication stream";
        loop {
            while let Some(message) =
                parse_backend(&mut self.rbuf).map_err(|e| Error::protocol(DURING, e.to_string()))?
            {
                if let Some(frame) = self.on_message(message)? {
                    return Ok(frame);
                }
            }
            if let Some(why) = self.shared.failure() {
                return Err(feedback::failure_error(why));
            }
            let Some(reader) = self.reader.as_mut() else {
                return Err(Error::StreamEnded {
                    reason: "the stream was shut down".into(),
                });
            };
            tokio::select! {
                biased;
                read = read_more(reader, &mut self.rbuf) => match read {
                    Ok(0) => {
                        return Err(Error::io(DURING, std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        )))
                    }
                    Ok(_) => self.last_received = Instant::now(),
                    Err(e) => return Err(Error::io(DURING, e)),
                },
                () = self.silence.as_mut() => {
                    let deadline = self.last_received + self.settings.receive_timeout;
                    if Instant::now() >= deadline {
                        return Err(Error::ReceiveTimeout(self.settings.receive_timeout));
                    }
                    self.silence.as_mut().reset(deadline);
                }
            }
        }
    }

    /// One backend message of the copy: a frame, nothing (a notice), or the
    /// end of the stream.
    fn on_message(&mut self, message: Backend) -> Result<Option<Frame>, Error> {
        const DURING: &str = "reading the replication stream";
        match message {
            Backend::Message(Message::CopyData(body)) => {
                let frame = parse_frame(body.into_bytes())?;
                if let Frame::Keepalive(k) = &frame {
                    self.shared.on_keepalive(k.wal_end, k.reply_requested);
                }
                Ok(Some(frame))
            }
            Backend::Message(Message::NoticeResponse(body)) => {
                if let Ok(notice) = DbError::parse(body.fields()) {
                    tracing::info!(slot = %self.slot, notice = %notice, "postgres notice");
                }
                Ok(None)
            }
            Backend::Message(Message::ParameterStatus(_)) => Ok(None),
            Backend::Message(Message::ErrorResponse(body)) => {
                let db = DbError::from_response(&body, DURING)?;
                Err(Error::server(
                    format!("streaming from slot {:?}", self.slot),
                    db,
                ))
            }
            Backend::Message(Message::CopyDone) => Err(Error::StreamEnded {
                reason: "the server ended the copy (CopyDone)".into(),
            }),
            Backend::Message(Message::CommandComplete(body)) => Err(Error::StreamEnded {
                reason: format!(
                    "the server completed the command ({}): it is shutting down",
                    body.tag().unwrap_or("?")
                ),
            }),
            _ => Err(Error::protocol(
                DURING,
                "a message out of place in the copy stream",
            )),
        }
    }

    /// Ends the stream cleanly: sends the latest ack and CopyDone, lets the
    /// server finish (discarding frames still in flight: they were not
    /// acked, so the slot sends them again next time), then terminates the
    /// session. Waits at most `timeout` for the server.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<(), Error> {
        const DURING: &str = "ending the replication stream";
        self.ended = true;
        let (Some(stop), Some(feedback)) = (self.stop.take(), self.feedback.take()) else {
            return Ok(());
        };
        let _ = stop.send(Stop::Graceful);
        let writer = match feedback.await {
            Ok(Some(writer)) => writer,
            Ok(None) => {
                let why = self.shared.failure().unwrap_or_else(|| "it stopped".into());
                return Err(feedback::failure_error(why));
            }
            Err(e) => {
                return Err(Error::io(DURING, std::io::Error::other(e.to_string())));
            }
        };
        let slot = self.slot.clone();
        let Some(mut reader) = self.reader.take() else {
            return Ok(());
        };
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let drain = async {
            loop {
                while let Some(message) =
                    parse_backend(&mut rbuf).map_err(|e| Error::protocol(DURING, e.to_string()))?
                {
                    match message {
                        Backend::Message(Message::ReadyForQuery(_)) => return Ok(true),
                        Backend::Message(Message::ErrorResponse(body)) => {
                            let db = DbError::from_response(&body, DURING)?;
                            return Err(Error::server(
                                format!("ending the stream of slot {slot:?}"),
                                db,
                            ));
                        }
                        // Frames in flight, the server's CopyDone, CommandComplete.
                        _ => {}
                    }
                }
                let n = read_more(&mut reader, &mut rbuf)
                    .await
                    .map_err(|e| Error::io(DURING, e))?;
                if n == 0 {
                    return Ok(false);
                }
            }
        };
        let finished = tokio::time::timeout(timeout, drain).await;
        let mut socket = reader.unsplit(writer);
        match finished {
            Ok(Ok(true)) => {
                let mut buf = BytesMut::new();
                frontend::terminate(&mut buf);
                let _ = socket.write_all(&buf).await;
                let _ = socket.shutdown().await;
                tracing::debug!(slot = %self.slot, "replication stream shut down");
                Ok(())
            }
            Ok(Ok(false)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::warn!(slot = %self.slot, ?timeout, "the server did not end the stream in time; closing the connection");
                Ok(())
            }
        }
    }
}

impl Drop for ReplicationStream {
    fn drop(&mut self) {
        if let Some(feedback) = self.feedback.take() {
            feedback.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn xlogdata_and_keepalive_parse_with_a_zero_copy_payload() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(0x10);
        w.put_u64(0x20);
        w.put_i64(1_000_000);
        w.put_slice(b"Cpayload");
        let w = w.freeze();
        match parse_frame(w.clone()).unwrap() {
            Frame::XLogData(x) => {
                assert_eq!(x.wal_start, Lsn::from_u64(0x10));
                assert_eq!(x.wal_end, Lsn::from_u64(0x20));
                assert_eq!(x.server_time, PgTimestamp::from_micros(1_000_000));
                assert_eq!(&x.data[..], b"Cpayload");
                assert_eq!(x.data.as_ptr(), w[25..].as_ptr(), "a slice, not a copy");
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x30);
        k.put_i64(-5);
        k.put_u8(1);
        assert_eq!(
            parse_frame(k.freeze()).unwrap(),
            Frame::Keepalive(Keepalive {
                wal_end: Lsn::from_u64(0x30),
                server_time: PgTimestamp::from_micros(-5),
                reply_requested: true,
            })
        );
    }

    #[test]
    fn truncated_or_unknown_frames_are_protocol_errors() {
        for bad in [&b""[..], b"w\x00\x01", b"k\x00", b"x12345678"] {
            let err = parse_frame(Bytes::copy_from_slice(bad)).unwrap_err();
            assert!(matches!(err, Error::Protocol { .. }), "{err}");
            assert!(!err.is_retryable());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = parse_frame(Bytes::from(bytes));
        }
    }
}
