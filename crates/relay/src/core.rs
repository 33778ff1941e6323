//! The relay's core: one streaming session between the slot and the sink,
//! as a pure state machine.
//!
//! Events come in ([`Event`]: a decoded pgoutput message with its WAL
//! position, a keepalive, what the sink did with a publish, an outcome, the
//! stream's loss, shutdown); commands go out ([`Command`]: publish, ack an
//! LSN, restart from the slot, stop). No tokio, no sockets, no clock: the
//! driver (`pipeline.rs`) owns the connections and the timers, and applies
//! the commands. Everything the invariants of docs/ARCHITECTURE.md decide at
//! run time is decided here:
//!
//! - the ack tracker is fed only from here (begin, commit, keepalive,
//!   confirm, restart), so the acked LSN never passes a transaction with an
//!   unconfirmed message, nor any earlier one (invariant 3);
//! - messages are published in stream order, one hand-over at a time; after
//!   any publish failure but a return nothing more is published: the core
//!   asks for a restart from the slot, which re-sends everything after the
//!   acked transaction (invariant 4);
//! - frames are taken only when nothing waits to be published, and the
//!   in-flight window (messages and bytes) bounds what is held (invariant
//!   5);
//! - a keepalive's position is acked when nothing is open or in flight
//!   (invariant 6);
//! - a row that cannot be published as configured, or that the broker
//!   returns, goes to the dead-letter exchange (invariant 7);
//! - a row the broker keeps refusing is found and dead-lettered after a
//!   bounded number of attempts, while faults of the link or a server only
//!   make the relay wait and rewind (invariant 8).
//!
//! Two memories make rewinds cheap and exact. Rows confirmed before a
//! rewind are counted as confirmed when the slot sends them again, instead
//! of being published again ([`Pos`] orders them as the stream does). After
//! a failure the broker blames on a message it cannot name, the rows that
//! were in flight are published again one at a time, so the next failure
//! names its row.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use pgoutput::{LogicalMessage, Lsn, PgTimestamp};

use serde::{Deserialize, Serialize};

use crate::mapping::{shown, DeadLetterReason, EventMessage, Mapped, Mapper};
use crate::sink::{Failure, FaultCause, Handed, LinkFault, Outcome, Seq};
use crate::tracker::{AckTracker, TrackerError, TxnId};

/// A row's place in the stream: the transaction's commit position (a
/// Begin's `final_lsn`; a non-transactional message's own LSN), then the
/// row's own, then its rank among the rows that share that LSN (COPY writes
/// many rows in one WAL record, and pgoutput sends each with the record's
/// LSN). The slot sends rows in this order, and again in this order after a
/// rewind, so a position names one row, in every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Where the row's transaction commits.
    pub commit: Lsn,
    /// Where the row is.
    pub lsn: Lsn,
    /// Its rank among the rows at `lsn` (0 for the first).
    pub rank: u32,
}

impl Pos {
    /// The first position after this one.
    fn after(self) -> Pos {
        Pos {
            rank: self.rank.saturating_add(1),
            ..self
        }
    }

    /// The position of the row read after `previous` at (`commit`, `lsn`).
    fn next(previous: Option<Pos>, commit: Lsn, lsn: Lsn) -> Pos {
        let rank = match previous {
            Some(p) if p.commit == commit && p.lsn == lsn => p.rank.saturating_add(1),
            _ => 0,
        };
        Pos { commit, lsn, rank }
    }
}

/// What to do with a message the broker returns as unroutable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnroutablePolicy {
    /// Publish it to the dead-letter exchange with reason `unroutable`.
    DeadLetter,
    /// Count it and go on.
    Drop,
}

/// The core's settings.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Most messages in flight.
    pub window_messages: usize,
    /// Most body bytes in flight (a larger message still goes, alone).
    pub window_bytes: usize,
    /// What to do with a message the broker returns.
    pub on_unroutable: UnroutablePolicy,
    /// How many times a row the broker refuses is published before it is
    /// dead-lettered.
    pub row_attempts: u32,
}

