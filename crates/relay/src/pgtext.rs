//! PostgreSQL's text output formats that the mapping needs to read: bytea
//! (`\x` hex) and timestamps (ISO DateStyle, with the session's offset).
//!
//! Pure code, no date library: the relay needs seconds since the epoch for
//! AMQP's timestamp property and nothing else.

/// Decodes bytea's hex text format (`\x48656c6c6f`); `None` if it is not
/// that format (the escape format of bytea_output = escape is rejected).
pub fn decode_bytea_hex(text: &[u8]) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some((nibble(*hi)? << 4) | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard
/// Hinnant's days_from_civil); `None` if it overflows.
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<i64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?.checked_add(doe - 719_468)
}

/// Parses a timestamp or timestamptz in ISO text form
/// (`2026-11-28 21:04:52.123456+00`, `...+05:30`, or without offset for
/// `timestamp`, read as UTC) into seconds since the UNIX epoch. `None` for
/// anything else (`infinity`, BC dates, other DateStyles, years whose
/// seconds do not fit: the arithmetic is checked, a row cannot crash the
/// relay).
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, rest) = text.split_once(' ').or_else(|| text.split_once('T'))?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1 {
        return None;
    }
    // Time, then an optional offset starting with + or -.
    let offset_at = rest.find(['+', '-']);
    let (time, offset) = match offset_at {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let mut t = time.splitn(3, ':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let seconds = t.next()?;
    let second: i64 = seconds.split('.').next()?.parse().ok()?;
    if !(0..=24).contains(&hour) || !(0..=59).contains(&minute) || !(0..=60).contains(&second) {
        return None;
    }
    let offset_secs = match offset {
        None => 0,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let mut parts = o[1..].splitn(3, ':');
            let h: i64 = parts.next()?.parse().ok()?;
            let m: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
            let s: i64 = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
            if !(0..=99).contains(&h) || !(0..=59).contains(&m) || !(0..=59).contains(&s) {
                return None;
            }
            sign * (h * 3600 + m * 60 + s)
        }
    };
    days_from_civil(year, month, day)?
        .checked_mul(86_400)?
        .checked_add(hour * 3600 + minute * 60 + second)?
        .checked_sub(offset_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_hex_decodes_and_rejects_other_forms() {
        assert_eq!(decode_bytea_hex(b"\\x48656c6C6f").unwrap(), b"Hello");
        assert_eq!(decode_bytea_hex(b"\\x").unwrap(), b"");
        assert!(decode_bytea_hex(b"\\x4").is_none());
        assert!(decode_bytea_hex(b"\\xzz").is_none());
        assert!(decode_bytea_hex(b"Hello").is_none());
    }

    #[test]
    fn iso_timestamps_with_any_offset_become_unix_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00+00"), Some(0));
        assert_eq!(parse_timestamp("2000-01-01 00:00:00+00"), Some(946_684_800));
        assert_eq!(
            parse_timestamp("2026-11-28 21:04:52.123456+00"),
            Some(1_795_899_892)
        );
        // The same instant written in other zones.
        assert_eq!(
            parse_timestamp("2026-11-28 22:04:52+01"),
            Some(1_795_899_892)
        );
        assert_eq!(
            parse_timestamp("2026-11-29 02:34:52+05:30"),
            Some(1_795_899_892)
        );
        assert_eq!(
            parse_timestamp("2026-11-28 13:04:52-08"),
            Some(1_795_899_892)
        );
        // timestamp without time zone reads as UTC.
        assert_eq!(parse_timestamp("2026-11-28 21:04:52"), Some(1_795_899_892));
        assert_eq!(parse_timestamp("1969-12-31 23:59:59+00"), Some(-1));
        for bad in [
            "999999999999-01-01 00:00:00+00",
            "9223372036854775807-12-31 23:59:59+00",
            "2026-01-01 00:00:00+9223372036854775807",
            "infinity",
            "-infinity",
            "",
            "2026-13-01 00:00:00",
            "0044-03-15 12:00:00 BC",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn no_text_makes_timestamp_parsing_panic(s in ".{0,40}", y in proptest::num::i64::ANY) {
            let _ = parse_timestamp(&s);
            let _ = parse_timestamp(&format!("{y}-01-01 00:00:00+00"));
        }
    }
}
