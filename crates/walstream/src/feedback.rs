//! Feedback: the acknowledgements that flow back to PostgreSQL.
//!
//! It owns the [`AckHandle`] the consumer calls with "everything up to this
//! LSN is durable downstream", and the feedback task that turns acks into
//! standby status updates. The task owns the connection's write half and its
//! own timer, so nothing the consumer does (reading slowly, not reading at
//! all while a downstream is slow) can stop it from answering the server: a
//! walsender that hears nothing for `wal_sender_timeout` kills the stream,
//! and the slot then replays everything since the last flush.
//!
//! When it sends (decided by [`FeedbackState`], pure and tested alone):
//! - when the ack advances, at most once per `ack_coalesce`;
//! - at once when a keepalive asks for a reply;
//! - every `status_interval` (min(1 s, wal_sender_timeout / 2)), asking the
//!   server to reply, so that an idle stream still learns the server's
//!   position (keepalives), which the consumer may ack when idle.
//!
//! The flush position sent never goes backwards: acks below the current one
//! are ignored, and the first position is the slot's confirmed_flush_lsn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use pgoutput::{Lsn, PgTimestamp};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::error::Error;

/// What the stream and the feedback task share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The highest LSN the consumer acked (never lower than the start).
    acked: AtomicU64,
    /// The flush position last sent to the server.
    flushed: AtomicU64,
    /// The highest WAL end the server reported in a keepalive.
    server_wal_end: AtomicU64,
    /// Wakes the task when `acked` advances.
    ack_advanced: Notify,
    /// Wakes the task when a keepalive asks for a reply.
    reply_requested: Notify,
    /// Set once if the task fails; the reader checks it before each read.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    slot: String,
}

impl Shared {
    pub(crate) fn new(slot: &str, start: Lsn) -> Shared {
        Shared {
            acked: AtomicU64::new(start.as_u64()),
            flushed: AtomicU64::new(0),
            server_wal_end: AtomicU64::new(0),
            ack_advanced: Notify::new(),
            reply_requested: Notify::new(),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            slot: slot.to_string(),
        }
    }

    pub(crate) fn acked(&self) -> Lsn {
        Lsn::from_u64(self.acked.load(Ordering::Acquire))
    }

    /// A keepalive arrived; `reply` if it asks for an answer.
    pub(crate) fn on_keepalive(&self, wal_end: Lsn, reply: bool) {
        self.server_wal_end
            .fetch_max(wal_end.as_u64(), Ordering::AcqRel);
        if reply {
            self.reply_requested.notify_one();
        }
    }

    /// Why the feedback task failed, if it did (one atomic load when not).
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    fn fail(&self, why: String) {
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(why);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// Acknowledges LSNs to the server. Cheap to clone and to call: `ack` is an
/// atomic max and a wake-up, never a wait.
#[derive(Debug, Clone)]
pub struct AckHandle {
    shared: Arc<Shared>,
}

impl AckHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> AckHandle {
        AckHandle { shared }
    }

    /// Everything up to `lsn` is durable downstream: the server may release
    /// that WAL, and a stream started later resumes after it. For pgoutput,
    /// ack a transaction's commit `end_lsn` once all its messages are
    /// confirmed, or, with nothing in flight, a keepalive's `wal_end`.
    /// An LSN at or below the current ack is ignored.
    pub fn ack(&self, lsn: Lsn) {
        let previous = self.shared.acked.fetch_max(lsn.as_u64(), Ordering::AcqRel);
        if lsn.as_u64() > previous {
            self.shared.ack_advanced.notify_one();
        }
    }

    /// The highest LSN acked so far (at least the stream's start position).
    pub fn acked(&self) -> Lsn {
        self.shared.acked()
    }

    /// The flush position last sent to the server (what
    /// `pg_replication_slots.confirmed_flush_lsn` becomes).
    pub fn flushed(&self) -> Lsn {
        Lsn::from_u64(self.shared.flushed.load(Ordering::Acquire))
    }

    /// The latest WAL end a keepalive reported (0/0 before the first). Safe
    /// to ack only once every frame read before that keepalive is durable:
    /// use the `Keepalive` frames in stream order for that.
    pub fn server_wal_end(&self) -> Lsn {
        Lsn::from_u64(self.shared.server_wal_end.load(Ordering::Acquire))
    }
}

/// When to send, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusUpdate {
    /// Written, flushed and applied position (all the same: the consumer's
    /// ack).
    pub(crate) flush: Lsn,
    /// Ask the server to answer with a keepalive.
    pub(crate) reply_requested: bool,
}

/// The feedback policy, without I/O: fed the time and the current ack, it
/// says when to wake and what to send.
#[derive(Debug, Clone)]
pub(crate) struct FeedbackState {
    sent_flush: Lsn,
    last_sent: Option<Instant>,
    reply_pending: bool,
    status_interval: Duration,
    ack_coalesce: Duration,
}

impl FeedbackState {
    pub(crate) fn new(status_interval: Duration, ack_coalesce: Duration) -> FeedbackState {
        FeedbackState {
            sent_flush: Lsn::ZERO,
            last_sent: None,
            reply_pending: false,
            status_interval,
            ack_coalesce,
        }
    }

