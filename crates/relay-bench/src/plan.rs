//! What one run measures: the counts, rates and durations of each mode.
//!
//! `--smoke` proves the bench still runs end to end in a few seconds (the
//! test suite runs it); `--quick` is the short run (a 100,000-row
//! backlog, no 10,000 events/s phase); the default is the full run.

use std::time::Duration;

/// Which run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Tiny counts: a few seconds, for the test suite.
    Smoke,
    /// A 100,000-row backlog.
    Quick,
    /// A 1,000,000-row backlog and the 10,000 events/s phase.
    Full,
}

/// The counts of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    /// Which run.
    pub mode: Mode,
    /// Rows in the backlog the relay, pg_recvlogical and Debezium drain.
    pub backlog_rows: u64,
    /// Rows per transaction of every backlog.
    pub rows_per_txn: u64,
    /// Messages of the bare lapin loop (the broker's ceiling).
    pub broker_messages: u64,
    /// Rows in the polling publisher's backlog.
    pub poller_rows: u64,
    /// Producer rates of the latency phases, events/s.
    pub latency_rates: Vec<u64>,
    /// How long each latency phase produces.
    #[serde(serialize_with = "as_secs")]
    pub latency_phase: Duration,
    /// Rows of the one big transaction.
    pub big_txn_rows: u64,
    /// Connections that commit a backlog.
    pub loaders: usize,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Plan {
    /// The plan of a mode.
    pub fn new(mode: Mode) -> Plan {
        match mode {
            Mode::Smoke => Plan {
                mode,
                backlog_rows: 2_000,
                rows_per_txn: 10,
                broker_messages: 2_000,
                poller_rows: 2_000,
                latency_rates: vec![100, 500],
                latency_phase: Duration::from_secs(1),
                big_txn_rows: 5_000,
                loaders: 2,
            },
            Mode::Quick => Plan {
                mode,
                backlog_rows: 100_000,
                rows_per_txn: 10,
                broker_messages: 100_000,
                poller_rows: 100_000,
                latency_rates: vec![100, 500, 2_000],
                latency_phase: Duration::from_secs(20),
                big_txn_rows: 1_000_000,
                loaders: 4,
            },
            Mode::Full => Plan {
                mode,
                backlog_rows: 1_000_000,
                rows_per_txn: 10,
                broker_messages: 1_000_000,
                poller_rows: 1_000_000,
                latency_rates: vec![100, 500, 2_000, 10_000],
                latency_phase: Duration::from_secs(20),
                big_txn_rows: 1_000_000,
                loaders: 4,
            },
        }
    }
}
