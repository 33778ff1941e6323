//! The report: one table (figure | outbox-relay | ceiling or peer | ratio),
//! the targets with met/missed, the machine, and the JSON with the
//! top-level keys scripts read.

use serde_json::{json, Value};

use crate::phases::{PgCost, Results};
use crate::stats::per_100k;

/// The machine a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Cores the bench may use.
    pub nproc: usize,
    /// /proc/cpuinfo's model name.
    pub cpu_model: String,
    /// PostgreSQL's version() of the bench cluster.
    pub postgres: String,
    /// The broker's version.
    pub rabbitmq: String,
    /// uname -r.
    pub kernel: String,
    /// /proc/loadavg when the run started and ended (other work on the
    /// machine makes figures noisy).
    pub load_at_start: String,
    /// See `load_at_start`.
    pub load_at_end: String,
}

fn first_line_of(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The load average now.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    /// Reads the machine's facts.
    pub fn read(postgres: &str, load_at_start: String) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let rabbitmq = first_line_of("rabbitmq-diagnostics", &["server_version", "-q"])
            .or_else(|| first_line_of("rabbitmqctl", &["version"]))
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            postgres: postgres.to_string(),
            rabbitmq,
            kernel: first_line_of("uname", &["-r"]).unwrap_or_default(),
            load_at_start,
            load_at_end: loadavg(),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What is measured.
    pub figure: String,
    /// The relay's figure.
    pub relay: String,
    /// The ceiling or peer it is set beside.
    pub other: String,
    /// relay / other (or other / relay for costs), with what it means.
    pub ratio: String,
}

/// One target of the issue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    /// The target.
    pub target: String,
    /// The measured figure.
    pub measured: String,
    /// Met, missed, or not measured (None).
    pub met: Option<bool>,
}

fn row(
    figure: impl Into<String>,
    relay: impl Into<String>,
    other: impl Into<String>,
    ratio: impl Into<String>,
) -> Row {
    Row {
        figure: figure.into(),
        relay: relay.into(),
        other: other.into(),
        ratio: ratio.into(),
    }
}