    /// A keepalive asked for a reply: answer at the next poll.
    pub(crate) fn on_reply_requested(&mut self) {
        self.reply_pending = true;
    }

    /// The next time `poll` may have something to send.
    pub(crate) fn next_wakeup(&self, now: Instant, acked: Lsn) -> Instant {
        let Some(last) = self.last_sent else {
            return now;
        };
        if self.reply_pending {
            return now;
        }
        let periodic = last + self.status_interval;
        if acked > self.sent_flush {
            periodic.min(last + self.ack_coalesce)
        } else {
            periodic
        }
    }

    /// The update to send now, if any.
    pub(crate) fn poll(&mut self, now: Instant, acked: Lsn) -> Option<StatusUpdate> {
        let flush = acked.max(self.sent_flush);
        let periodic_due = self
            .last_sent
            .is_none_or(|last| now >= last + self.status_interval);
        let ack_due = flush > self.sent_flush
            && self
                .last_sent
                .is_none_or(|last| now >= last + self.ack_coalesce);
        if !(self.reply_pending || periodic_due || ack_due) {
            return None;
        }
        self.reply_pending = false;
        self.last_sent = Some(now);
        self.sent_flush = flush;
        Some(StatusUpdate {
            flush,
            reply_requested: periodic_due,
        })
    }

    /// The final update at shutdown: the latest ack, no reply wanted.
    pub(crate) fn last(&mut self, acked: Lsn) -> StatusUpdate {
        self.sent_flush = acked.max(self.sent_flush);
        StatusUpdate {
            flush: self.sent_flush,
            reply_requested: false,
        }
    }
}

/// Appends a Standby status update ('r') in a CopyData message.
pub(crate) fn encode_status_update(update: StatusUpdate, now: SystemTime, out: &mut BytesMut) {
    let position = update.flush.as_u64();
    out.put_u8(b'd');
    out.put_i32(4 + 1 + 8 + 8 + 8 + 8 + 1);
    out.put_u8(b'r');
    out.put_u64(position); // written
    out.put_u64(position); // flushed
    out.put_u64(position); // applied
    out.put_i64(PgTimestamp::from_system_time(now).as_micros());
    out.put_u8(u8::from(update.reply_requested));
}

/// How the feedback task was told to stop.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Send the last ack and CopyDone, then hand back the writer.
    Graceful,
}

/// The feedback task: runs until told to stop or the connection fails.
/// Returns the writer on a graceful stop so the stream can end the session.
pub(crate) async fn run<W>(
    mut writer: W,
    shared: Arc<Shared>,
    mut state: FeedbackState,
    mut stop: oneshot::Receiver<Stop>,
) -> Option<W>
where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64);
    loop {
        let wake = state.next_wakeup(Instant::now(), shared.acked());
        tokio::select! {
            biased;
            request = &mut stop => {
                if request.is_err() {
                    // The stream is gone without a shutdown.
                    return None;
                }
                let update = state.last(shared.acked());
                encode_status_update(update, SystemTime::now(), &mut buf);
                postgres_protocol::message::frontend::copy_done(&mut buf);
                let sent = async {
                    writer.write_all(&buf).await?;
                    writer.flush().await
                }
                .await;
                return match sent {
                    Ok(()) => {
                        shared.flushed.store(update.flush.as_u64(), Ordering::Release);
                        tracing::debug!(slot = %shared.slot, flush = %update.flush, "sent final status update and CopyDone");
                        Some(writer)
                    }
                    Err(e) => {
                        shared.fail(format!("sending the final status update: {e}"));
                        None
                    }
                };
            }
            () = shared.reply_requested.notified() => state.on_reply_requested(),
            () = shared.ack_advanced.notified() => {}
            () = tokio::time::sleep_until(wake) => {}
        }
        if let Some(update) = state.poll(Instant::now(), shared.acked()) {
            buf.clear();
            encode_status_update(update, SystemTime::now(), &mut buf);
            let sent = async {
                writer.write_all(&buf).await?;
                writer.flush().await
            }
            .await;
            if let Err(e) = sent {
                shared.fail(format!("sending a standby status update: {e}"));
                return None;
            }
            buf.clear();
            shared
                .flushed
                .store(update.flush.as_u64(), Ordering::Release);
            tracing::trace!(slot = %shared.slot, flush = %update.flush, reply = update.reply_requested, "sent standby status update");
        }
    }
}

