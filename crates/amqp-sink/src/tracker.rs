//! Confirm tracking as plain logic: which messages are in flight, what the
//! broker said about each, and the ordered outcomes that follow.
//!
//! The broker's answers arrive per message but out of order and in
//! batches (a `multiple` ack or nack covers every tag up to one), and a
//! basic.return carries no delivery tag at all: lapin attaches each return
//! to whichever confirm of the next ack batch it resolves first. So the
//! tracker matches returns to messages itself, by fingerprint (see
//! [`crate::message::fingerprint`]), and marks *every* unreported message
//! with that fingerprint: identical messages can at worst be failed
//! together, never a returned one reported confirmed.
//!
//! A resolved message is reported only once it is *settled*: the I/O side
//! settles what it has seen only after making sure lapin finished handling
//! the broker frame that resolved it (so that a return attached to another
//! message of the same batch has been seen too).
//!
//! Outcomes come out in sequence order: consecutive confirmed messages
//! coalesce into one `Confirmed { up_to }` watermark; anything else is a
//! `Failed { seq, reason }`.

use std::collections::VecDeque;

use crate::error::LinkError;
use crate::outcome::{FailureReason, Seq, SinkEvent};
use crate::window::Release;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Published, no answer yet.
    InFlight,
    /// The broker acked (`ack`) or nacked it; `settled` once safe to report.
    Resolved { ack: bool, settled: bool },
    /// The link failed before an answer.
    Lost(LinkError),
}

#[derive(Debug)]
struct Entry {
    seq: Seq,
    fingerprint: u64,
    release: Release,
    state: State,
    returned: Option<(u16, String)>,
}

/// Unreported messages, in sequence order.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    entries: VecDeque<Entry>,
}

