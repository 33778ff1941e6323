//! The LSN ack tracker: which WAL position may be reported to PostgreSQL as
//! flushed.
//!
//! It owns invariant 3 of docs/ARCHITECTURE.md: the flush LSN never passes a
//! transaction whose messages are not all confirmed by the broker, nor any
//! earlier transaction's. Pure code: the pipeline feeds it what it read from
//! the slot (begin, one message, commit with its end LSN, keepalive
//! positions) and what the broker confirmed, and asks it for the LSN to ack.
//!
//! The rules:
//! - a transaction is tracked by its Commit's `end_lsn` (not `commit_lsn`:
//!   acking `commit_lsn` makes PostgreSQL re-send the last transaction after
//!   every restart) and by its count of unconfirmed messages;
//! - the acked LSN is the end LSN of the newest transaction such that it and
//!   every earlier one are committed and fully confirmed;
//! - a transaction with no outbox messages is acked as it passes, once every
//!   earlier one is done;
//! - with nothing open and nothing in flight, a keepalive's position is
//!   acked, so an idle outbox does not pin WAL (invariant 6);
//! - the acked LSN never goes backwards.

use std::collections::VecDeque;

use pgoutput::Lsn;

/// Identifies one transaction of the tracker (the order the slot sent them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(u64);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Txn {
    id: TxnId,
    /// `None` while the transaction is still being read (no Commit yet).
    end_lsn: Option<Lsn>,
    unconfirmed: u64,
}

impl Txn {
    fn is_done(&self) -> bool {
        self.end_lsn.is_some() && self.unconfirmed == 0
    }
}

/// A misuse of the tracker by the pipeline: a bug, reported rather than
/// silently mis-acking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The transaction is not (or no longer) tracked.
    #[error("transaction {0:?} is not tracked (already done, or dropped by a reset)")]
    Unknown(TxnId),
    /// More confirms than messages for a transaction.
    #[error("transaction {0:?} has no unconfirmed message left to confirm")]
    OverConfirmed(TxnId),
    /// A message or commit for a transaction that was already committed.
    #[error("transaction {0:?} is already committed")]
    AlreadyCommitted(TxnId),
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AckTracker {
    /// Transactions not yet acked, oldest first.
    txns: VecDeque<Txn>,
    next_id: u64,
    acked: Lsn,
}

impl AckTracker {
    /// A tracker whose starting point is the slot's confirmed_flush_lsn
    /// (the position streaming resumes from: it is already acked).
    pub fn new(start: Lsn) -> AckTracker {
        AckTracker {
            txns: VecDeque::new(),
            next_id: 0,
            acked: start,
        }
    }

    /// A Begin was read: a new transaction, after every earlier one.
    pub fn begin(&mut self) -> TxnId {
        let id = TxnId(self.next_id);
        self.next_id += 1;
        self.txns.push_back(Txn {
            id,
            end_lsn: None,
            unconfirmed: 0,
        });
        id
    }

    /// One message of this transaction was handed to the broker (it counts
    /// until [`confirm`](Self::confirm)).
    pub fn add_message(&mut self, id: TxnId) -> Result<(), TrackerError> {
        let txn = self.find(id)?;
        if txn.end_lsn.is_some() {
            return Err(TrackerError::AlreadyCommitted(id));
        }
        txn.unconfirmed += 1;
        Ok(())
    }

    /// The transaction's Commit was read; `end_lsn` is the Commit message's
    /// end LSN.
    pub fn commit(&mut self, id: TxnId, end_lsn: Lsn) -> Result<(), TrackerError> {
        let txn = self.find(id)?;
        if txn.end_lsn.is_some() {
            return Err(TrackerError::AlreadyCommitted(id));
        }
        txn.end_lsn = Some(end_lsn);
        self.merge_done_back();
        self.advance();
        Ok(())
    }

