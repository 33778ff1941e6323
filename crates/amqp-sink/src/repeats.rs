//! Which failures of a retry loop deserve a log line.
//!
//! A loop that retries for an hour must not write a line per attempt, and
//! must not go silent either. [`Repeats`] says: a new failure (a text not
//! seen since the last success: with several brokers down, each broker's
//! own) is logged in full; the same failure again is logged at its attempts
//! 2, 4, 8, 16, 32 and then every 32 attempts, each line carrying the
//! attempt count; the first success after failures is logged once, with how
//! many attempts it took. Pure: the caller keeps the clock and the logger.

/// What to log for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// A failure unlike the last one: log it in full.
    New,
    /// The same failure, `attempts` in a row: log a summary.
    Again {
        /// Attempts that failed the same way, this one included.
        attempts: u32,
    },
    /// The same failure, not worth a line this time.
    Quiet,
}

/// How often the same failure is summarised once it has repeated a while.
const EVERY: u32 = 32;

/// Distinct failures remembered at once (more are forgotten, so a loop
/// whose error texts never repeat cannot grow it).
const DISTINCT: usize = 32;

/// The failures of one retry loop (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct Repeats {
    /// Per failure text: attempts so far, and the attempt of its next line.
    seen: std::collections::HashMap<String, (u32, u32)>,
    total: u32,
}

impl Repeats {
    /// A fresh loop.
    pub fn new() -> Repeats {
        Repeats::default()
    }

    /// An attempt failed with `what` (the error's text).
    pub fn failed(&mut self, what: &str) -> Report {
        self.total = self.total.saturating_add(1);
        let Some((attempts, next_report)) = self.seen.get_mut(what) else {
            if self.seen.len() >= DISTINCT {
                self.seen.clear();
            }
            self.seen.insert(what.to_string(), (1, 2));
            return Report::New;
        };
        *attempts = attempts.saturating_add(1);
        if *attempts < *next_report {
            return Report::Quiet;
        }
        *next_report = if *next_report < EVERY {
            *next_report * 2
        } else {
            next_report.saturating_add(EVERY)
        };
        Report::Again {
            attempts: *attempts,
        }
    }

    /// An attempt succeeded: the number of failed attempts before it, if
    /// there were any (then worth one line).
    pub fn recovered(&mut self) -> Option<u32> {
        let failed = std::mem::take(&mut self.total);
        self.seen.clear();
        (failed > 0).then_some(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_failure_is_reported_at_powers_of_two_then_every_32_attempts() {
        let mut r = Repeats::new();
        let reported: Vec<u32> = (1..=200)
            .filter_map(|_| match r.failed("refused") {
                Report::New => Some(1),
                Report::Again { attempts } => Some(attempts),
                Report::Quiet => None,
            })
            .collect();
        assert_eq!(reported, [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192]);
    }

    #[test]
    fn texts_that_never_repeat_do_not_grow_the_memory() {
        let mut r = Repeats::new();
        for i in 0..1000 {
            assert_eq!(r.failed(&format!("error {i}")), Report::New);
        }
        assert!(r.seen.len() <= DISTINCT);
    }

    #[test]
    fn a_different_failure_is_new_and_a_success_reports_the_attempts_once() {
        let mut r = Repeats::new();
        assert_eq!(r.failed("refused"), Report::New);
        assert_eq!(r.failed("refused"), Report::Again { attempts: 2 });
        assert_eq!(r.failed("refused"), Report::Quiet);
        assert_eq!(r.failed("timed out"), Report::New);
        assert_eq!(r.failed("timed out"), Report::Again { attempts: 2 });
        // Alternating failures (several brokers) each keep their count.
        assert_eq!(r.failed("refused"), Report::Again { attempts: 4 });
        assert_eq!(r.failed("timed out"), Report::Quiet);
        assert_eq!(r.recovered(), Some(7));
        assert_eq!(r.recovered(), None);
        assert_eq!(r.failed("refused"), Report::New);
    }
}
