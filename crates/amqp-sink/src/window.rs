//! The in-flight window: how many messages, and how many bytes, may be
//! published and not yet reported to the caller.
//!
//! Two semaphores: one permit per message, one per byte (a message heavier
//! than the whole byte window takes all of it, so it still goes out, alone).
//! [`crate::Publisher::publish`] takes the permits and waits only when the
//! window is full; they come back when the caller receives the message's
//! outcome (see [`crate::Outcomes`]).

use tokio::sync::{AcquireError, Semaphore};

/// Room taken by messages, given back when their outcome is received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Release {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl Release {
    pub(crate) fn add(&mut self, other: Release) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// The window's two semaphores.
#[derive(Debug)]
pub(crate) struct Window {
    messages: Semaphore,
    bytes: Semaphore,
    max_bytes: u32,
}

impl Window {
    /// A window of `messages` messages and `bytes` bytes (`bytes` fits in a
    /// u32: the configuration checks it).
    pub(crate) fn new(messages: usize, bytes: u32) -> Window {
        Window {
            messages: Semaphore::new(messages),
            bytes: Semaphore::new(usize::try_from(bytes).unwrap_or(usize::MAX)),
            max_bytes: bytes,
        }
    }

    /// Takes room for one message of `bytes` bytes, waiting while the
    /// window is full; returns what to give back. Cancel-safe: if the
    /// future is dropped, nothing is taken.
    pub(crate) async fn acquire(&self, bytes: usize) -> Result<Release, AcquireError> {
        let cost = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes.max(1));
        let message = self.messages.acquire().await?;
        let room = self.bytes.acquire_many(cost).await?;
        message.forget();
        room.forget();
        Ok(Release {
            messages: 1,
            bytes: usize::try_from(cost).unwrap_or(usize::MAX),
        })
    }

    /// Takes room for one message of `bytes` bytes if there is some now.
    pub(crate) fn try_acquire(&self, bytes: usize) -> Option<Release> {
        let cost = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes.max(1));
        let message = self.messages.try_acquire().ok()?;
        // Dropped on failure, the message permit goes back by itself.
        let room = self.bytes.try_acquire_many(cost).ok()?;
        message.forget();
        room.forget();
        Some(Release {
            messages: 1,
            bytes: usize::try_from(cost).unwrap_or(usize::MAX),
        })
    }

    /// Gives room back.
    pub(crate) fn release(&self, release: Release) {
        if release.messages > 0 {
            self.messages.add_permits(release.messages);
        }
        if release.bytes > 0 {
            self.bytes.add_permits(release.bytes);
        }
    }

    /// Wakes every waiter with an error (the sink is gone).
    pub(crate) fn close(&self) {
        self.messages.close();
        self.bytes.close();
    }

    /// Free message slots (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn free_messages(&self) -> usize {
        self.messages.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_window_waits_when_full_by_count_or_bytes() {
        let window = Window::new(2, 100);
        let a = window.acquire(10).await.unwrap();
        let _b = window.acquire(10).await.unwrap();
        // Full by count.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), window.acquire(1))
                .await
                .is_err()
        );
        window.release(a);
        let c = window.acquire(80).await.unwrap();
        assert_eq!(c.bytes, 80);
        window.release(c);
        // Full by bytes: 10 taken, 95 does not fit.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), window.acquire(95))
                .await
                .is_err()
        );
        assert_eq!(window.free_messages(), 1);
    }

    #[tokio::test]
    async fn try_acquire_takes_room_only_when_there_is_some() {
        let window = Window::new(2, 100);
        let a = window.try_acquire(60).unwrap();
        // Bytes are short: nothing is taken, not even the message slot.
        assert!(window.try_acquire(60).is_none());
        assert_eq!(window.free_messages(), 1);
        let _b = window.try_acquire(40).unwrap();
        // Count is short.
        assert!(window.try_acquire(0).is_none());
        window.release(a);
        assert!(window.try_acquire(1).is_some());
    }

    #[tokio::test]
    async fn a_message_heavier_than_the_window_takes_all_of_it() {
        let window = Window::new(4, 100);
        let big = window.acquire(10_000).await.unwrap();
        assert_eq!(big.bytes, 100);
        window.release(big);
        assert_eq!(window.acquire(100).await.unwrap().bytes, 100);
    }
}