/// The error a reader reports when the feedback task failed.
pub(crate) fn failure_error(why: String) -> Error {
    Error::io(
        "sending feedback to the server",
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, why),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: Duration = Duration::from_secs(1);
    const COALESCE: Duration = Duration::from_millis(100);

    fn lsn(n: u64) -> Lsn {
        Lsn::from_u64(n)
    }

    #[test]
    fn first_poll_reports_the_start_and_asks_for_a_reply() {
        let t0 = Instant::now();
        let mut s = FeedbackState::new(SEC, COALESCE);
        assert_eq!(s.next_wakeup(t0, lsn(10)), t0);
        assert_eq!(
            s.poll(t0, lsn(10)),
            Some(StatusUpdate {
                flush: lsn(10),
                reply_requested: true
            })
        );
        assert_eq!(s.poll(t0, lsn(10)), None);
        assert_eq!(s.next_wakeup(t0, lsn(10)), t0 + SEC);
    }

    #[test]
    fn acks_are_coalesced_and_the_timer_asks_for_replies() {
        let t0 = Instant::now();
        let mut s = FeedbackState::new(SEC, COALESCE);
        s.poll(t0, lsn(1));
        // An ack right after a send waits for the coalescing window.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(s.poll(t1, lsn(5)), None);
        assert_eq!(s.next_wakeup(t1, lsn(7)), t0 + COALESCE);
        let t2 = t0 + COALESCE;
        assert_eq!(
            s.poll(t2, lsn(7)),
            Some(StatusUpdate {
                flush: lsn(7),
                reply_requested: false
            })
        );
        // Nothing new: the next update is the timer's, asking for a reply.
        assert_eq!(s.next_wakeup(t2, lsn(7)), t2 + SEC);
        assert_eq!(s.poll(t2 + SEC / 2, lsn(7)), None);
        assert_eq!(
            s.poll(t2 + SEC, lsn(7)),
            Some(StatusUpdate {
                flush: lsn(7),
                reply_requested: true
            })
        );
    }

    #[test]
    fn a_keepalive_asking_for_a_reply_is_answered_at_once() {
        let t0 = Instant::now();
        let mut s = FeedbackState::new(SEC, COALESCE);
        s.poll(t0, lsn(3));
        s.on_reply_requested();
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(s.next_wakeup(t1, lsn(3)), t1);
        assert_eq!(
            s.poll(t1, lsn(3)),
            Some(StatusUpdate {
                flush: lsn(3),
                reply_requested: false
            })
        );
    }

    #[test]
    fn ack_handle_ignores_lower_acks() {
        let shared = Arc::new(Shared::new("s", lsn(100)));
        let handle = AckHandle::new(shared);
        handle.ack(lsn(50));
        assert_eq!(handle.acked(), lsn(100));
        handle.ack(lsn(200));
        handle.ack(lsn(150));
        assert_eq!(handle.acked(), lsn(200));
    }

    #[test]
    fn status_update_has_the_documented_layout() {
        let mut out = BytesMut::new();
        let update = StatusUpdate {
            flush: lsn(0x16_B374_D848),
            reply_requested: true,
        };
        encode_status_update(update, SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        assert_eq!(&out[6..14], &0x16_B374_D848u64.to_be_bytes());
        assert_eq!(&out[14..22], &0x16_B374_D848u64.to_be_bytes());
        assert_eq!(&out[22..30], &0x16_B374_D848u64.to_be_bytes());
        assert_eq!(&out[30..38], &(-946_684_800_000_000i64).to_be_bytes());
        assert_eq!(out[38], 1);
    }

    proptest! {
        /// Whatever the order of acks, replies and clock ticks, the flush
        /// position sent never goes backwards and never passes the ack.
        #[test]
        fn flush_sent_never_goes_backwards(
            events in proptest::collection::vec((0u64..1000, 0u64..300, any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut s = FeedbackState::new(SEC, COALESCE);
            let mut now = t0;
            let mut acked = 0u64;
            let mut last_sent = 0u64;
            for (ack, step_ms, reply) in events {
                acked = acked.max(ack);
                now += Duration::from_millis(step_ms);
                if reply {
                    s.on_reply_requested();
                }
                prop_assert!(s.next_wakeup(now, lsn(acked)) >= t0);
                if let Some(update) = s.poll(now, lsn(acked)) {
                    prop_assert!(update.flush.as_u64() >= last_sent);
                    prop_assert!(update.flush.as_u64() <= acked);
                    last_sent = update.flush.as_u64();
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_answers_on_its_own_timer_while_nobody_reads() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let shared = Arc::new(Shared::new("s", lsn(42)));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            client,
            shared.clone(),
            FeedbackState::new(SEC, COALESCE),
            stop_rx,
        ));
        // Nobody calls anything for 5 s: the task still sends every second.
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        let mut got = vec![0u8; 64 * 1024];
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut got)
            .await
            .unwrap();
        assert_eq!(n % 39, 0);
        assert_eq!(n / 39, 6, "one at start, then one per second");
        AckHandle::new(shared.clone()).ack(lsn(99));
        stop_tx.send(Stop::Graceful).unwrap();
        assert!(task.await.unwrap().is_some());
        let n = tokio::io::AsyncReadExt::read(&mut server, &mut got)
            .await
            .unwrap();
        // The ack (maybe its own update first), then the final one and CopyDone.
        assert!(n >= 39 + 5, "{n}");
        assert_eq!(&got[n - 5..n], &[b'c', 0, 0, 0, 4]);
        assert_eq!(&got[n - 5 - 39 + 6..n - 5 - 39 + 14], &99u64.to_be_bytes());
        assert_eq!(AckHandle::new(shared).flushed(), lsn(99));
    }
}
