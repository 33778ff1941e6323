//! Model-based tests of the core: a simulated slot (committed transactions
//! only, as pgoutput guarantees) and a simulated broker (confirms in order,
//! returns, nacks, lost links, channels closed over a row) drive the real
//! core through random interleavings, and a reference model checks every
//! guarantee the core owns after every step.

use std::collections::{HashMap, HashSet, VecDeque};

use pgoutput::{decode, Begin, Commit, LogicalMessage, Lsn, PgTimestamp, Xid};
use proptest::prelude::*;

use super::*;
use crate::config::{Settings, UnroutablePolicy};
use crate::mapping::{EventMessage, HeaderValue, Mapper};
use crate::sink::{Failure, FaultCause, Handed, LinkFault, Outcome, Seq};
use crate::test_support::{insert_bytes, relation_bytes};

/// What a row of the model's outbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Published and routed.
    Good,
    /// NULL routing column: dead-lettered by the mapping.
    NullRoute,
    /// Routed to no queue: returned by the broker, then dead-lettered.
    Unbound,
    /// Its exchange does not exist: the broker closes the channel.
    NoExchange,
    /// The broker closes the channel over it (reason unnamed).
    Poison,
    /// The broker client refuses it as it is (Handed::Invalid).
    Refused,
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    kind: Kind,
    lsn: Lsn,
}

#[derive(Debug, Clone)]
struct Txn {
    rows: Vec<Row>,
    commit_lsn: Lsn,
    end_lsn: Lsn,
}

/// The slot: every committed transaction, in commit order.
#[derive(Debug)]
struct Slot {
    txns: Vec<Txn>,
    /// The frames of the current session.
    frames: VecDeque<Event>,
}

const OUTBOX: u32 = 16384;

fn relation() -> LogicalMessage {
    let cols: &[(&str, u32)] = &[
        ("id", 25),
        ("aggregate_type", 25),
        ("aggregate_id", 25),
        ("event_type", 25),
        ("payload", 3802),
    ];
    decode(relation_bytes(OUTBOX, "public", "outbox", cols)).unwrap()
}

fn insert(row: &Row) -> LogicalMessage {
    let (exchange, key, kind): (Option<&str>, &str, &str) = match row.kind {
        Kind::Good => (Some("outbox"), "bound", "created"),
        Kind::NullRoute => (None, "bound", "created"),
        Kind::Unbound => (Some("outbox"), "nobind", "created"),
        Kind::NoExchange => (Some("missing"), "bound", "created"),
        Kind::Poison => (Some("outbox"), "bound", "poison"),
        Kind::Refused => (Some("outbox"), "bound", "refused"),
    };
    let values: [Option<&[u8]>; 5] = [
        Some(row.id.as_bytes()),
        exchange.map(str::as_bytes),
        Some(key.as_bytes()),
        Some(kind.as_bytes()),
        Some(b"{}"),
    ];
    decode(insert_bytes(OUTBOX, &values)).unwrap()
}

impl Slot {
    /// Streams again after `acked`: transactions that end at or before it
    /// are not sent again; the Relation comes first.
    fn start(&mut self, acked: Lsn) {
        self.frames.clear();
        self.frames.push_back(Event::Message {
            lsn: Lsn::ZERO,
            message: relation(),
        });
        for (i, txn) in self.txns.iter().enumerate() {
            if txn.end_lsn <= acked {
                continue;
            }
            self.frames.push_back(Event::Message {
                lsn: Lsn::from_u64(txn.commit_lsn.as_u64() - 1000),
                message: LogicalMessage::Begin(Begin {
                    final_lsn: txn.commit_lsn,
                    commit_ts: PgTimestamp::from_micros(0),
                    xid: Xid(u32::try_from(i).unwrap() + 1000),
                }),
            });
            for row in &txn.rows {
                self.frames.push_back(Event::Message {
                    lsn: row.lsn,
                    message: insert(row),
                });
            }
            self.frames.push_back(Event::Message {
                lsn: txn.commit_lsn,
                message: LogicalMessage::Commit(Commit {
                    commit_lsn: txn.commit_lsn,
                    end_lsn: txn.end_lsn,
                    ts: PgTimestamp::from_micros(0),
                }),
            });
            // The server's keepalive after the transaction, in stream order.
            self.frames.push_back(Event::Keepalive {
                wal_end: txn.end_lsn,
            });
        }
    }
}

