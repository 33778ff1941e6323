//! What the caller's handle ([`crate::Publisher`]) and the driver task
//! (`driver.rs`) share: the commands the handle sends, the state the driver
//! publishes for the handle's fast checks, and the link state. Both import
//! this module; neither imports the other's internals.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::Mutex;

use crate::error::LinkError;
use crate::message::Prepared;
use crate::outcome::Seq;
use crate::window::Release;

/// The state of the broker link, for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Connected and publishing.
    Connected {
        /// The broker, redacted.
        broker: String,
    },
    /// Connected, but the broker blocked publishing (resource alarm).
    Blocked {
        /// The broker, redacted.
        broker: String,
        /// The broker's reason.
        reason: String,
    },
    /// Not connected; reconnecting.
    Reconnecting {
        /// Consecutive failed attempts so far.
        attempts: u32,
        /// The last failure.
        last_error: LinkError,
    },
    /// Not connected for `attempts` attempts: publishing fails fast.
    Unavailable {
        /// Consecutive failed attempts so far.
        attempts: u32,
        /// The last failure.
        last_error: LinkError,
    },
    /// Closed.
    Closed,
}

/// A message on its way to the driver.
// Nearly every command is a Publish: boxing it would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        seq: Seq,
        message: Prepared,
        release: Release,
    },
    /// The caller has seen the failures up to this loss generation.
    Resume { generation: u64 },
}

/// State the driver publishes for the handle's fast checks.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Bumped by every link loss that failed messages.
    pub(crate) loss_generation: AtomicU64,
    pub(crate) last_loss: Mutex<Option<LinkError>>,
    pub(crate) breaker_open: AtomicBool,
    pub(crate) breaker_cause: Mutex<Option<LinkError>>,
    pub(crate) closed: AtomicBool,
    /// The frame_max the broker negotiated on the current link (0 until
    /// the first link): a message's properties and headers must fit one
    /// frame of it.
    pub(crate) frame_max: AtomicU32,
}

impl Shared {
    pub(crate) fn last_loss(&self) -> LinkError {
        self.last_loss
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(LinkError::Closed)
    }

    pub(crate) fn breaker_cause(&self) -> LinkError {
        self.breaker_cause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(LinkError::Closed)
    }
}
