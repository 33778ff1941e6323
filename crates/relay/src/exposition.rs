//! Which text format `/metrics` answers in, and the conversion between the
//! two.
//!
//! prometheus-client writes OpenMetrics 1.0. Prometheus asks for it in its
//! `Accept` header and gets it; every other client (curl, promtool, an
//! older scraper, a Datadog or Telegraf agent) gets the Prometheus text
//! format 0.0.4, which is what `Accept: text/plain` or no preference means.
//! The two differ in three places only, for the series this relay has: a
//! counter's family is named with its `_total` in 0.0.4 (OpenMetrics names
//! the family without it), OpenMetrics ends with `# EOF` and may carry
//! `# UNIT` lines, and OpenMetrics escapes `"` in help text.

/// A text format of the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain`).
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The format a request's `Accept` header asks for: OpenMetrics when it
/// names `application/openmetrics-text` with a non-zero quality, else the
/// Prometheus text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Prometheus;
    };
    let wants_openmetrics = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        if !media.eq_ignore_ascii_case("application/openmetrics-text") {
            return false;
        }
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        quality > 0.0
    });
    if wants_openmetrics {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

/// Rewrites OpenMetrics text as prometheus-client writes it into the
/// Prometheus text format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // Families whose samples carry a suffix the 0.0.4 family name takes.
    let suffixed: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter_map(|(name, kind)| match kind.trim() {
            "counter" => Some((name, "_total")),
            "info" => Some((name, "_info")),
            _ => None,
        })
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = help.replace("\\\"", "\"");
            format!("# HELP {} {help}", family_name(name, &suffixed))
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind {
                "info" | "stateset" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            format!("# TYPE {} {kind}", family_name(name, &suffixed))
        } else if suffixed
            .iter()
            .any(|(family, suffix)| *suffix == "_total" && is_sample_of(line, family, "_created"))
        {
            // A counter's creation time has no place in 0.0.4.
            continue;
        } else {
            line.to_string()
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}

fn family_name(name: &str, suffixed: &std::collections::HashMap<&str, &str>) -> String {
    match suffixed.get(name) {
        Some(suffix) => format!("{name}{suffix}"),
        None => name.to_string(),
    }
}

/// Whether `line` is a sample of `family` with `suffix`.
fn is_sample_of(line: &str, family: &str, suffix: &str) -> bool {
    line.strip_prefix(family)
        .and_then(|rest| rest.strip_prefix(suffix))
        .is_some_and(|rest| rest.starts_with(['{', ' ']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accept_naming_openmetrics_gets_openmetrics() {
        assert_eq!(negotiate(None), Format::Prometheus);
        assert_eq!(negotiate(Some("text/plain")), Format::Prometheus);
        assert_eq!(negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            negotiate(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")),
            Format::Prometheus
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            negotiate(Some("application/openmetrics-text; q=0")),
            Format::Prometheus
        );
    }

    #[test]
    fn counters_take_their_total_into_the_family_name_and_eof_goes() {
        let om = "# HELP outbox_relay_events_published Events \\\"handed\\\".\n\
                  # TYPE outbox_relay_events_published counter\n\
                  outbox_relay_events_published_total 3\n\
                  outbox_relay_events_published_created 1.7e9\n\
                  # HELP outbox_relay_lag Bytes.\n\
                  # TYPE outbox_relay_lag gauge\n\
                  # UNIT outbox_relay_lag bytes\n\
                  outbox_relay_lag{side=\"a\"} 5\n\
                  # TYPE x info\n\
                  x_info{v=\"1\"} 1\n\
                  # EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP outbox_relay_events_published_total Events \"handed\".\n\
             # TYPE outbox_relay_events_published_total counter\n\
             outbox_relay_events_published_total 3\n\
             # HELP outbox_relay_lag Bytes.\n\
             # TYPE outbox_relay_lag gauge\n\
             outbox_relay_lag{side=\"a\"} 5\n\
             # TYPE x_info gauge\n\
             x_info{v=\"1\"} 1\n"
        );
    }
}