/// The broker: messages in flight on the channel, outcomes on their way,
/// and what its queues hold.
#[derive(Debug, Default)]
struct Broker {
    inflight: VecDeque<(Seq, EventMessage)>,
    outcomes: VecDeque<Outcome>,
    /// Row ids as they reached the event queue (duplicates included).
    main: Vec<String>,
    /// Row ids and reasons in the dead-letter queue.
    dead: Vec<(String, String)>,
    /// Rows whose message or copy the core learned was confirmed.
    confirmed: HashSet<String>,
    /// Messages durably in a queue, by seq (what a confirm means).
    durable: HashMap<Seq, String>,
    full_next: bool,
    /// A queue is full (reject-publish): it refuses every message until
    /// the relay rewinds. (A queue that refuses one message and takes the
    /// next lets the next overtake the refused one's replay: the documented
    /// limit of nacks, not modelled here.)
    nacking: bool,
    /// The link was lost or the channel closed: like amqp-sink, publishing
    /// is halted (refused) until the relay has rewound.
    halted: bool,
    /// No queue is bound to the dead-letter exchange: copies come back.
    dead_letters_unbound: bool,
    /// The broker user may not publish to the event exchange.
    access_refused: bool,
}

fn row_id(message: &EventMessage) -> String {
    if let Some(id) = &message.message_id {
        return id.clone();
    }
    message
        .headers
        .iter()
        .find(|(n, _)| n == "x-relay-id" || n == "id")
        .map(|(_, v)| match v {
            HeaderValue::Text(t) => t.clone(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

fn reason(message: &EventMessage) -> String {
    message
        .headers
        .iter()
        .find(|(n, _)| n == "x-relay-reason")
        .map(|(_, v)| match v {
            HeaderValue::Text(t) => t.clone(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

impl Broker {
    /// The broker takes the next message off the channel.
    fn process(&mut self) {
        if self.nacking {
            return self.nack();
        }
        let Some((seq, message)) = self.inflight.pop_front() else {
            return;
        };
        let id = row_id(&message);
        let fault = if message.exchange == "outbox.dead-letter" {
            None
        } else if self.access_refused {
            Some(FaultCause::AccessRefused)
        } else if message.exchange == "missing" {
            Some(FaultCause::NoExchange("missing".into()))
        } else if message.kind.as_deref() == Some("poison") {
            Some(FaultCause::Message)
        } else {
            None
        };
        if let Some(cause) = fault {
            let fault = LinkFault {
                text: "channel closed".into(),
                cause,
            };
            self.fail_all(seq, Failure::Lost(fault.clone()));
            self.outcomes.push_back(Outcome::LinkLost(fault));
            self.halted = true;
            return;
        }
        if message.exchange == "outbox.dead-letter" && self.dead_letters_unbound {
            self.outcomes.push_back(Outcome::Failed {
                seq,
                failure: Failure::Returned("312 NO_ROUTE".into()),
            });
            return;
        } else if message.exchange == "outbox.dead-letter" {
            self.dead.push((id.clone(), reason(&message)));
        } else if message.routing_key == "nobind" {
            self.outcomes.push_back(Outcome::Failed {
                seq,
                failure: Failure::Returned("312 NO_ROUTE".into()),
            });
            return;
        } else {
            self.main.push(id.clone());
        }
        self.durable.insert(seq, id);
        self.outcomes.push_back(Outcome::Confirmed { up_to: seq });
    }

    /// Fails `first` and everything after it on the channel.
    fn fail_all(&mut self, first: Seq, failure: Failure) {
        self.outcomes.push_back(Outcome::Failed {
            seq: first,
            failure: failure.clone(),
        });
        while let Some((seq, _)) = self.inflight.pop_front() {
            self.outcomes.push_back(Outcome::Failed {
                seq,
                failure: failure.clone(),
            });
        }
    }

    /// The link dies: a prefix of what was in flight got into the queues
    /// unconfirmed, the rest did not; all of it fails as unknown.
    fn lose_link(&mut self, reached: usize) {
        // A full queue took none of them.
        let reached = if self.nacking { 0 } else { reached };
        let fault = LinkFault {
            text: "connection reset".into(),
            cause: FaultCause::Link,
        };
        let mut failed = Vec::new();
        for (i, (seq, message)) in std::mem::take(&mut self.inflight).into_iter().enumerate() {
            let routable = message.exchange == "outbox"
                && message.routing_key != "nobind"
                && message.kind.as_deref() != Some("poison");
            if i < reached && routable {
                self.main.push(row_id(&message));
            }
            failed.push(seq);
        }
        for seq in failed {
            self.outcomes.push_back(Outcome::Failed {
                seq,
                failure: Failure::Lost(fault.clone()),
            });
        }
        self.outcomes.push_back(Outcome::LinkLost(fault));
        self.halted = true;
    }

    /// A full queue refuses the next message and those after it.
    fn nack(&mut self) {
        if let Some((seq, _)) = self.inflight.pop_front() {
            self.nacking = true;
            self.fail_all(seq, Failure::Nacked);
        }
    }
}

/// The whole simulated world around one core.
struct World {
    core: Core,
    slot: Slot,
    broker: Broker,
    window: usize,
    acked: Lsn,
    restarts: usize,
    row_restarts: usize,
    /// Rebase the core to this position at the next restart.
    rebase_next: Option<Lsn>,
    stopped: Option<Stop>,
    /// Rows committed, by id.
    rows: HashMap<String, (Kind, Lsn)>,
    /// The counters the metrics keep: messages the sink accepted, and the
    /// outcomes the core noted (confirmed, returned, rewound).
    accepted: usize,
    settled: usize,
}

impl World {
    fn new(txns: Vec<Txn>, window: usize, row_attempts: u32) -> World {
        World::with_exchange(txns, window, row_attempts, "{aggregate_type}")
    }

    /// A world whose events go to `exchange` (a template or a constant).
    fn with_exchange(txns: Vec<Txn>, window: usize, row_attempts: u32, exchange: &str) -> World {
        // The model's rows name their exchange in aggregate_type and their
        // routing key in aggregate_id.
        let settings = Settings {
            exchange: exchange.into(),
            routing_key: "{aggregate_id}".into(),
            timestamp_column: String::new(),
            ..Settings::default()
        };
        let config = settings.parse().unwrap();
        let limits = crate::sink::amqp::limits(1 << 20, 131_072);
        let mapper = Mapper::new(config.mapping, limits);
        let core_config = CoreConfig {
            window_messages: window,
            window_bytes: 1 << 20,
            on_unroutable: UnroutablePolicy::DeadLetter,
            row_attempts,
        };
        let rows = txns
            .iter()
            .flat_map(|t| t.rows.iter().map(|r| (r.id.clone(), (r.kind, t.end_lsn))))
            .collect();
        let mut world = World {
            core: Core::new(mapper, core_config, Lsn::ZERO),
            slot: Slot {
                txns,
                frames: VecDeque::new(),
            },
            broker: Broker::default(),
            window,
            acked: Lsn::ZERO,
            restarts: 0,
            row_restarts: 0,
            rebase_next: None,
            stopped: None,
            rows,
            accepted: 0,
            settled: 0,
        };
        world.slot.start(Lsn::ZERO);
        world.handle(Event::StreamStarted);
        world
    }

    fn handle(&mut self, event: Event) {
        self.core.handle(event);
        self.apply();
    }

    /// Applies the core's commands and checks what must always hold.
    fn apply(&mut self) {
        while let Some(command) = self.core.next_command() {
            match command {
                Command::Publish { seq, message, .. } => {
                    let refused = message.kind.as_deref() == Some("refused")
                        && message.exchange != "outbox.dead-letter";
                    let handed = if self.broker.halted {
                        Handed::LinkDown("halted after a link failure".into())
                    } else if refused {
                        Handed::Invalid("a header name over 255 bytes".into())
                    } else if self.broker.full_next && !self.broker.inflight.is_empty() {
                        self.broker.full_next = false;
                        Handed::Full
                    } else {
                        self.broker.inflight.push_back((seq, (*message).clone()));
                        self.accepted += 1;
                        Handed::Accepted
                    };
                    self.core.handle(Event::Handed { seq, handed });
                }
                Command::Ack(lsn) => {
                    assert!(lsn >= self.acked, "the ack went backwards");
                    self.acked = lsn;
                    self.check_ack(lsn);
                }
                Command::Restart(restart) => {
                    self.restarts += 1;
                    if restart.cause == RestartCause::Row {
                        self.row_restarts += 1;
                    }
                    // The queue has room again by the time the relay rewinds
                    // (what reached it while full was refused).
                    if self.broker.nacking {
                        self.broker.nack();
                    }
                    self.broker.nacking = false;
                    self.broker.halted = false;
                    // A failover to another history between the sessions.
                    if let Some(at) = self.rebase_next.take() {
                        self.core.rebase(at);
                        self.acked = at;
                    }
                    // The driver: a new stream from the acked position.
                    self.slot.start(self.core.acked());
                    self.core.handle(Event::StreamStarted);
                }
                Command::Stop(stop) => self.stopped = Some(stop),
            }
        }
        // What the core learned was confirmed.
        while let Some(note) = self.core.next_note() {
            match note {
                Note::Confirmed { .. } | Note::Returned => self.settled += 1,
                Note::Rewound(n) => self.settled += n,
                _ => {}
            }
        }
        let stats = self.core.stats();
        // The counters' relation the README states: published = confirmed
        // + not confirmed (returned, rewound) + in flight.
        assert_eq!(
            self.accepted,
            self.settled + stats.inflight_messages,
            "published != confirmed + returned + rewound + in flight"
        );
        assert!(
            stats.inflight_messages <= self.window,
            "{} in flight with a window of {}",
            stats.inflight_messages,
            self.window
        );
        assert!(
            stats.pending <= self.window + 1,
            "{} waiting: memory is not bounded by the window",
            stats.pending
        );
    }

    /// The acked LSN never passes a transaction with a row not yet durable
    /// somewhere (its message or its dead-letter copy), nor an earlier one.
    fn check_ack(&self, lsn: Lsn) {
        for txn in &self.slot.txns {
            if txn.end_lsn > lsn {
                continue;
            }
            for row in &txn.rows {
                assert!(
                    self.broker.confirmed.contains(&row.id),
                    "acked {lsn} past transaction ending {} whose row {} ({:?}) was never confirmed",
                    txn.end_lsn,
                    row.id,
                    row.kind
                );
            }
        }
    }

    fn deliver_outcome(&mut self) -> bool {
        let Some(outcome) = self.broker.outcomes.pop_front() else {
            return false;
        };
        if let Outcome::Confirmed { up_to } = &outcome {
            // Every durable message up to here is now known confirmed to the
            // core (what a real confirm means).
            let ids: Vec<String> = self
                .broker
                .durable
                .iter()
                .filter(|(s, _)| *s <= up_to)
                .map(|(_, id)| id.clone())
                .collect();
            self.broker.confirmed.extend(ids);
        }
        self.handle(Event::Outcome(outcome));
        true
    }

    fn feed_frame(&mut self) -> bool {
        if !self.core.wants_frames() {
            return false;
        }
        match self.slot.frames.pop_front() {
            Some(frame) => {
                self.handle(frame);
                true
            }
            None => false,
        }
    }

    /// One random step; `choice` picks it.
    fn step(&mut self, choice: u8) {
        match choice % 20 {
            0..=6 => {
                self.feed_frame();
            }
            7..=11 => {
                self.deliver_outcome();
            }
            12..=15 => self.broker.process(),
            16 => self.broker.lose_link(usize::from(choice / 20)),
            17 if choice >= 200 => {
                self.broker.dead_letters_unbound = !self.broker.dead_letters_unbound;
            }
            17 => self.broker.nack(),
            18 => self.broker.full_next = true,
            _ => {
                if self.core.wants_frames() {
                    self.handle(Event::StreamLost("terminated".into()));
                }
            }
        }
    }

    /// Runs to the end without faults: everything is read, published and
    /// confirmed.
    fn settle(&mut self) {
        // The operator has bound a queue to the dead-letter exchange.
        self.broker.dead_letters_unbound = false;
        for _ in 0..200_000 {
            let moved = self.feed_frame() | self.deliver_outcome();
            if !moved {
                if self.broker.inflight.is_empty() {
                    if self.slot.frames.is_empty() {
                        return;
                    }
                    // A lost stream waiting for nothing: the drain ended.
                    if self.core.draining() {
                        self.handle(Event::DrainTimedOut);
                    }
                } else {
                    self.broker.process();
                }
            }
        }
        panic!("the core never settled: endless restarts?");
    }
}

/// Transactions of rows; a row marked `true` shares the WAL record (and so
/// the LSN) of the row before it, as COPY's rows do.
fn scenario() -> impl Strategy<Value = Vec<Vec<(Kind, bool)>>> {
    let kind = prop_oneof![
        12 => Just(Kind::Good),
        1 => Just(Kind::NullRoute),
        1 => Just(Kind::Unbound),
        1 => Just(Kind::NoExchange),
        1 => Just(Kind::Poison),
        1 => Just(Kind::Refused),
    ];
    let row = (kind, proptest::bool::weighted(0.3));
    proptest::collection::vec(proptest::collection::vec(row, 0..5), 1..8)
}

fn plain(shape: &[Vec<Kind>]) -> Vec<Vec<(Kind, bool)>> {
    shape
        .iter()
        .map(|t| t.iter().map(|k| (*k, false)).collect())
        .collect()
}

fn build(shape: &[Vec<(Kind, bool)>]) -> Vec<Txn> {
    let mut lsn = 10_000u64;
    let mut n = 0;
    shape
        .iter()
        .map(|kinds| {
            lsn += 2000;
            let rows = kinds
                .iter()
                .enumerate()
                .map(|(i, (kind, shared))| {
                    if !(*shared && i > 0) {
                        lsn += 100;
                    }
                    n += 1;
                    Row {
                        id: format!("row-{n}"),
                        kind: *kind,
                        lsn: Lsn::from_u64(lsn),
                    }
                })
                .collect();
            lsn += 100;
            let commit_lsn = Lsn::from_u64(lsn);
            lsn += 50;
            Txn {
                rows,
                commit_lsn,
                end_lsn: Lsn::from_u64(lsn),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the interleaving of frames, confirms, returns, nacks, lost
    /// links, lost streams and a full sink: the ack never passes an
    /// unconfirmed row; every committed row ends up confirmed in the event
    /// queue or, with its reason, in the dead-letter queue; the event queue
    /// sees rows, first time each, in commit order (duplicates, never gaps
    /// or swaps); memory stays within the window; and once idle, a
    /// keepalive's position is acked.
    #[test]
    fn the_core_keeps_every_guarantee_under_any_interleaving(
        shape in scenario(),
        script in proptest::collection::vec(any::<u8>(), 0..300),
        window in 1usize..6,
        row_attempts in 1u32..4,
    ) {
        let txns = build(&shape);
        let mut world = World::new(txns.clone(), window, row_attempts);
        for choice in script {
            world.step(choice);
            prop_assert!(world.stopped.is_none(), "stopped: {:?}", world.stopped);
        }
        world.settle();
        prop_assert!(world.stopped.is_none(), "stopped: {:?}", world.stopped);

        // Every committed row: in the event queue, or dead-lettered with
        // the reason its kind calls for.
        for (id, (kind, _)) in &world.rows {
            let expected = match kind {
                Kind::Good => None,
                Kind::NullRoute => Some("unroutable_row"),
                Kind::Unbound => Some("no_route"),
                Kind::NoExchange => Some("no_exchange"),
                Kind::Poison => Some("rejected_by_broker"),
                Kind::Refused => Some("refused_by_client"),
            };
            match expected {
                None => prop_assert!(world.broker.main.contains(id), "row {id} never arrived"),
                Some(reason) => prop_assert!(
                    world.broker.dead.iter().any(|(d, r)| d == id && r == reason),
                    "row {id} ({kind:?}) not dead-lettered as {reason}: {:?}",
                    world.broker.dead
                ),
            }
        }
        // First arrivals in commit order.
        let order: Vec<&String> = txns
            .iter()
            .flat_map(|t| t.rows.iter())
            .filter(|r| r.kind == Kind::Good)
            .map(|r| &r.id)
            .collect();
        let mut seen = HashSet::new();
        let first: Vec<&String> = world
            .broker
            .main
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .filter(|id| order.contains(id))
            .collect();
        prop_assert_eq!(first, order, "first arrivals out of commit order");
        // Everything acked once idle, up to a keepalive past the end.
        let last = txns.last().map(|t| t.end_lsn).unwrap_or(Lsn::ZERO);
        prop_assert_eq!(world.acked, last);
        let idle = Lsn::from_u64(last.as_u64() + 4096);
        world.handle(Event::Keepalive { wal_end: idle });
        prop_assert_eq!(world.acked, idle, "an idle relay pins WAL");
    }
}

#[test]
fn a_row_the_broker_keeps_refusing_is_dead_lettered_after_the_bound() {
    for (kind, reason) in [
        (Kind::NoExchange, "no_exchange"),
        (Kind::Poison, "rejected_by_broker"),
    ] {
        let txns = build(&plain(&[vec![Kind::Good, Kind::Good, kind, Kind::Good]]));
        let mut world = World::new(txns, 8, 3);
        world.settle();
        assert_eq!(world.broker.dead.len(), 1, "{kind:?}");
        assert_eq!(world.broker.dead[0].1, reason);
        // Found (one restart to isolate it when the broker does not name
        // it), then tried row_attempts times.
        let bound = if kind == Kind::Poison { 4 } else { 3 };
        assert_eq!(world.row_restarts, bound, "{kind:?}");
        assert_eq!(world.broker.main.iter().collect::<HashSet<_>>().len(), 3);
    }
}

/// One transaction of six rows, all read and published, the first three
/// confirmed by the broker.
fn six_rows_three_confirmed() -> World {
    let txns = build(&plain(&[vec![Kind::Good; 6]]));
    let mut world = World::new(txns, 8, 3);
    for _ in 0..10 {
        world.feed_frame();
    }
    for _ in 0..3 {
        world.broker.process();
    }
    while world.deliver_outcome() {}
    world
}

#[test]
fn rows_confirmed_before_a_rewind_are_not_published_again() {
    let mut world = six_rows_three_confirmed();
    // The link dies with three in flight, none of which reached a queue.
    world.broker.lose_link(0);
    world.settle();
    assert_eq!(
        world.broker.main,
        ["row-1", "row-2", "row-3", "row-4", "row-5", "row-6"]
    );
}

#[test]
fn after_a_rebase_rows_at_remembered_positions_are_published_again() {
    let mut world = six_rows_three_confirmed();
    // A failover to a history that forked before these rows: the core must
    // not skip what the new server holds at the positions it remembers.
    world.rebase_next = Some(Lsn::ZERO);
    world.broker.lose_link(0);
    world.settle();
    let count = |id: &str| world.broker.main.iter().filter(|r| *r == id).count();
    assert_eq!(count("row-1"), 2, "{:?}", world.broker.main);
    assert_eq!(count("row-3"), 2, "{:?}", world.broker.main);
    for row in ["row-4", "row-5", "row-6"] {
        assert_eq!(count(row), 1, "{:?}", world.broker.main);
    }
}

#[test]
fn a_lost_stream_finishes_what_is_in_flight_before_restarting() {
    let txns = build(&plain(&[vec![Kind::Good; 2], vec![Kind::Good; 2]]));
    let mut world = World::new(txns, 8, 3);
    for _ in 0..4 {
        world.feed_frame();
    }
    world.handle(Event::StreamLost("terminated".into()));
    assert!(world.core.draining());
    assert!(!world.core.wants_frames());
    assert_eq!(world.restarts, 0);
    world.broker.process();
    world.broker.process();
    while world.deliver_outcome() {}
    assert_eq!(
        world.restarts, 1,
        "restarted once the in-flight work was confirmed"
    );
    world.settle();
    assert_eq!(world.broker.main.len(), 4, "{:?}", world.broker.main);
}

#[test]
fn shutdown_drains_then_stops_with_the_final_ack() {
    let txns = build(&plain(&[vec![Kind::Good; 2]]));
    let mut world = World::new(txns.clone(), 8, 3);
    for _ in 0..5 {
        world.feed_frame();
    }
    world.handle(Event::Shutdown);
    assert!(world.stopped.is_none());
    world.broker.process();
    world.broker.process();
    while world.deliver_outcome() {}
    assert_eq!(world.stopped, Some(Stop::Shutdown { drained: true }));
    assert_eq!(world.acked, txns[0].end_lsn);
}

#[test]
fn rows_sharing_an_lsn_are_each_published_after_a_lost_stream() {
    // COPY: three rows in one WAL record, one LSN.
    let txns = build(&[vec![
        (Kind::Good, false),
        (Kind::Good, true),
        (Kind::Good, true),
    ]]);
    let mut world = World::new(txns, 8, 3);
    // Relation, Begin, the first row: published and confirmed.
    for _ in 0..3 {
        world.feed_frame();
    }
    world.broker.process();
    while world.deliver_outcome() {}
    // The stream breaks before the second row is read.
    world.handle(Event::StreamLost("terminated".into()));
    world.settle();
    let unique: HashSet<&String> = world.broker.main.iter().collect();
    assert_eq!(unique.len(), 3, "{:?}", world.broker.main);
}

#[test]
fn a_dead_letter_copy_the_broker_returns_holds_the_ack_until_a_queue_is_bound() {
    let txns = build(&plain(&[vec![Kind::Unbound], vec![Kind::Good]]));
    let end = txns[0].end_lsn;
    let mut world = World::new(txns, 8, 3);
    world.broker.dead_letters_unbound = true;
    for _ in 0..50 {
        world.feed_frame();
        world.broker.process();
        world.deliver_outcome();
    }
    assert!(world.restarts > 0, "a returned copy rewinds");
    assert!(
        world.acked < end,
        "acked {} past the row whose copy came back",
        world.acked
    );
    world.settle();
    assert_eq!(world.broker.dead.len(), 1);
    assert!(world.acked > end);
}

/// The seam as the driver uses it, with the in-memory sink: publishes in
/// order, a full sink waits for an outcome, and only confirms move the ack.
#[test]
fn the_core_drives_a_memory_sink_through_the_seam() {
    use crate::sink::{MemorySink, Sink};
    let txns = build(&plain(&[vec![Kind::Good; 3], vec![Kind::Good; 2]]));
    let end = txns[1].end_lsn;
    let mut world = World::new(txns, 8, 3);
    let mut sink = MemorySink::new(crate::sink::amqp::limits(1 << 20, 131_072), 2);
    let mut acked = Lsn::ZERO;
    for _ in 0..200 {
        if let Some(frame) = world.slot.frames.pop_front() {
            if world.core.wants_frames() {
                world.core.handle(frame);
            } else {
                world.slot.frames.push_front(frame);
            }
        }
        while let Some(command) = world.core.next_command() {
            match command {
                Command::Publish { seq, message, .. } => {
                    let handed = sink.publish(seq, &message);
                    world.core.handle(Event::Handed { seq, handed });
                }
                Command::Ack(lsn) => acked = lsn,
                other => panic!("{other:?}"),
            }
        }
        if sink.script.is_empty() {
            sink.confirm_all();
        }
        if let Some(outcome) = sink.take_outcome() {
            world.core.handle(Event::Outcome(outcome));
        }
    }
    let ids: Vec<String> = sink.published.iter().map(|(_, m)| row_id(m)).collect();
    assert_eq!(ids, ["row-1", "row-2", "row-3", "row-4", "row-5"]);
    assert!(acked >= end, "acked {acked}, expected {end}");
}

#[test]
fn on_a_constant_exchange_a_refused_permission_waits_but_a_refused_row_is_still_set_aside() {
    // No permission on the exchange every row goes to: the broker's setup,
    // so the relay waits and rewinds; nothing is dead-lettered.
    let txns = build(&plain(&[vec![Kind::Good; 3]]));
    let mut world = World::with_exchange(txns, 8, 2, "outbox");
    world.broker.access_refused = true;
    for _ in 0..60 {
        world.feed_frame();
        world.broker.process();
        world.deliver_outcome();
    }
    assert!(world.restarts > 3, "the relay rewinds while refused");
    assert!(
        world.row_restarts <= 1,
        "at most one round to find the row, then it waits"
    );
    assert!(world.broker.dead.is_empty(), "{:?}", world.broker.dead);
    world.broker.access_refused = false;
    world.settle();
    assert_eq!(world.broker.main.len(), 3);
    // A row the broker refuses for what it holds is the row's fault even
    // on a constant exchange: it cannot hold the stream.
    let txns = build(&plain(&[vec![Kind::Good, Kind::Poison, Kind::Good]]));
    let mut world = World::with_exchange(txns, 8, 2, "outbox");
    world.settle();
    assert_eq!(world.broker.dead.len(), 1);
    assert_eq!(world.broker.dead[0].1, "rejected_by_broker");
}
