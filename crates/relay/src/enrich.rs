//! What the mapping adds to an event's headers beyond its columns: the W3C
//! Trace Context a producer left in the row, so that its trace continues in
//! the consumers, and the CloudEvents attributes when asked for. Pure.
//!
//! Trace context: a `traceparent` column (and `tracestate`) travels as
//! headers of the same names, like any column, but only when valid (W3C
//! Trace Context level 1: `version-traceid-parentid-flags`, lower-case hex,
//! neither id all zeros, version not `ff`); an invalid one is left out with
//! its `tracestate`, as the specification tells a receiver to do (the
//! consumer then starts a new trace) rather than failing the event.
//! Debezium's `tracingspancontext` column (java.util.Properties text, as
//! its tracing interceptor writes it) is read too: its `traceparent` and
//! `tracestate` entries become those headers when the row has none.
//!
//! CloudEvents (`cloudevents = true`): the AMQP binding's binary content
//! mode, attributes as `cloudEvents:`-prefixed headers (`specversion` 1.0,
//! `id` = the event id, `source`, `type` = the event type, `time` as RFC
//! 3339 from the timestamp column, `subject` from a column), and
//! `datacontenttype` as the message's content-type property, which is
//! where the binding puts it.

use crate::mapping::HeaderValue;

/// The header names of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";
/// See [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";
/// Debezium's span-context column.
pub const DEBEZIUM_SPAN_CONTEXT: &str = "tracingspancontext";

/// Whether `value` is a valid `traceparent` (W3C Trace Context level 1).
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts.as_slice() {
        [version, trace_id, parent_id, flags, rest @ ..] => {
            hex(version, 2)
                && *version != "ff"
                // Version 00 has exactly four fields; later versions may add.
                && (rest.is_empty() || *version != "00")
                && hex(trace_id, 32)
                && trace_id.bytes().any(|b| b != b'0')
                && hex(parent_id, 16)
                && parent_id.bytes().any(|b| b != b'0')
                && hex(flags, 2)
        }
        _ => false,
    }
}

/// Whether `value` is a plausible `tracestate`: at most 32 comma-separated
/// `key=value` members, 512 characters in all, printable ASCII.
pub fn valid_tracestate(value: &str) -> bool {
    if value.len() > 512 || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return false;
    }
    let members: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    members.len() <= 32
        && members.iter().all(|m| {
            m.split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty() && !v.contains('='))
        })
}

fn text_of<'a>(headers: &'a [(String, HeaderValue)], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|(n, v)| match v {
        HeaderValue::Text(t) if n == name => Some(t.as_str()),
        _ => None,
    })
}

/// Keeps the trace context headers only when valid, and derives them from
/// Debezium's `tracingspancontext` when the row has none of its own.
pub fn trace_context(headers: &mut Vec<(String, HeaderValue)>) {
    // Of several entries of a name (a column and the headers column's
    // JSON), the last is what the broker keeps: judge that one, drop the
    // rest.
    for name in [TRACEPARENT, TRACESTATE] {
        if let Some(last) = headers.iter().rposition(|(n, _)| n == name) {
            let mut i = 0;
            headers.retain(|(n, _)| {
                let keep = n != name || i == last;
                i += 1;
                keep
            });
        }
    }
    if text_of(headers, TRACEPARENT).is_none() {
        if let Some(context) = text_of(headers, DEBEZIUM_SPAN_CONTEXT) {
            let entries = crate::debezium::parse_properties(context);
            if let Some(parent) = entries.get(TRACEPARENT) {
                let mut derived = vec![(
                    TRACEPARENT.to_string(),
                    HeaderValue::Text(parent.trim().to_string()),
                )];
                if let Some(state) = entries.get(TRACESTATE) {
                    derived.push((
                        TRACESTATE.to_string(),
                        HeaderValue::Text(state.trim().to_string()),
                    ));
                }
                headers.retain(|(n, _)| n != TRACESTATE);
                headers.extend(derived);
            }
        }
    }
    let parent_ok = text_of(headers, TRACEPARENT).is_some_and(valid_traceparent);
    let state_ok = parent_ok && text_of(headers, TRACESTATE).is_none_or(valid_tracestate);
    headers.retain(|(n, v)| match n.as_str() {
        TRACEPARENT => parent_ok && matches!(v, HeaderValue::Text(_)),
        TRACESTATE => state_ok && matches!(v, HeaderValue::Text(_)),
        _ => true,
    });
}

/// What `cloudevents = true` needs beyond the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvents {
    /// The `source` attribute (a URI reference).
    pub source: String,
    /// The column whose value is the `subject` ("" for none).
    pub subject_column: String,
}