/// What happened, in the order it happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// Streaming (re)started from the slot at the acked position.
    StreamStarted,
    /// A decoded pgoutput message and the WAL position it came at.
    Message {
        /// The XLogData's WAL start.
        lsn: Lsn,
        /// The message.
        message: LogicalMessage,
    },
    /// The server's keepalive, in stream order.
    Keepalive {
        /// Its WAL end.
        wal_end: Lsn,
    },
    /// What the sink did with the publish of `seq`, at once.
    Handed {
        /// The message.
        seq: Seq,
        /// What the sink said.
        handed: Handed,
    },
    /// An outcome or link event from the sink.
    Outcome(Outcome),
    /// The replication stream broke (a retryable error): finish what is in
    /// flight, then restart.
    StreamLost(String),
    /// The driver gave up waiting for what was in flight (drain timeout).
    DrainTimedOut,
    /// Stop (SIGTERM, SIGINT): finish what is in flight, then stop.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum Command {
    /// Hand this message to the sink, then report [`Event::Handed`].
    Publish {
        /// Its number.
        seq: Seq,
        /// The message.
        message: Arc<EventMessage>,
        /// Why it goes to the dead-letter exchange, if it does.
        dead_letter: Option<DeadLetterReason>,
        /// The row's WAL position.
        lsn: Lsn,
        /// The configured table the row is of (None: an emit-message
        /// envelope).
        table: Option<usize>,
    },
    /// Report this position to PostgreSQL as flushed.
    Ack(Lsn),
    /// Stream again from the slot's acked position.
    Restart(Restart),
    /// The session is over.
    Stop(Stop),
}

/// Why the stream restarts, and what to wait for first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// What to wait for.
    pub cause: RestartCause,
    /// What happened (for the log).
    pub reason: String,
}

/// What a restart waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCause {
    /// The link or a server failed: wait for the broker, back off, then
    /// stream again.
    Sink,
    /// The broker refused a row: stream again soon, to find the row or set
    /// it aside.
    Row,
    /// The replication stream broke: reconnect with backoff.
    Stream,
}

/// Why the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Shutdown was asked for; whether everything in flight was confirmed.
    Shutdown {
        /// Nothing was left unconfirmed.
        drained: bool,
    },
    /// Something no retry fixes (a bug or a protocol surprise).
    Fatal(String),
}

/// What the driver may want to count or log; nothing here changes what is
/// published or acked.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A transaction began.
    Transaction,
    /// An outbox change that is not an event (`update`, `delete`,
    /// `truncate`), or a returned event dropped by policy
    /// (`no_route_dropped`).
    Ignored(&'static str),
    /// The broker confirmed an event (or its dead-letter copy).
    Confirmed {
        /// The event's commit time, unless it was a dead-letter copy.
        commit_ts: Option<PgTimestamp>,
        /// The configured table the row is of (None: an emit-message
        /// envelope).
        table: Option<usize>,
    },
    /// A row goes to the dead-letter exchange.
    DeadLettering {
        /// Where the row is.
        lsn: Lsn,
        /// Why.
        reason: DeadLetterReason,
        /// The detail (escaped, bounded).
        detail: String,
    },
    /// A publish failure was put down to this row.
    RowRefused {
        /// Where the row is.
        lsn: Lsn,
        /// Attempts so far.
        attempts: u32,
        /// What the broker said.
        detail: String,
    },
    /// After a rewind, rows confirmed before it were not published again.
    Skipped(u64),
    /// The publication sends a table no `[[table]]` entry maps: its rows
    /// are not events (and are acknowledged past).
    Unmapped(String),
    /// The broker returned a message (no queue took it): its confirm will
    /// not count.
    Returned,
    /// A rewind or a stop dropped this many messages in flight: their
    /// outcomes are no longer awaited (the slot sends their rows again).
    Rewound(usize),
}

/// Counts the core keeps for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Messages in flight.
    pub inflight_messages: usize,
    /// Body bytes in flight.
    pub inflight_bytes: usize,
    /// Messages waiting to be published.
    pub pending: usize,
    /// Transactions read and not yet acked.
    pub open_transactions: usize,
    /// The commit time of the oldest event waiting or in flight.
    pub oldest_unconfirmed_commit: Option<PgTimestamp>,
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and publishing.
    Streaming,
    /// Publishing nothing more; waiting for what is in flight, then the
    /// command.
    Draining(After),
    /// Waiting for the driver to stream again (after a restart) or done.
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Restart,
    Stop,
}