fn thousands(v: f64) -> String {
    // Rates are positive and far below 2^53: format the rounded integer.
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_infinite() => "> 33 s".into(),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// The rows of the table.
pub fn rows(r: &Results) -> Vec<Row> {
    let mut rows = Vec::new();
    let ceiling = r.broker.events_per_s.min(r.wal.rows_per_s);
    let n = thousands(crate::stats::count_f64(r.drain.events));
    rows.push(row(
        "1a broker ceiling: bare lapin, confirms, window 1024, better of 2 runs (msg/s)",
        "",
        thousands(r.broker.events_per_s),
        r.broker_runs
            .iter()
            .map(|b| thousands(b.events_per_s))
            .collect::<Vec<_>>()
            .join(" / "),
    ));
    rows.push(row(
        "1b WAL-read ceiling: pg_recvlogical, pgoutput (rows/s)",
        "",
        thousands(r.wal.rows_per_s),
        "",
    ));
    rows.push(row(
        "1c the relay's own ceiling: slot, decode, map, track, ack into the null sink (events/s) vs 1b",
        thousands(r.null.events_per_s),
        thousands(r.wal.rows_per_s),
        format!("{:.0}%", 100.0 * r.null.events_per_s / r.wal.rows_per_s.max(1e-9)),
    ));
    rows.push(row(
        "1c CPU seconds per 100k events / peak RSS (MiB), null sink",
        format!(
            "{:.2} / {:.1}",
            r.null.cpu_s_per_100k,
            r.null.usage.peak_rss_mib()
        ),
        "",
        "",
    ));
    let floor = per_100k(r.bare.0.cpu_secs, r.bare.1) + per_100k(r.wal.cost.cpu_secs, r.wal.rows);
    rows.push(row(
        "1d the floor of cost: CPU s per 100k, bare lapin loop + pg_recvlogical, each a process of its own",
        "",
        format!(
            "{:.2} + {:.2} = {floor:.2}",
            per_100k(r.bare.0.cpu_secs, r.bare.1),
            per_100k(r.wal.cost.cpu_secs, r.wal.rows)
        ),
        "",
    ));
    rows.push(row(
        format!(
            "2 backlog drain, {n} rows in {}-row txns (events/s) vs min(1a, 1b)",
            r.backlog.rows_per_txn
        ),
        thousands(r.drain.events_per_s),
        thousands(ceiling),
        format!("{:.0}%", 100.0 * r.drain.events_per_s / ceiling),
    ));
    rows.push(row(
        "2b the same drain into a non-durable queue (RabbitMQ off its disk) vs bare lapin into one (events/s)".to_string(),
        thousands(r.transient.drain.events_per_s),
        thousands(r.transient.broker.events_per_s),
        format!(
            "{:.0}%",
            100.0 * r.transient.drain.events_per_s / r.transient.broker.events_per_s.max(1.0)
        ),
    ));
    for q in std::iter::once(&r.quorum).chain(r.quorum_cluster.as_ref()) {
        let place = if q.nodes == 1 {
            "one node".to_string()
        } else {
            format!(
                "a private {}-node cluster, booted in {:.0} s",
                q.nodes, q.boot_secs
            )
        };
        rows.push(row(
            format!(
                "2{} the same drain into a quorum queue ({place}) vs bare lapin into one (events/s)",
                if q.nodes == 1 { "c" } else { "d" }
            ),
            format!(
                "{} (CPU {:.2} s per 100k)",
                thousands(q.drain.events_per_s),
                q.drain.cpu_s_per_100k
            ),
            thousands(q.broker.events_per_s),
            format!(
                "{:.0}%",
                100.0 * q.drain.events_per_s / q.broker.events_per_s.max(1.0)
            ),
        ));
    }
    for l in &r.latency {
        let (p50, p99, max) = match &l.end_to_end {
            Some(p) => (p.p50_ms, p.p99_ms, p.max_ms),
            None => (0.0, 0.0, 0.0),
        };
        rows.push(row(
            format!(
                "3 latency at {} events/s, commit -> consumer p50 / p99 / max (ms)",
                thousands(crate::stats::count_f64(l.rate))
            ),
            format!("{p50:.2} / {p99:.2} / {max:.2}"),
            format!(
                "bare lapin publish -> consumer p50 / p99 / max {}; relay histogram p50 / p99 <= {} / {} ms; commit round trip p99 / max {}",
                l.broker_floor.as_ref().map_or("-".into(), |p| format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    p.p50_ms, p.p99_ms, p.max_ms
                )),
                opt_ms(l.relay_p50_ms),
                opt_ms(l.relay_p99_ms),
                l.produced
                    .commit_round_trip
                    .as_ref()
                    .map_or("-".into(), |p| format!(
                        "{:.2} / {:.2} ms",
                        p.p99_ms, p.max_ms
                    ))
            ),
            match &l.broker_floor {
                Some(f) if f.p99_ms > 0.0 => format!(
                    "p99 {:.1}x the broker floor's; achieved {} events/s",
                    p99 / f.p99_ms,
                    thousands(l.produced.achieved_rate)
                ),
                _ => format!("achieved {} events/s", thousands(l.produced.achieved_rate)),
            },
        ));
    }
    let relay_switches = crate::stats::count_f64(r.drain.switches.0 + r.drain.switches.1)
        / crate::stats::count_f64(r.drain.events.max(1));
    rows.push(row(
        "4 CPU seconds per 100k events, during 2, vs the floor (1d)",
        format!("{:.2}", r.drain.cpu_s_per_100k),
        format!("{floor:.2}"),
        format!("{:.2}x", r.drain.cpu_s_per_100k / floor.max(1e-9)),
    ));
    rows.push(row(
        "4 context switches per event (voluntary + involuntary, every thread), during 2, vs the bare lapin loop",
        format!(
            "{relay_switches:.2} ({} + {})",
            thousands(crate::stats::count_f64(r.drain.switches.0)),
            thousands(crate::stats::count_f64(r.drain.switches.1))
        ),
        format!("{:.2}", r.bare.0.switches_per_event(r.bare.1)),
        format!(
            "{:+.2}",
            relay_switches - r.bare.0.switches_per_event(r.bare.1)
        ),
    ));
    let dbz_amqp = r.debezium.as_ref().and_then(|d| d.rabbitmq.as_ref());
    rows.push(row(
        "4 CPU seconds per 100k events, during 2",
        format!("{:.2}", r.drain.cpu_s_per_100k),
        dbz_amqp.map_or("-".into(), |d| {
            format!("Debezium + RabbitMQ: {:.2}", d.cpu_s_per_100k)
        }),
        dbz_amqp.map_or(String::new(), |d| {
            format!(
                "{:.1}x less",
                d.cpu_s_per_100k / r.drain.cpu_s_per_100k.max(1e-9)
            )
        }),
    ));
    rows.push(row(
        "4 peak RSS (MiB), during 2",
        format!("{:.1}", r.drain.usage.peak_rss_mib()),
        dbz_amqp.map_or("-".into(), |d| {
            format!("Debezium + RabbitMQ: {:.0}", d.usage.peak_rss_mib())
        }),
        dbz_amqp.map_or(String::new(), |d| {
            format!(
                "{:.0}x less",
                d.usage.peak_rss_mib() / r.drain.usage.peak_rss_mib().max(1e-9)
            )
        }),
    ));
    let big = thousands(crate::stats::count_f64(r.big_txn.rows));
    rows.push(row(
        format!("4 CPU seconds per 100k events, one {big}-row txn"),
        format!("{:.2}", r.big_txn.cpu_s_per_100k),
        "",
        "",
    ));
    rows.push(row(
        format!("4 peak RSS (MiB), one {big}-row txn"),
        format!("{:.1}", r.big_txn.usage.peak_rss_mib()),
        "",
        "",
    ));
    rows.push(row(
        format!(
            "5a drain vs polling publisher (SKIP LOCKED, 500/batch), {} rows (events/s)",
            thousands(crate::stats::count_f64(r.poller.events))
        ),
        thousands(r.drain.events_per_s),
        thousands(r.poller.events_per_s),
        format!(
            "{:.1}x",
            r.drain.events_per_s / r.poller.events_per_s.max(1e-9)
        ),
    ));
    rows.push(row(
        "5a CPU seconds per 100k events: relay process vs poller process",
        format!("{:.2}", r.drain.cpu_s_per_100k),
        format!("{:.2}", r.poller.cpu_s_per_100k),
        format!(
            "{:.1}x",
            r.poller.cpu_s_per_100k / r.drain.cpu_s_per_100k.max(1e-9)
        ),
    ));
    rows.push(row(
        "5a peak RSS (MiB): relay process vs poller process",
        format!("{:.1}", r.drain.usage.peak_rss_mib()),
        format!("{:.1}", r.poller.usage.peak_rss_mib()),
        "",
    ));
    rows.push(row(
        "5a Postgres per 100k events: CPU seconds / WAL MiB written (relay: walsender; poller: its queries)",
        format!(
            "{:.2} / {:.1}",
            r.drain.postgres.cpu_s_per_100k, r.drain.postgres.wal_mib_per_100k
        ),
        format!(
            "{:.2} / {:.1}",
            r.poller.postgres.cpu_s_per_100k, r.poller.postgres.wal_mib_per_100k
        ),
        format!(
            "{:.1}x CPU",
            r.poller.postgres.cpu_s_per_100k / r.drain.postgres.cpu_s_per_100k.max(1e-9)
        ),
    ));
    let busy = |c: &PgCost| {
        format!(
            "{:.0}% / {}",
            c.machine_busy_pct,
            c.broker_cpu_s_per_100k
                .map_or("-".into(), |b| format!("{b:.2}"))
        )
    };
    rows.push(row(
        "5a while draining: whole machine busy (% of all cores) / RabbitMQ CPU seconds per 100k events",
        busy(&r.drain.postgres),
        busy(&r.poller.postgres),
        "",
    ));
    match &r.debezium {
        None => rows.push(row(
            "5b Debezium 3.6 (not run: --with-debezium)",
            "",
            "-",
            "",
        )),
        Some(d) => {
            if let Some(a) = &d.rabbitmq {
                rows.push(row(
                    "5b drain vs Debezium 3.6 + RabbitMQ sink with confirms (events/s, once started)",
                    thousands(r.drain.events_per_s),
                    format!("{} ({} from start)", thousands(a.steady_events_per_s), thousands(a.events_per_s)),
                    format!("{:.1}x", r.drain.events_per_s / a.steady_events_per_s.max(1e-9)),
                ));
            }
            if let Some(z) = &d.null {
                rows.push(row(
                    "5b relay into the null sink vs Debezium 3.6 into its null sink (events/s): both without a broker",
                    thousands(r.null.events_per_s),
                    format!(
                        "{} ({} from start)",
                        thousands(z.steady_events_per_s),
                        thousands(z.events_per_s)
                    ),
                    format!("{:.1}x", r.null.events_per_s / z.steady_events_per_s.max(1e-9)),
                ));
                rows.push(row(
                    "5b drain vs Debezium 3.6, null sink (events/s, once started)",
                    thousands(r.drain.events_per_s),
                    format!(
                        "{} ({} from start)",
                        thousands(z.steady_events_per_s),
                        thousands(z.events_per_s)
                    ),
                    format!(
                        "{:.1}x",
                        r.drain.events_per_s / z.steady_events_per_s.max(1e-9)
                    ),
                ));
            }
            if let Some(e) = &d.error {
                rows.push(row("5b Debezium did not run completely", "", e.clone(), ""));
            }
        }
    }
    rows
}