/// The CloudEvents attributes of one event, as headers (see the module
/// documentation). `subject` is the subject column's value, if any.
pub fn cloudevents_headers(
    ce: &CloudEvents,
    id: &str,
    kind: &str,
    timestamp: Option<u64>,
    subject: Option<&str>,
) -> Vec<(String, HeaderValue)> {
    let mut out = vec![
        ("cloudEvents:specversion".to_string(), "1.0".to_string()),
        ("cloudEvents:id".to_string(), id.to_string()),
        ("cloudEvents:source".to_string(), ce.source.clone()),
        ("cloudEvents:type".to_string(), kind.to_string()),
    ];
    // RFC 3339 has four-digit years: a later time is left out.
    if let Some(secs) = timestamp.filter(|s| *s < 253_402_300_800) {
        out.push(("cloudEvents:time".to_string(), rfc3339(secs)));
    }
    if let Some(subject) = subject.filter(|s| !s.is_empty()) {
        out.push(("cloudEvents:subject".to_string(), subject.to_string()));
    }
    out.into_iter()
        .map(|(k, v)| (k, HeaderValue::Text(v)))
        .collect()
}

/// Seconds since the UNIX epoch as RFC 3339 in UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, HeaderValue)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), HeaderValue::Text(v.to_string())))
            .collect()
    }

    #[test]
    fn traceparent_is_checked_as_w3c_says() {
        assert!(valid_traceparent(PARENT));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
        // A later version may carry more fields.
        assert!(valid_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        assert!(valid_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(!valid_tracestate("no-equals"));
        assert!(!valid_tracestate(&"a=b,".repeat(40)));
    }

    #[test]
    fn valid_trace_headers_stay_and_invalid_ones_go_with_their_state() {
        let mut ok = h(&[
            ("traceparent", PARENT),
            ("tracestate", "rojo=1"),
            ("x", "y"),
        ]);
        trace_context(&mut ok);
        assert_eq!(ok.len(), 3);
        let mut bad = h(&[
            ("traceparent", "garbage"),
            ("tracestate", "rojo=1"),
            ("x", "y"),
        ]);
        trace_context(&mut bad);
        assert_eq!(bad, h(&[("x", "y")]));
        let mut bad_state = h(&[("traceparent", PARENT), ("tracestate", "=")]);
        trace_context(&mut bad_state);
        assert_eq!(bad_state, h(&[("traceparent", PARENT)]));
    }

    #[test]
    fn of_two_traceparents_the_one_the_broker_keeps_is_the_one_judged() {
        let mut headers = h(&[("traceparent", PARENT), ("x", "y"), ("traceparent", "junk")]);
        trace_context(&mut headers);
        assert_eq!(headers, h(&[("x", "y")]));
        let mut headers = h(&[("traceparent", "junk"), ("traceparent", PARENT)]);
        trace_context(&mut headers);
        assert_eq!(headers, h(&[("traceparent", PARENT)]));
    }

    #[test]
    fn debeziums_span_context_column_becomes_w3c_headers() {
        let context =
            format!("#Thu Nov 30 12:00:00 UTC 2026\ntraceparent={PARENT}\ntracestate=rojo\\=1\n");
        let mut headers = h(&[("aggregate_id", "42"), ("tracingspancontext", &context)]);
        trace_context(&mut headers);
        assert_eq!(text_of(&headers, "traceparent"), Some(PARENT));
        assert_eq!(text_of(&headers, "tracestate"), Some("rojo=1"));
        // The row's own traceparent wins over the span context.
        let other = "00-11111111111111111111111111111111-2222222222222222-00";
        let mut both = h(&[("traceparent", other), ("tracingspancontext", &context)]);
        trace_context(&mut both);
        assert_eq!(text_of(&both, "traceparent"), Some(other));
    }

    #[test]
    fn cloudevents_attributes_have_the_bindings_names() {
        let ce = CloudEvents {
            source: "/shop/public.outbox".into(),
            subject_column: "aggregate_id".into(),
        };
        let headers = cloudevents_headers(&ce, "e-1", "created", Some(1_795_899_892), Some("42"));
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "cloudEvents:specversion",
                "cloudEvents:id",
                "cloudEvents:source",
                "cloudEvents:type",
                "cloudEvents:time",
                "cloudEvents:subject"
            ]
        );
        assert_eq!(
            text_of(&headers, "cloudEvents:time"),
            Some("2026-11-28T21:04:52Z")
        );
        assert_eq!(text_of(&headers, "cloudEvents:specversion"), Some("1.0"));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    proptest! {
        #[test]
        fn trace_context_never_panics_and_keeps_only_valid_parents(
            parent in ".{0,80}", state in ".{0,80}", context in ".{0,200}"
        ) {
            let mut headers = h(&[("traceparent", &parent), ("tracestate", &state), ("tracingspancontext", &context)]);
            trace_context(&mut headers);
            if let Some(p) = text_of(&headers, "traceparent") {
                prop_assert!(valid_traceparent(p));
            }
        }
    }
}