/// Which copy of a row a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// The event itself.
    Event,
    /// A dead-letter copy with the row's headers.
    DeadLetter(DeadLetterReason),
    /// The smallest dead-letter copy (a full one was refused).
    Minimal(DeadLetterReason),
}

/// A message of a row, waiting or in flight.
#[derive(Debug, Clone)]
struct Entry {
    pos: Pos,
    /// The configured table the row is of (an index into the mapping's
    /// tables); None for a pg_logical_emit_message envelope.
    table: Option<usize>,
    txn: TxnId,
    commit_ts: Option<PgTimestamp>,
    message: Arc<EventMessage>,
    copy: Copy,
    bytes: usize,
    /// Published alone, its outcome awaited before the next publish.
    alone: bool,
}

impl Entry {
    fn dead_letter(&self) -> Option<DeadLetterReason> {
        match self.copy {
            Copy::Event => None,
            Copy::DeadLetter(r) | Copy::Minimal(r) => Some(r),
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    seq: Seq,
    entry: Entry,
}

/// The open transaction.
#[derive(Debug, Clone, Copy)]
struct OpenTxn {
    id: TxnId,
    commit: Lsn,
    commit_ts: PgTimestamp,
}

/// A row the broker refused.
#[derive(Debug, Clone)]
struct Refusal {
    attempts: u32,
    reason: DeadLetterReason,
    detail: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Core {
    mapper: Mapper,
    config: CoreConfig,
    tracker: AckTracker,
    phase: Phase,
    txn: Option<OpenTxn>,
    pending: VecDeque<Entry>,
    inflight: VecDeque<InFlight>,
    inflight_bytes: usize,
    /// The message handed to the sink whose [`Event::Handed`] is awaited.
    handing: bool,
    /// The sink's window is full: publish again after the next outcome.
    sink_full: bool,
    next_seq: u64,
    /// The last position read in this session.
    last_read: Option<Pos>,
    /// Every row before this position was confirmed (by an earlier
    /// session of this process).
    confirmed_below: Option<Pos>,
    /// Rows up to this position are published one at a time.
    alone_through: Option<Pos>,
    /// Rows the broker refused, by position.
    refusals: HashMap<Pos, Refusal>,
    /// Relations the stream sent that no configured table maps (warned
    /// about once each).
    unmapped: std::collections::HashSet<pgoutput::Oid>,
    last_acked: Lsn,
    /// Why the drain under way will end in a restart.
    drain_reason: String,
    commands: VecDeque<Command>,
    notes: VecDeque<Note>,
    skipped: u64,
}

impl Core {
    /// A core that resumes after `start` (the slot's confirmed position).
    pub fn new(mapper: Mapper, config: CoreConfig, start: Lsn) -> Core {
        Core {
            mapper,
            config,
            tracker: AckTracker::new(start),
            phase: Phase::Idle,
            txn: None,
            pending: VecDeque::new(),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            handing: false,
            sink_full: false,
            next_seq: 1,
            last_read: None,
            confirmed_below: None,
            alone_through: None,
            refusals: HashMap::new(),
            unmapped: std::collections::HashSet::new(),
            last_acked: start,
            drain_reason: String::new(),
            commands: VecDeque::new(),
            notes: VecDeque::new(),
            skipped: 0,
        }
    }

    /// The server the next session streams from has another history than
    /// the one this core read (a promoted standby whose timeline forked
    /// before what was read, or another cluster): positions after `start`
    /// may name other transactions. Forgets what it remembered of positions
    /// (rows confirmed before a rewind, rows isolated after a fault, the
    /// broker's refusals) and resumes after `start`, which may lie before
    /// what was acknowledged: duplicates, never a row skipped because an
    /// older history had one at its position. Between sessions only (after
    /// a restart, with nothing in flight).
    pub fn rebase(&mut self, start: Lsn) {
        self.clear_session();
        self.tracker = AckTracker::new(start);
        self.last_acked = start;
        self.last_read = None;
        self.confirmed_below = None;
        self.alone_through = None;
        self.refusals.clear();
    }

    /// The furthest commit position the core remembers something about
    /// (rows confirmed before a rewind, isolated rows, refusals): a server
    /// whose history forked before it needs a [`rebase`](Self::rebase).
    pub fn remembered_through(&self) -> Lsn {
        self.confirmed_below
            .iter()
            .chain(self.alone_through.iter())
            .chain(self.refusals.keys())
            .map(|p| p.commit)
            .max()
            .unwrap_or(Lsn::ZERO)
            .max(self.acked())
    }

    /// The LSN PostgreSQL may consider flushed.
    pub fn acked(&self) -> Lsn {
        self.tracker.acked()
    }

    /// Whether the driver should read the next frame: streaming, and
    /// nothing waits to be published.
    pub fn wants_frames(&self) -> bool {
        self.phase == Phase::Streaming && self.pending.is_empty() && !self.handing
    }

    /// Whether a transaction is open: its Begin was read and its Commit
    /// not yet (the rest of it is on the way).
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// Whether the core waits for what is in flight before a restart or a
    /// stop (the driver bounds that wait with a timer).
    pub fn draining(&self) -> bool {
        matches!(self.phase, Phase::Draining(_))
    }

    /// The next command, in order.
    pub fn next_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next note, in order.
    pub fn next_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// Counts for gauges.
    pub fn stats(&self) -> Stats {
        Stats {
            inflight_messages: self.inflight.len(),
            inflight_bytes: self.inflight_bytes,
            pending: self.pending.len(),
            open_transactions: self.tracker.pending_transactions(),
            oldest_unconfirmed_commit: self
                .inflight
                .front()
                .and_then(|f| f.entry.commit_ts)
                .into_iter()
                .chain(self.pending.front().and_then(|e| e.commit_ts))
                .min(),
        }
    }

    /// Takes one event; the commands it leads to wait in
    /// [`next_command`](Self::next_command).
    pub fn handle(&mut self, event: Event) {
        if let Err(why) = self.on_event(event) {
            self.stop(Stop::Fatal(why));
        }
        if self.phase == Phase::Streaming {
            self.publish_next();
        }
        if let Phase::Draining(after) = self.phase {
            if self.inflight.is_empty() {
                self.finish_drain(after, true);
            }
        }
        self.push_ack();
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::StreamStarted => {
                self.phase = Phase::Streaming;
                self.txn = None;
                self.last_read = None;
                Ok(())
            }
            Event::Message { lsn, message } => {
                if self.phase != Phase::Streaming {
                    return Ok(());
                }
                self.on_message(lsn, message)
            }
            Event::Keepalive { wal_end } => {
                // In stream order: every frame before it has been read. With
                // no transaction open, its position is safe to ack if nothing
                // is in flight (the tracker checks).
                if self.phase == Phase::Streaming && self.txn.is_none() {
                    self.tracker.keepalive(wal_end);
                }
                Ok(())
            }
            Event::Handed { seq, handed } => self.on_handed(seq, handed),
            Event::Outcome(outcome) => self.on_outcome(outcome),
            Event::StreamLost(reason) => {
                if self.phase == Phase::Streaming {
                    // What waits is kept (it bounds what counts as confirmed
                    // at the restart) but no longer published.
                    self.drain_reason = reason;
                    self.phase = Phase::Draining(After::Restart);
                }
                Ok(())
            }
            Event::DrainTimedOut => {
                if let Phase::Draining(after) = self.phase {
                    self.finish_drain(after, false);
                }
                Ok(())
            }
            Event::Shutdown => {
                match self.phase {
                    Phase::Streaming | Phase::Draining(After::Restart) => {
                        self.phase = Phase::Draining(After::Stop);
                    }
                    Phase::Draining(After::Stop) => {}
                    Phase::Idle => self.stop(Stop::Shutdown { drained: true }),
                }
                Ok(())
            }
        }
    }

    fn on_message(&mut self, lsn: Lsn, message: LogicalMessage) -> Result<(), String> {
        match message {
            LogicalMessage::Begin(b) => {
                if self.txn.is_some() {
                    return Err(format!("a Begin at {lsn} inside an open transaction"));
                }
                let id = self.tracker.begin();
                self.txn = Some(OpenTxn {
                    id,
                    commit: b.final_lsn,
                    commit_ts: b.commit_ts,
                });
                self.notes.push_back(Note::Transaction);
            }
            LogicalMessage::Commit(c) => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| format!("a Commit at {} without a Begin", c.end_lsn))?;
                self.tracker
                    .commit(txn.id, c.end_lsn)
                    .map_err(tracker_bug)?;
            }
            LogicalMessage::Relation(r) => {
                let mapped = self.mapper.relation(&r);
                if !mapped && self.unmapped.insert(r.oid) {
                    self.notes
                        .push_back(Note::Unmapped(format!("{}.{}", r.namespace, r.name)));
                }
            }
            LogicalMessage::Insert(i) => {
                if let Some(mapped) = self.mapper.insert(&i, lsn) {
                    let txn = self
                        .txn
                        .ok_or_else(|| format!("an Insert at {lsn} outside a transaction"))?;
                    let pos = Pos::next(self.last_read, txn.commit, lsn);
                    let table = self.mapper.table_of(i.rel);
                    self.enqueue(mapped, txn.id, pos, Some(txn.commit_ts), false, table)?;
                }
            }
            LogicalMessage::Message(m) => {
                if let Some(mapped) = self.mapper.logical_message(&m) {
                    match (m.transactional, self.txn) {
                        (true, Some(txn)) => {
                            let pos = Pos::next(self.last_read, txn.commit, m.lsn);
                            self.enqueue(mapped, txn.id, pos, Some(txn.commit_ts), false, None)?;
                        }
                        _ => {
                            let pos = Pos::next(self.last_read, m.lsn, m.lsn);
                            // Acked just past its start: a restart there does
                            // not decode it again (no record starts inside it).
                            let end = Lsn::from_u64(m.lsn.as_u64().saturating_add(1));
                            let id = self.tracker.standalone(end);
                            self.enqueue(mapped, id, pos, None, true, None)?;
                        }
                    }
                }
            }
            LogicalMessage::Update(u) if self.mapper.is_outbox(u.rel) => {
                self.notes.push_back(Note::Ignored("update"));
            }
            LogicalMessage::Delete(d) if self.mapper.is_outbox(d.rel) => {
                self.notes.push_back(Note::Ignored("delete"));
            }
            LogicalMessage::Truncate(t) if t.rels.iter().any(|r| self.mapper.is_outbox(*r)) => {
                self.notes.push_back(Note::Ignored("truncate"));
            }
            _ => {}
        }
        Ok(())
    }