impl Tracker {
    /// A message was published (sequence numbers only grow).
    pub(crate) fn push(&mut self, seq: Seq, fingerprint: u64, release: Release) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq < seq));
        self.entries.push_back(Entry {
            seq,
            fingerprint,
            release,
            state: State::InFlight,
            returned: None,
        });
    }

    /// A message that was never published fails with `error`, after the
    /// messages before it (publishing is halted: see the driver).
    pub(crate) fn push_lost(&mut self, seq: Seq, release: Release, error: LinkError) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq < seq));
        self.entries.push_back(Entry {
            seq,
            fingerprint: 0,
            release,
            state: State::Lost(error),
            returned: None,
        });
    }

    /// Unreported messages.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&mut self, seq: Seq) -> Option<&mut Entry> {
        let index = self.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.entries.get_mut(index)
    }

    /// The broker acked (`ack`) or nacked message `seq`.
    pub(crate) fn resolve(&mut self, seq: Seq, ack: bool) {
        if let Some(entry) = self.entry(seq) {
            if entry.state == State::InFlight {
                entry.state = State::Resolved {
                    ack,
                    settled: false,
                };
            }
        }
    }

    /// Everything resolved so far is safe to report.
    pub(crate) fn settle(&mut self) {
        for entry in &mut self.entries {
            if let State::Resolved { settled, .. } = &mut entry.state {
                *settled = true;
            }
        }
    }

    /// The broker returned a message with this fingerprint; returns whether
    /// it matched any unreported message.
    pub(crate) fn returned(&mut self, fingerprint: u64, reply_code: u16, reply_text: &str) -> bool {
        let mut matched = false;
        // A lost message is past being returned: either the broker never
        // had it (failed unsent) or its link is gone.
        for entry in &mut self.entries {
            if entry.fingerprint == fingerprint && !matches!(entry.state, State::Lost(_)) {
                entry.returned = Some((reply_code, reply_text.to_string()));
                matched = true;
            }
        }
        matched
    }

    /// The link failed: every message without a settled answer is lost
    /// (an answer seen but not settled might hide a return: failing it is
    /// the safe side). Returns how many were failed.
    pub(crate) fn fail_unsettled(&mut self, error: &LinkError) -> usize {
        let mut failed = 0;
        for entry in &mut self.entries {
            match entry.state {
                State::InFlight | State::Resolved { settled: false, .. } => {
                    entry.state = State::Lost(error.clone());
                    failed += 1;
                }
                State::Resolved { settled: true, .. } | State::Lost(_) => {}
            }
        }
        failed
    }

    /// The outcomes that can be reported now, in order, with the window
    /// room each frees.
    pub(crate) fn drain(&mut self) -> Vec<(SinkEvent, Release)> {
        let mut out = Vec::new();
        let mut run: Option<(Seq, Release)> = None;
        while let Some(front) = self.entries.front() {
            let reason = match (&front.state, &front.returned) {
                (State::InFlight, _) | (State::Resolved { settled: false, .. }, _) => break,
                (_, Some((reply_code, reply_text))) => Some(FailureReason::Returned {
                    reply_code: *reply_code,
                    reply_text: reply_text.clone(),
                }),
                (State::Resolved { ack: true, .. }, None) => None,
                (State::Resolved { ack: false, .. }, None) => Some(FailureReason::Nacked),
                (State::Lost(error), None) => Some(FailureReason::Unknown(error.clone())),
            };
            let Some(entry) = self.entries.pop_front() else {
                break;
            };
            match reason {
                None => {
                    let (up_to, release) = run.get_or_insert((entry.seq, Release::default()));
                    *up_to = entry.seq;
                    release.add(entry.release);
                }
                Some(reason) => {
                    if let Some((up_to, release)) = run.take() {
                        out.push((SinkEvent::Confirmed { up_to }, release));
                    }
                    out.push((
                        SinkEvent::Failed {
                            seq: entry.seq,
                            reason,
                        },
                        entry.release,
                    ));
                }
            }
        }
        if let Some((up_to, release)) = run {
            out.push((SinkEvent::Confirmed { up_to }, release));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_failed_unsent_behind_one_in_flight_is_reported_after_it() {
        let mut t = Tracker::default();
        t.push(Seq(1), 11, Release::default());
        t.push(Seq(2), 22, Release::default());
        t.resolve(Seq(1), false);
        t.settle();
        let halted = LinkError::Nacked { seq: 1 };
        t.push_lost(Seq(3), Release::default(), halted.clone());
        // 2 is still in flight: 3's failure waits behind it.
        let first: Vec<SinkEvent> = t.drain().into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            first,
            vec![SinkEvent::Failed {
                seq: Seq(1),
                reason: FailureReason::Nacked
            }]
        );
        // A return matching nothing sent does not touch the unsent one.
        assert!(!t.returned(0, 312, "NO_ROUTE"));
        t.resolve(Seq(2), true);
        t.settle();
        let rest: Vec<SinkEvent> = t.drain().into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            rest,
            vec![
                SinkEvent::Confirmed { up_to: Seq(2) },
                SinkEvent::Failed {
                    seq: Seq(3),
                    reason: FailureReason::Unknown(halted)
                }
            ]
        );
        assert!(t.is_empty());
    }

    fn one() -> Release {
        Release {
            messages: 1,
            bytes: 10,
        }
    }

    fn tracker(n: u64) -> Tracker {
        let mut t = Tracker::default();
        for i in 1..=n {
            t.push(Seq(i), i, one());
        }
        t
    }

    fn events(t: &mut Tracker) -> Vec<SinkEvent> {
        t.drain().into_iter().map(|(e, _)| e).collect()
    }

    fn confirmed(n: u64) -> SinkEvent {
        SinkEvent::Confirmed { up_to: Seq(n) }
    }

    #[test]
    fn consecutive_acks_coalesce_into_one_watermark() {
        let mut t = tracker(5);
        for i in [3, 1, 2, 5] {
            t.resolve(Seq(i), true);
        }
        // Resolved but not settled: nothing yet.
        assert!(events(&mut t).is_empty());
        t.settle();
        assert_eq!(events(&mut t), vec![confirmed(3)]);
        t.resolve(Seq(4), true);
        t.settle();
        let drained = t.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].0, confirmed(5));
        assert_eq!(
            drained[0].1,
            Release {
                messages: 2,
                bytes: 20
            }
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_nack_is_reported_in_order_between_watermarks() {
        let mut t = tracker(4);
        t.resolve(Seq(1), true);
        t.resolve(Seq(2), false);
        t.resolve(Seq(3), true);
        t.settle();
        assert_eq!(
            events(&mut t),
            vec![
                confirmed(1),
                SinkEvent::Failed {
                    seq: Seq(2),
                    reason: FailureReason::Nacked
                },
                confirmed(3),
            ]
        );
    }

    #[test]
    fn a_returned_message_is_never_reported_confirmed() {
        // lapin attached the return for message 2 to the ack of message 3
        // (same multiple-ack batch): matching by fingerprint fixes it.
        let mut t = tracker(3);
        assert!(t.returned(2, 312, "NO_ROUTE"));
        for i in 1..=3 {
            t.resolve(Seq(i), true);
        }
        t.settle();
        assert_eq!(
            events(&mut t),
            vec![
                confirmed(1),
                SinkEvent::Failed {
                    seq: Seq(2),
                    reason: FailureReason::Returned {
                        reply_code: 312,
                        reply_text: "NO_ROUTE".into()
                    }
                },
                confirmed(3),
            ]
        );
        assert!(!t.returned(99, 312, "NO_ROUTE"));
    }

    #[test]
    fn identical_messages_are_failed_together_when_one_is_returned() {
        let mut t = Tracker::default();
        t.push(Seq(1), 7, one());
        t.push(Seq(2), 8, one());
        t.push(Seq(3), 7, one());
        t.returned(7, 312, "NO_ROUTE");
        for i in 1..=3 {
            t.resolve(Seq(i), true);
        }
        t.settle();
        let failed: Vec<Seq> = events(&mut t)
            .into_iter()
            .filter_map(|e| match e {
                SinkEvent::Failed { seq, .. } => Some(seq),
                _ => None,
            })
            .collect();
        assert_eq!(failed, vec![Seq(1), Seq(3)]);
    }

    #[test]
    fn a_lost_link_fails_the_unanswered_and_keeps_the_answered() {
        let mut t = tracker(5);
        t.resolve(Seq(1), true);
        t.resolve(Seq(3), true);
        t.settle();
        // Seen but never settled: might hide a return, so it fails.
        t.resolve(Seq(5), true);
        let error = LinkError::Closed;
        assert_eq!(t.fail_unsettled(&error), 3);
        let unknown = |seq| SinkEvent::Failed {
            seq: Seq(seq),
            reason: FailureReason::Unknown(error.clone()),
        };
        assert_eq!(
            events(&mut t),
            vec![
                confirmed(1),
                unknown(2),
                confirmed(3),
                unknown(4),
                unknown(5)
            ]
        );
    }

    #[test]
    fn gaps_in_sequence_numbers_are_fine() {
        let mut t = Tracker::default();
        t.push(Seq(2), 2, one());
        t.push(Seq(5), 5, one());
        t.resolve(Seq(5), true);
        t.resolve(Seq(2), true);
        t.resolve(Seq(9), true);
        t.settle();
        assert_eq!(events(&mut t), vec![confirmed(5)]);
    }
}
