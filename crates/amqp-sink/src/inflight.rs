//! The publishes lapin has in hand: one future per message (publish, then
//! wait for its confirm), started in order and polled only when woken.
//!
//! Why not `buffer_unordered` or a `FuturesOrdered`: lapin assigns the
//! delivery tag and queues the frames when a `basic_publish` future is
//! *first polled*, so send order would follow polling order. Here each
//! future is polled once the moment it is created, in sequence order, and
//! never awaited by the publishing path: no hand-off to lapin's I/O thread
//! per message, and the publishing order is the sequence order.
//!
//! Each future gets its own waker, which records its sequence number in a
//! ready list, so a round polls only what lapin resolved (no O(window) scan)
//! and sees every resolution, whatever the order. No `PublisherConfirm` is
//! ever dropped unresolved while its channel lives (lapin would keep those
//! until `wait_for_confirms`).
//!
//! [`barrier`] is what makes return matching sound: lapin resolves all the
//! confirms of one ack frame while holding its acknowledgement lock, and
//! `Channel::wait_for_confirms` takes that same lock before anything else.
//! Polling it once therefore returns only after lapin finished the frame
//! being handled, so every confirm of a frame seen before the barrier (and
//! the return lapin attached to any of them) is in the ready list after
//! it. (This relies on lapin 4.12's locking; `tests/sink/returns.rs` exercises
//! it with interleaved unroutable messages and a large window.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::{Channel, Confirmation};
use tokio::sync::Notify;

use crate::message::Prepared;
use crate::outcome::Seq;

type ConfirmFuture = Pin<Box<dyn Future<Output = lapin::Result<Confirmation>> + Send>>;

/// What a round learned about one message.
pub(crate) type Resolution = (Seq, lapin::Result<Confirmation>);

/// The list of woken futures, and the wake-up of the driver.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    seqs: Mutex<Vec<Seq>>,
    notify: Notify,
}

impl Ready {
    /// Resolves when some future was woken (or a round was requested).
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

struct SeqWaker {
    seq: Seq,
    ready: Arc<Ready>,
}

impl Wake for SeqWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Runs on lapin's I/O thread, inside its locks: push and notify only.
        self.ready
            .seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.seq);
        self.ready.notify.notify_one();
    }
}

/// The message futures of one channel.
pub(crate) struct InFlight {
    ready: Arc<Ready>,
    futures: HashMap<Seq, (ConfirmFuture, Waker)>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("futures", &self.futures.len())
            .finish()
    }
}

impl InFlight {
    pub(crate) fn new() -> InFlight {
        InFlight {
            ready: Arc::default(),
            futures: HashMap::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.futures.is_empty()
    }

    /// Hands the message to lapin now (frames queued, delivery tag taken);
    /// returns the result if it is already known (e.g. the channel is
    /// closed).
    pub(crate) fn publish(
        &mut self,
        channel: &Arc<Channel>,
        seq: Seq,
        message: Prepared,
    ) -> Option<lapin::Result<Confirmation>> {
        let channel = Arc::clone(channel);
        let Prepared {
            exchange,
            routing_key,
            body,
            properties,
            ..
        } = message;
        let mut future: ConfirmFuture = Box::pin(async move {
            let confirm = channel
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &body,
                    properties,
                )
                .await?;
            confirm.await
        });
        let waker = Waker::from(Arc::new(SeqWaker {
            seq,
            ready: Arc::clone(&self.ready),
        }));
        match future.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => {
                self.futures.insert(seq, (future, waker));
                None
            }
        }
    }

    /// What to wait on for woken futures (a handle, so that waiting does
    /// not borrow the futures).
    pub(crate) fn ready(&self) -> Arc<Ready> {
        Arc::clone(&self.ready)
    }

    /// Makes the next [`woken`](Self::woken) return at once (another round
    /// is needed).
    pub(crate) fn wake_again(&self) {
        self.ready.notify.notify_one();
    }

    /// Polls every woken future; returns those that finished.
    pub(crate) fn poll_woken(&mut self) -> Vec<Resolution> {
        let woken = std::mem::take(&mut *self.ready.seqs.lock().unwrap_or_else(|e| e.into_inner()));
        let mut done = Vec::new();
        for seq in woken {
            let Some((future, waker)) = self.futures.get_mut(&seq) else {
                continue;
            };
            if let Poll::Ready(result) = future.as_mut().poll(&mut Context::from_waker(waker)) {
                self.futures.remove(&seq);
                done.push((seq, result));
            }
        }
        done
    }

    /// Drops every future (the channel is gone).
    pub(crate) fn clear(&mut self) {
        self.futures.clear();
        self.ready
            .seqs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Waits until lapin has finished handling the broker frame it may be in
/// the middle of (see the module documentation). Returns any returned
/// message lapin could not attach to a confirm.
pub(crate) fn barrier(channel: &Channel) -> Vec<BasicReturnMessage> {
    let mut wait = std::pin::pin!(channel.wait_for_confirms());
    match wait.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(returned)) => returned,
        Poll::Ready(Err(_)) | Poll::Pending => Vec::new(),
    }
}