    /// Queues a mapped row of transaction `txn` (already counted in the
    /// tracker if `counted`), or counts it confirmed if an earlier session
    /// had it confirmed.
    fn enqueue(
        &mut self,
        mapped: Mapped,
        txn: TxnId,
        pos: Pos,
        commit_ts: Option<PgTimestamp>,
        counted: bool,
        table: Option<usize>,
    ) -> Result<(), String> {
        self.last_read = Some(pos);
        if self.confirmed_below.is_some_and(|bound| pos < bound) {
            if counted {
                self.tracker.confirm(txn).map_err(tracker_bug)?;
            }
            self.skipped += 1;
            return Ok(());
        }
        if self.skipped > 0 {
            self.notes.push_back(Note::Skipped(self.skipped));
            self.skipped = 0;
        }
        if !counted {
            self.tracker.add_message(txn).map_err(tracker_bug)?;
        }
        let (message, copy) = match mapped {
            Mapped::Publish(message) => match self.refusals.get(&pos) {
                Some(r) if r.attempts >= self.config.row_attempts => {
                    let copy = self.mapper.copy_of(&message, pos.lsn, r.reason, &r.detail);
                    (copy, Copy::DeadLetter(r.reason))
                }
                _ => (message, Copy::Event),
            },
            Mapped::DeadLetter(message, reason) => (message, Copy::DeadLetter(reason)),
        };
        if let Copy::DeadLetter(reason) = copy {
            self.notes.push_back(Note::DeadLettering {
                lsn: pos.lsn,
                reason,
                detail: detail_of(&message),
            });
        }
        self.pending.push_back(Entry {
            pos,
            table,
            txn,
            commit_ts,
            bytes: message.body.len(),
            message: Arc::new(message),
            copy,
            alone: self.alone_through.is_some_and(|through| pos <= through),
        });
        Ok(())
    }

