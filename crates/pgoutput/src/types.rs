//! Newtypes for the protocol values that cross crate boundaries: `Lsn`,
//! `Xid`, `Oid` and `PgTimestamp`. No bare integer LSN leaves this crate.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A WAL position (log sequence number). Text form `16/B374D848`: the high
/// and low 32 bits in uppercase hex, as PostgreSQL prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// The invalid position `0/0` (PostgreSQL's InvalidXLogRecPtr).
    pub const ZERO: Lsn = Lsn(0);

    /// From the 64-bit value on the wire.
    pub const fn from_u64(value: u64) -> Lsn {
        Lsn(value)
    }

    /// The 64-bit value for the wire.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is `0/0`.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Bytes of WAL from `earlier` to `self` (0 if `earlier` is later).
    pub const fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Lsn {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> u64 {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not an LSN: expected two hex numbers of at most 8 digits separated by '/', \
             like 16/B374D848",
            self.0
        )
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// A transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An object id (a relation's, a type's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A PostgreSQL timestamp on the wire: microseconds since 2000-01-01 00:00
/// UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(i64);

/// Seconds from the UNIX epoch to PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

impl PgTimestamp {
    /// From the microseconds since 2000-01-01 sent on the wire.
    pub const fn from_micros(micros: i64) -> PgTimestamp {
        PgTimestamp(micros)
    }

    /// Microseconds since 2000-01-01 UTC, for the wire.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// As a `SystemTime` (saturating at the UNIX epoch for older values).
    pub fn to_system_time(self) -> SystemTime {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let delta = Duration::from_micros(self.0.unsigned_abs());
        if self.0 >= 0 {
            epoch + delta
        } else {
            epoch.checked_sub(delta).unwrap_or(UNIX_EPOCH)
        }
    }

    /// From a `SystemTime` (saturating at the representable range).
    pub fn from_system_time(t: SystemTime) -> PgTimestamp {
        let epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match t.duration_since(epoch) {
            Ok(after) => PgTimestamp(micros(after)),
            Err(before) => PgTimestamp(-micros(before.duration())),
        }
    }

    /// Seconds since the UNIX epoch (negative before 1970), for AMQP's
    /// timestamp property and logs.
    pub fn unix_seconds(self) -> i64 {
        // Floor division: -0.5 s before the epoch is second -1, not 0.
        self.0.div_euclid(1_000_000) + 946_684_800
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_form_matches_postgres() {
        let lsn = Lsn::from_u64(0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), lsn);
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::ZERO);
        assert_eq!("0/1a".parse::<Lsn>().unwrap().to_string(), "0/1A");
        for bad in ["", "16", "16/", "/1", "x/1", "123456789/0", "1/2/3", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lsn_round_trips_every_value_shape() {
        for v in [0, 1, u64::from(u32::MAX), u64::from(u32::MAX) + 1, u64::MAX] {
            let lsn = Lsn::from_u64(v);
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
    }

    #[test]
    fn pg_timestamps_convert_to_unix_time() {
        assert_eq!(PgTimestamp::from_micros(0).unix_seconds(), 946_684_800);
        let t = PgTimestamp::from_micros(1_500_000);
        assert_eq!(
            t.to_system_time(),
            UNIX_EPOCH + Duration::from_micros(946_684_800_000_000 + 1_500_000)
        );
        assert_eq!(PgTimestamp::from_system_time(t.to_system_time()), t);
        let before = PgTimestamp::from_micros(-2_000_000);
        assert_eq!(before.unix_seconds(), 946_684_798);
        // Half a second before the PostgreSQL epoch lies in the second before it.
        assert_eq!(
            PgTimestamp::from_micros(-500_000).unix_seconds(),
            946_684_799
        );
        assert_eq!(
            PgTimestamp::from_system_time(before.to_system_time()),
            before
        );
    }
}