    /// Keeps the list as long as the unconfirmed work, not as long as the
    /// stream: a transaction that is done when it commits (no outbox rows,
    /// or all confirmed already) but waits behind an earlier one folds into
    /// that one, which then ends where it ended. Without this, every
    /// transaction of the database would queue up behind one slow confirm.
    fn merge_done_back(&mut self) {
        let len = self.txns.len();
        if len < 2 {
            return;
        }
        let done_back = self.txns.back().is_some_and(Txn::is_done);
        let prev_committed = self.txns.get(len - 2).is_some_and(|t| t.end_lsn.is_some());
        if done_back && prev_committed {
            if let Some(done) = self.txns.pop_back() {
                if let Some(prev) = self.txns.back_mut() {
                    prev.end_lsn = done.end_lsn.max(prev.end_lsn);
                }
            }
        }
    }

    /// The broker took responsibility for one message of this transaction
    /// (a confirm of the message itself or of its dead-letter copy).
    pub fn confirm(&mut self, id: TxnId) -> Result<(), TrackerError> {
        let txn = self.find(id)?;
        txn.unconfirmed = txn
            .unconfirmed
            .checked_sub(1)
            .ok_or(TrackerError::OverConfirmed(id))?;
        self.advance();
        Ok(())
    }

    /// A standalone event outside any transaction (a non-transactional
    /// logical decoding message at `lsn`) handed to the broker: a
    /// transaction of one message that ends at `lsn`.
    pub fn standalone(&mut self, lsn: Lsn) -> TxnId {
        let id = self.begin();
        if let Some(txn) = self.txns.back_mut() {
            txn.unconfirmed = 1;
            txn.end_lsn = Some(lsn);
        }
        id
    }

    /// The server reported its WAL position in a keepalive, in stream order
    /// (every frame sent before it has been fed to the tracker). If nothing
    /// is open or in flight, that position is acked.
    pub fn keepalive(&mut self, wal_end: Lsn) {
        if self.txns.is_empty() && wal_end > self.acked {
            self.acked = wal_end;
        }
    }

    /// After a publish failure the pipeline drops everything in flight and
    /// streams again from the slot: forget every pending transaction. The
    /// acked LSN stays (it only covers confirmed work).
    pub fn reset(&mut self) {
        self.txns.clear();
    }

    /// The LSN that may be reported to PostgreSQL as flushed.
    pub fn acked(&self) -> Lsn {
        self.acked
    }

    /// Transactions read but not yet acked.
    pub fn pending_transactions(&self) -> usize {
        self.txns.len()
    }

    /// Messages handed to the broker and not yet confirmed.
    pub fn unconfirmed_messages(&self) -> u64 {
        self.txns.iter().map(|t| t.unconfirmed).sum()
    }

    fn find(&mut self, id: TxnId) -> Result<&mut Txn, TrackerError> {
        // Ids are handed out in increasing order and the list stays sorted
        // by id (entries leave from the front, or fold into their
        // predecessor once done): a binary search finds one.
        let index = self
            .txns
            .binary_search_by_key(&id, |t| t.id)
            .map_err(|_| TrackerError::Unknown(id))?;
        self.txns.get_mut(index).ok_or(TrackerError::Unknown(id))
    }