    /// Hands the next waiting message to the driver if the window and the
    /// isolation rule allow.
    fn publish_next(&mut self) {
        if self.handing || self.sink_full {
            return;
        }
        let Some(front) = self.pending.front() else {
            return;
        };
        if let Some(first) = self.inflight.front() {
            // A row published alone goes with nothing beside it.
            if first.entry.alone || front.alone {
                return;
            }
            if self.inflight.len() >= self.config.window_messages
                || self.inflight_bytes.saturating_add(front.bytes) > self.config.window_bytes
            {
                return;
            }
        }
        let Some(entry) = self.pending.pop_front() else {
            return;
        };
        let seq = Seq(self.next_seq);
        self.next_seq += 1;
        self.commands.push_back(Command::Publish {
            seq,
            message: Arc::clone(&entry.message),
            dead_letter: entry.dead_letter(),
            lsn: entry.pos.lsn,
            table: entry.table,
        });
        self.inflight_bytes += entry.bytes;
        self.inflight.push_back(InFlight { seq, entry });
        self.handing = true;
    }

    fn on_handed(&mut self, seq: Seq, handed: Handed) -> Result<(), String> {
        if !self.handing || self.inflight.back().map(|f| f.seq) != Some(seq) {
            return Ok(());
        }
        self.handing = false;
        if handed == Handed::Accepted {
            return Ok(());
        }
        let Some(unsent) = self.inflight.pop_back() else {
            return Ok(());
        };
        self.inflight_bytes -= unsent.entry.bytes;
        match handed {
            Handed::Accepted => Ok(()),
            Handed::Full => {
                self.pending.push_front(unsent.entry);
                self.sink_full = true;
                Ok(())
            }
            Handed::Invalid(why) => self.refused_by_client(unsent.entry, &why),
            Handed::LinkDown(why) => {
                self.pending.push_front(unsent.entry);
                self.restart(RestartCause::Sink, why);
                Ok(())
            }
        }
    }