fn latency_p99(r: &Results, rate: u64) -> Option<f64> {
    r.latency
        .iter()
        .find(|l| l.rate == rate)
        .and_then(|l| l.end_to_end.as_ref())
        .map(|p| p.p99_ms)
}

/// The issue's targets, met or missed.
pub fn targets(r: &Results) -> Vec<Target> {
    let ceiling = r.broker.events_per_s.min(r.wal.rows_per_s);
    let drain = r.drain.events_per_s;
    let mut t = vec![Target {
        target: "backlog drain >= 90% of min(broker ceiling, WAL-read ceiling)".into(),
        measured: format!("{:.0}%", 100.0 * drain / ceiling),
        met: Some(drain >= 0.9 * ceiling),
    }];
    let dbz_amqp = r.debezium.as_ref().and_then(|d| d.rabbitmq.as_ref());
    let dbz_null = r.debezium.as_ref().and_then(|d| d.null.as_ref());
    t.push(Target {
        target: ">= 3x Debezium with a confirming RabbitMQ sink".into(),
        measured: dbz_amqp.map_or("not run".into(), |d| {
            format!("{:.1}x", drain / d.steady_events_per_s)
        }),
        met: dbz_amqp.map(|d| drain >= 3.0 * d.steady_events_per_s),
    });
    t.push(Target {
        target: ">= Debezium's null-sink figure".into(),
        measured: dbz_null.map_or("not run".into(), |d| {
            format!("{:.1}x", drain / d.steady_events_per_s)
        }),
        met: dbz_null.map(|d| drain >= d.steady_events_per_s),
    });
    t.push(Target {
        target: ">= 5x the polling publisher".into(),
        measured: format!("{:.1}x", drain / r.poller.events_per_s),
        met: Some(drain >= 5.0 * r.poller.events_per_s),
    });
    for (rate, limit) in [(500u64, 10.0), (2_000, 50.0)] {
        let p99 = latency_p99(r, rate);
        t.push(Target {
            target: format!("latency p99 <= {limit:.0} ms at {rate} events/s"),
            measured: p99.map_or("not measured".into(), |p| format!("{p:.2} ms")),
            met: p99.map(|p| p <= limit),
        });
    }
    t.push(Target {
        target: "<= 3 CPU-seconds per 100,000 events".into(),
        measured: format!("{:.2} s", r.drain.cpu_s_per_100k),
        met: Some(r.drain.cpu_s_per_100k <= 3.0),
    });
    let floor = per_100k(r.bare.0.cpu_secs, r.bare.1) + per_100k(r.wal.cost.cpu_secs, r.wal.rows);
    t.push(Target {
        target: "CPU per event <= 1.3x (bare lapin + pg_recvlogical)".into(),
        measured: format!("{:.2}x", r.drain.cpu_s_per_100k / floor.max(1e-9)),
        met: Some(r.drain.cpu_s_per_100k <= 1.3 * floor),
    });
    // Tail latency against the broker floor measured in the same run.
    for (rate, target) in [
        (500u64, "<= the broker floor's + 1 ms"),
        (2_000, "<= the broker floor's + 1 ms"),
        (10_000, "<= 2x the broker floor's"),
    ] {
        let l = r.latency.iter().find(|l| l.rate == rate);
        let pair = l.and_then(|l| {
            Some((
                l.end_to_end.as_ref()?.p99_ms,
                l.broker_floor.as_ref()?.p99_ms,
            ))
        });
        t.push(Target {
            target: format!("latency p99 at {rate} events/s {target}"),
            measured: pair.map_or("not measured".into(), |(p, f)| {
                format!("{p:.2} ms vs floor {f:.2} ms")
            }),
            met: pair.map(|(p, f)| {
                if rate >= 10_000 {
                    p <= 2.0 * f
                } else {
                    p <= f + 1.0
                }
            }),
        });
    }
    let relay_switches = crate::stats::count_f64(r.drain.switches.0 + r.drain.switches.1)
        / crate::stats::count_f64(r.drain.events.max(1));
    let bare_switches = r.bare.0.switches_per_event(r.bare.1);
    t.push(Target {
        target: "context switches per event <= the bare loop's + 0.2".into(),
        measured: format!("{relay_switches:.2} vs {bare_switches:.2}"),
        met: Some(relay_switches <= bare_switches + 0.2),
    });
    t.push(Target {
        target: "peak RSS <= 32 MiB in the drain".into(),
        measured: format!("{:.1} MiB", r.drain.usage.peak_rss_mib()),
        met: Some(r.drain.usage.peak_rss_mib() <= 32.0),
    });
    let big = r.big_txn.usage.peak_rss_mib();
    t.push(Target {
        target: format!(
            "peak RSS <= 64 MiB with a {}-row transaction",
            thousands(crate::stats::count_f64(r.big_txn.rows))
        ),
        measured: format!("{big:.1} MiB"),
        met: Some(big <= 64.0),
    });
    t
}