    /// Pops every done transaction at the front; the last one's end LSN is
    /// the new acked position.
    fn advance(&mut self) {
        while let Some(front) = self.txns.front() {
            if !front.is_done() {
                break;
            }
            if let Some(end) = front.end_lsn {
                if end > self.acked {
                    self.acked = end;
                }
            }
            self.txns.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lsn(v: u64) -> Lsn {
        Lsn::from_u64(v)
    }

    #[test]
    fn slot_never_acks_past_an_unconfirmed_transaction() {
        let mut t = AckTracker::new(lsn(100));
        let a = t.begin();
        t.add_message(a).unwrap();
        t.commit(a, lsn(200)).unwrap();
        let b = t.begin();
        t.add_message(b).unwrap();
        t.commit(b, lsn(300)).unwrap();
        // b is confirmed first: a still holds the ack back.
        t.confirm(b).unwrap();
        assert_eq!(t.acked(), lsn(100));
        t.confirm(a).unwrap();
        assert_eq!(t.acked(), lsn(300));
    }

    #[test]
    fn acks_the_commit_end_lsn_of_a_fully_confirmed_transaction() {
        let mut t = AckTracker::new(lsn(0));
        let a = t.begin();
        t.add_message(a).unwrap();
        t.add_message(a).unwrap();
        t.confirm(a).unwrap();
        t.confirm(a).unwrap();
        // Confirmed but not committed yet: more messages may follow.
        assert_eq!(t.acked(), lsn(0));
        t.commit(a, lsn(500)).unwrap();
        assert_eq!(t.acked(), lsn(500));
        assert_eq!(t.pending_transactions(), 0);
    }

    #[test]
    fn transactions_without_outbox_rows_are_acked_as_they_pass() {
        let mut t = AckTracker::new(lsn(10));
        let a = t.begin();
        t.commit(a, lsn(20)).unwrap();
        assert_eq!(t.acked(), lsn(20));
        // ... but not past an earlier transaction still in flight.
        let b = t.begin();
        t.add_message(b).unwrap();
        t.commit(b, lsn(30)).unwrap();
        let c = t.begin();
        t.commit(c, lsn(40)).unwrap();
        assert_eq!(t.acked(), lsn(20));
        t.confirm(b).unwrap();
        assert_eq!(t.acked(), lsn(40));
    }

    #[test]
    fn idle_outbox_acks_keepalive_positions() {
        let mut t = AckTracker::new(lsn(10));
        t.keepalive(lsn(1_000));
        assert_eq!(t.acked(), lsn(1_000));
        // An open transaction (Begin read, no Commit yet) blocks it...
        let a = t.begin();
        t.keepalive(lsn(2_000));
        assert_eq!(t.acked(), lsn(1_000));
        // ... and so does one committed but in flight.
        t.add_message(a).unwrap();
        t.commit(a, lsn(1_500)).unwrap();
        t.keepalive(lsn(2_000));
        assert_eq!(t.acked(), lsn(1_000));
        t.confirm(a).unwrap();
        assert_eq!(t.acked(), lsn(1_500));
        t.keepalive(lsn(2_000));
        assert_eq!(t.acked(), lsn(2_000));
    }

    #[test]
    fn acked_lsn_never_goes_backwards() {
        let mut t = AckTracker::new(lsn(1_000));
        t.keepalive(lsn(500));
        assert_eq!(t.acked(), lsn(1_000));
        let a = t.begin();
        t.commit(a, lsn(900)).unwrap();
        assert_eq!(t.acked(), lsn(1_000));
    }

    #[test]
    fn reset_forgets_in_flight_work_but_keeps_the_acked_position() {
        let mut t = AckTracker::new(lsn(0));
        let a = t.begin();
        t.add_message(a).unwrap();
        t.commit(a, lsn(100)).unwrap();
        t.confirm(a).unwrap();
        let b = t.begin();
        t.add_message(b).unwrap();
        t.commit(b, lsn(200)).unwrap();
        t.reset();
        assert_eq!(t.acked(), lsn(100));
        assert_eq!(t.unconfirmed_messages(), 0);
        assert_eq!(t.confirm(b), Err(TrackerError::Unknown(b)));
        // Streaming again from the slot re-sends b.
        let b2 = t.begin();
        t.add_message(b2).unwrap();
        t.commit(b2, lsn(200)).unwrap();
        t.confirm(b2).unwrap();
        assert_eq!(t.acked(), lsn(200));
    }

    #[test]
    fn standalone_messages_ack_at_their_own_lsn_in_order() {
        let mut t = AckTracker::new(lsn(0));
        let a = t.begin();
        t.add_message(a).unwrap();
        t.commit(a, lsn(100)).unwrap();
        let m = t.standalone(lsn(150));
        t.confirm(m).unwrap();
        assert_eq!(t.acked(), lsn(0));
        t.confirm(a).unwrap();
        assert_eq!(t.acked(), lsn(150));
    }

    #[test]
    fn transactions_without_rows_behind_a_slow_confirm_do_not_pile_up() {
        let mut t = AckTracker::new(lsn(0));
        let slow = t.begin();
        t.add_message(slow).unwrap();
        t.commit(slow, lsn(100)).unwrap();
        for i in 0..10_000u64 {
            let empty = t.begin();
            t.commit(empty, lsn(200 + i)).unwrap();
        }
        assert_eq!(t.pending_transactions(), 1);
        assert_eq!(t.acked(), lsn(0));
        t.confirm(slow).unwrap();
        assert_eq!(t.acked(), lsn(10_199));
    }

    #[test]
    fn misuse_is_an_error_not_a_wrong_ack() {
        let mut t = AckTracker::new(lsn(0));
        let a = t.begin();
        assert_eq!(t.confirm(a), Err(TrackerError::OverConfirmed(a)));
        t.add_message(a).unwrap();
        t.commit(a, lsn(10)).unwrap();
        assert_eq!(t.add_message(a), Err(TrackerError::AlreadyCommitted(a)));
        assert_eq!(t.commit(a, lsn(11)), Err(TrackerError::AlreadyCommitted(a)));
        t.confirm(a).unwrap();
        assert_eq!(t.confirm(a), Err(TrackerError::Unknown(a)));
        assert_eq!(t.acked(), lsn(10));
    }

    /// One step of a random interleaving.
    #[derive(Debug, Clone)]
    enum Step {
        /// Read the next transaction of the script (begin, its messages, commit).
        Read,
        /// Confirm the n-th outstanding message (modulo), in any order: confirms
        /// of dead-letter copies arrive out of publish order.
        Confirm(usize),
        /// A keepalive at the current end of the stream.
        Keepalive,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::Read),
            4 => any::<usize>().prop_map(Step::Confirm),
            1 => Just(Step::Keepalive),
        ]
    }