    /// The sink refused a message as it was: its dead-letter copy goes
    /// instead; a refused copy is reduced to the smallest one.
    fn refused_by_client(&mut self, entry: Entry, why: &str) -> Result<(), String> {
        let lsn = entry.pos.lsn;
        let (message, copy) = match entry.copy {
            Copy::Event => {
                let reason = DeadLetterReason::RefusedByClient;
                let copy = self.mapper.copy_of(&entry.message, lsn, reason, why);
                (copy, Copy::DeadLetter(reason))
            }
            Copy::DeadLetter(reason) => {
                let copy = self
                    .mapper
                    .minimal_copy_of(&entry.message, lsn, reason, why);
                (copy, Copy::Minimal(reason))
            }
            Copy::Minimal(_) => {
                return Err(format!(
                    "the smallest dead-letter copy of the row at {lsn} was refused too ({}); \
                     this is a bug, please report it",
                    shown(why, 200)
                ))
            }
        };
        if let Copy::DeadLetter(reason) = copy {
            self.notes.push_back(Note::DeadLettering {
                lsn,
                reason,
                detail: detail_of(&message),
            });
        }
        self.pending.push_front(Entry {
            bytes: message.body.len(),
            message: Arc::new(message),
            copy,
            ..entry
        });
        Ok(())
    }

    fn on_outcome(&mut self, outcome: Outcome) -> Result<(), String> {
        match outcome {
            Outcome::Confirmed { up_to } => {
                self.sink_full = false;
                while self.inflight.front().is_some_and(|f| f.seq <= up_to) {
                    let Some(done) = self.inflight.pop_front() else {
                        break;
                    };
                    self.inflight_bytes -= done.entry.bytes;
                    self.tracker.confirm(done.entry.txn).map_err(tracker_bug)?;
                    let commit_ts = match done.entry.copy {
                        Copy::Event => done.entry.commit_ts,
                        _ => None,
                    };
                    self.notes.push_back(Note::Confirmed {
                        commit_ts,
                        table: done.entry.table,
                    });
                    // A row isolated after a failure passed: the failure was
                    // not its own.
                    self.refusals.remove(&done.entry.pos);
                    if self
                        .alone_through
                        .is_some_and(|through| done.entry.pos >= through)
                    {
                        self.alone_through = None;
                    }
                }
                Ok(())
            }
            Outcome::Failed { seq, failure } => {
                self.sink_full = false;
                let Some(at) = self.inflight.iter().position(|f| f.seq == seq) else {
                    // From before a restart.
                    return Ok(());
                };
                match failure {
                    Failure::Returned(reply) => self.returned(at, &reply),
                    Failure::Nacked => {
                        let lsn = self.inflight.get(at).map(|f| f.entry.pos.lsn);
                        self.restart(
                            RestartCause::Sink,
                            format!(
                                "the broker nacked the event at {} (a queue refused it)",
                                lsn.unwrap_or(Lsn::ZERO)
                            ),
                        );
                        Ok(())
                    }
                    Failure::Lost(fault) => {
                        self.lost(fault);
                        Ok(())
                    }
                }
            }
            Outcome::LinkLost(_) => {
                // Every message it failed was reported before it.
                Ok(())
            }
            Outcome::LinkRestored { .. } | Outcome::Unblocked => {
                self.sink_full = false;
                Ok(())
            }
            Outcome::Blocked(_) => Ok(()),
        }
    }