/// The table as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut out =
        String::from("| figure | outbox-relay | ceiling or peer | ratio |\n|---|---:|---:|---:|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.figure, r.relay, r.other, r.ratio
        ));
    }
    out
}

/// The targets as a list.
pub fn target_lines(targets: &[Target]) -> String {
    let mut out = String::new();
    for t in targets {
        let verdict = match t.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        out.push_str(&format!("- {}: {} ({verdict})\n", t.target, t.measured));
    }
    out
}

/// The JSON document: the scripts' keys at the top, then everything.
pub fn json(
    r: &Results,
    machine: &Machine,
    rows: &[Row],
    targets: &[Target],
    command: &str,
) -> Value {
    let ceiling = r.broker.events_per_s.min(r.wal.rows_per_s);
    json!({
        "drain_events_per_s": r.drain.events_per_s,
        "drain_ratio_to_ceiling": r.drain.events_per_s / ceiling,
        "latency_p99_ms_at_500": latency_p99(r, 500),
        "latency_p99_ms_at_2000": latency_p99(r, 2_000),
        "cpu_s_per_100k": r.drain.cpu_s_per_100k,
        "bare_cpu_s_per_100k": per_100k(r.bare.0.cpu_secs, r.bare.1),
        "recvlogical_cpu_s_per_100k": per_100k(r.wal.cost.cpu_secs, r.wal.rows),
        "cpu_ratio_to_floor": r.drain.cpu_s_per_100k
            / (per_100k(r.bare.0.cpu_secs, r.bare.1) + per_100k(r.wal.cost.cpu_secs, r.wal.rows)).max(1e-9),
        "relay_switches_per_event": crate::stats::count_f64(r.drain.switches.0 + r.drain.switches.1)
            / crate::stats::count_f64(r.drain.events.max(1)),
        "bare_switches_per_event": r.bare.0.switches_per_event(r.bare.1),
        "peak_rss_mib": r.drain.usage.peak_rss_mib(),
        "peak_rss_mib_1m_txn": r.big_txn.usage.peak_rss_mib(),
        "poller_events_per_s": r.poller.events_per_s,
        "debezium_null_events_per_s": r.debezium.as_ref().and_then(|d| d.null.as_ref()).map(|d| d.steady_events_per_s),
        "debezium_rabbitmq_events_per_s": r.debezium.as_ref().and_then(|d| d.rabbitmq.as_ref()).map(|d| d.steady_events_per_s),
        "broker_ceiling_events_per_s": r.broker.events_per_s,
        "transient_drain_events_per_s": r.transient.drain.events_per_s,
        "transient_broker_events_per_s": r.transient.broker.events_per_s,
        "quorum": r.quorum,
        "quorum_cluster": r.quorum_cluster,
        "wal_read_ceiling_rows_per_s": r.wal.rows_per_s,
        "relay_null_events_per_s": r.null.events_per_s,
        "relay_null_ratio_to_debezium_null": r.debezium.as_ref().and_then(|d| d.null.as_ref()).map(|d| r.null.events_per_s / d.steady_events_per_s),
        "mode": r.plan.mode,
        "command": command,
        "machine": machine,
        "table": rows,
        "targets": targets,
        "details": r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