    proptest! {
        /// Whatever the interleaving of reads, confirms and keepalives: the
        /// acked LSN never passes a transaction with an unconfirmed message,
        /// never goes backwards, and reaches the last end LSN once all is
        /// confirmed.
        #[test]
        fn ack_never_passes_unconfirmed_work(
            sizes in proptest::collection::vec(0u64..4, 1..30),
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut t = AckTracker::new(lsn(0));
            // Transaction i ends at LSN (i + 1) * 100.
            let end = |i: usize| lsn((u64::try_from(i).unwrap() + 1) * 100);
            let mut next_txn = 0usize;
            // Outstanding messages: (script index, tracker id).
            let mut outstanding: Vec<(usize, TxnId)> = Vec::new();
            let mut last_acked = t.acked();
            let read_all = |t: &mut AckTracker, next: &mut usize, out: &mut Vec<(usize, TxnId)>| {
                let i = *next;
                let id = t.begin();
                for _ in 0..sizes[i] {
                    t.add_message(id).unwrap();
                    out.push((i, id));
                }
                t.commit(id, end(i)).unwrap();
                *next += 1;
            };
            for s in steps {
                match s {
                    Step::Read if next_txn < sizes.len() => {
                        read_all(&mut t, &mut next_txn, &mut outstanding)
                    }
                    Step::Read => {}
                    Step::Confirm(n) if !outstanding.is_empty() => {
                        let (_, id) = outstanding.remove(n % outstanding.len());
                        t.confirm(id).unwrap();
                    }
                    Step::Confirm(_) => {}
                    Step::Keepalive => {
                        let pos = if next_txn == 0 { lsn(50) } else { end(next_txn - 1) };
                        t.keepalive(pos);
                    }
                }
                let acked = t.acked();
                prop_assert!(acked >= last_acked, "acked went back");
                last_acked = acked;
                if let Some(oldest) = outstanding.iter().map(|(i, _)| *i).min() {
                    prop_assert!(acked < end(oldest),
                        "acked {acked} passes transaction {oldest} ending at {}", end(oldest));
                }
            }
            // Read the rest, confirm everything: the ack reaches the end.
            while next_txn < sizes.len() {
                read_all(&mut t, &mut next_txn, &mut outstanding);
            }
            for (_, id) in outstanding.drain(..) {
                t.confirm(id).unwrap();
            }
            prop_assert_eq!(t.acked(), end(sizes.len() - 1));
            prop_assert_eq!(t.pending_transactions(), 0);
        }
    }
}