    /// The broker returned the message at `at`: dead-letter it (or drop it,
    /// by policy); a returned dead-letter copy is a broker fault.
    fn returned(&mut self, at: usize, reply: &str) -> Result<(), String> {
        if let Some(f) = self
            .inflight
            .get(at)
            .filter(|f| f.entry.copy != Copy::Event)
        {
            // Still in flight for the restart: the row counts as unconfirmed.
            let why = format!(
                "the dead-letter exchange {} routed the copy of the row at {} to no queue ({}): \
                 bind a queue to it (dead_letter_queue)",
                f.entry.message.exchange,
                f.entry.pos.lsn,
                shown(reply, 200)
            );
            self.restart(RestartCause::Sink, why);
            return Ok(());
        }
        let Some(f) = self.inflight.remove(at) else {
            return Ok(());
        };
        self.notes.push_back(Note::Returned);
        self.inflight_bytes -= f.entry.bytes;
        let entry = f.entry;
        let lsn = entry.pos.lsn;
        match self.config.on_unroutable {
            UnroutablePolicy::DeadLetter => {
                let reason = DeadLetterReason::NoRoute;
                let detail = format!("returned by the broker: {}", shown(reply, 200));
                let copy = self.mapper.copy_of(&entry.message, lsn, reason, &detail);
                self.notes.push_back(Note::DeadLettering {
                    lsn,
                    reason,
                    detail,
                });
                // The transaction still counts this row: the copy's confirm
                // completes it.
                self.pending.push_front(Entry {
                    bytes: copy.body.len(),
                    message: Arc::new(copy),
                    copy: Copy::DeadLetter(reason),
                    ..entry
                });
            }
            UnroutablePolicy::Drop => {
                self.notes.push_back(Note::Ignored("no_route_dropped"));
                self.tracker.confirm(entry.txn).map_err(tracker_bug)?;
            }
        }
        Ok(())
    }

    /// The link failed with messages in flight: wait for it, or find the
    /// row that broke it.
    fn lost(&mut self, fault: LinkFault) {
        let culprit = match &fault.cause {
            FaultCause::Link => None,
            // The first message in flight to the missing exchange is the
            // one the broker closed the channel over.
            FaultCause::NoExchange(exchange) => self
                .inflight
                .iter()
                .find(|f| f.entry.message.exchange == *exchange)
                .map(|f| (f.entry.pos, f.entry.copy)),
            // Which message, the broker does not say: only a message alone
            // in flight is surely the one.
            FaultCause::Message | FaultCause::AccessRefused => match self.inflight.len() {
                1 => self.inflight.front().map(|f| (f.entry.pos, f.entry.copy)),
                _ => {
                    let through = self.inflight.iter().map(|f| f.entry.pos).max();
                    self.alone_through = self.alone_through.max(through);
                    self.restart(
                        RestartCause::Row,
                        format!(
                            "{}; publishing the rows that were in flight one at a time to find \
                             the one at fault",
                            fault.text
                        ),
                    );
                    return;
                }
            },
        };
        // Every row of a table goes to its constant exchange: its absence
        // or a missing permission on it is the broker's setup, not one
        // row's. (A message the broker refuses for what it holds stays the
        // row's fault, on any exchange: else one row could hold the stream
        // forever.)
        let setup_fault = matches!(
            fault.cause,
            FaultCause::NoExchange(_) | FaultCause::AccessRefused
        );
        let of_constant = |pos: Pos| {
            setup_fault
                && self.inflight.iter().any(|f| {
                    f.entry.pos == pos
                        && self.mapper.is_constant_exchange(&f.entry.message.exchange)
                })
        };
        match culprit {
            Some((pos, Copy::Event)) if !of_constant(pos) => {
                let reason = match fault.cause {
                    FaultCause::NoExchange(_) => DeadLetterReason::NoExchange,
                    _ => DeadLetterReason::RejectedByBroker,
                };
                let detail = shown(&fault.text, 400);
                let refusal = self.refusals.entry(pos).or_insert(Refusal {
                    attempts: 0,
                    reason,
                    detail: detail.clone(),
                });
                refusal.attempts += 1;
                refusal.reason = reason;
                refusal.detail.clone_from(&detail);
                let attempts = refusal.attempts;
                self.notes.push_back(Note::RowRefused {
                    lsn: pos.lsn,
                    attempts,
                    detail,
                });
                let next = if attempts >= self.config.row_attempts {
                    "it goes to the dead-letter exchange"
                } else {
                    "publishing it again"
                };
                self.restart(
                    RestartCause::Row,
                    format!(
                        "{}; the row at {} was refused {attempts} of {} times: {next}",
                        fault.text, pos.lsn, self.config.row_attempts
                    ),
                );
            }
            // A dead-letter copy refused, or a link fault: the broker's
            // side must change; wait for it.
            _ => self.restart(RestartCause::Sink, fault.text),
        }
    }

    /// Ends the session for a restart from the slot: what was confirmed is
    /// remembered, the rest is dropped (the slot re-sends it).
    fn restart(&mut self, cause: RestartCause, reason: String) {
        if self.phase == Phase::Draining(After::Stop) {
            // Shutting down: a failure ends the drain.
            self.stop(Stop::Shutdown { drained: false });
            return;
        }
        self.remember_confirmed();
        self.clear_session();
        self.push_ack();
        self.phase = Phase::Idle;
        self.commands
            .push_back(Command::Restart(Restart { cause, reason }));
    }

    fn finish_drain(&mut self, after: After, drained: bool) {
        match after {
            After::Restart => {
                let reason = std::mem::take(&mut self.drain_reason);
                self.restart(RestartCause::Stream, reason);
            }
            After::Stop => {
                let drained = drained && self.pending.is_empty() && !self.sink_full;
                self.stop(Stop::Shutdown { drained })
            }
        }
    }

    fn stop(&mut self, stop: Stop) {
        self.push_ack();
        self.phase = Phase::Idle;
        self.clear_session();
        self.commands.push_back(Command::Stop(stop));
    }

    /// Every row read before the first one not confirmed was confirmed:
    /// when the slot sends it again, it is not published again.
    fn remember_confirmed(&mut self) {
        let first_unconfirmed = self
            .inflight
            .iter()
            .map(|f| f.entry.pos)
            .chain(self.pending.iter().map(|e| e.pos))
            .min();
        let bound = first_unconfirmed.or(self.last_read.map(Pos::after));
        if let Some(bound) = bound {
            self.confirmed_below = self.confirmed_below.max(Some(bound));
        }
    }

    fn clear_session(&mut self) {
        if !self.inflight.is_empty() {
            self.notes.push_back(Note::Rewound(self.inflight.len()));
        }
        self.pending.clear();
        self.inflight.clear();
        self.inflight_bytes = 0;
        self.handing = false;
        self.sink_full = false;
        self.txn = None;
        self.tracker.reset();
        self.skipped = 0;
    }

    fn push_ack(&mut self) {
        let acked = self.tracker.acked();
        if acked > self.last_acked {
            self.last_acked = acked;
            self.commands.push_back(Command::Ack(acked));
        }
    }
}

#[cfg(test)]
#[path = "core_model.rs"]
mod model;

/// A tracker error is a bug of the core: it stops the relay rather than
/// risk a wrong ack.
fn tracker_bug(e: TrackerError) -> String {
    format!("internal: {e}; this is a bug, please report it")
}

/// A dead-letter copy's `x-relay-detail`.
fn detail_of(message: &EventMessage) -> String {
    message
        .headers
        .iter()
        .find(|(name, _)| name == "x-relay-detail")
        .map(|(_, value)| match value {
            crate::mapping::HeaderValue::Text(t) => t.clone(),
            _ => String::new(),
        })
        .unwrap_or_default()
}
