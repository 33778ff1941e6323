//! Throughput: drains a backlog of outbox rows (default 1,000,000 in 1,000
//! transactions, the project's sql/outbox.sql table) from a pgoutput slot
//! through walstream + the pgoutput decoder, and the same backlog from a
//! second slot through pg_recvlogical (the server's own client), in the
//! same run, and prints both rates and their ratio.
//!
//! ```text
//! cargo bench -p walstream --bench throughput
//! WALSTREAM_BENCH_ROWS=200000 WALSTREAM_BENCH_ROUNDS=3 cargo bench -p walstream --bench throughput
//! ```
//!
//! Each round drains two fresh slots created before the backlog was
//! written, one per client, alternating which goes first. The walstream
//! side decodes every message with `pgoutput::decode`, walks every column
//! of every row, and acks each commit, as the relay does. Run without
//! `--bench` (e.g. `cargo test --benches`) it only checks itself on 10,000
//! rows.

use std::time::{Duration, Instant};

use e2e::PgCluster;
use pgoutput::LogicalMessage;
use walstream::{
    CreateSlotOptions, Frame, Lsn, ReplicationClient, ReplicationConfig, StartOptions,
};

const OUTBOX_SQL: &str = include_str!("../../../sql/outbox.sql");
const PUBLICATION: &str = "bench_pub";

struct Drain {
    rows: u64,
    bytes: u64,
    elapsed: Duration,
    /// CPU time the client used (user + system).
    cpu: Duration,
}

/// CPU time of this process and of its waited-for children so far, from
/// /proc/self/stat (utime + stime, cutime + cstime; 100 ticks a second).
fn cpu_times() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = |a: usize, b: usize| {
        let t = fields.get(a).copied().unwrap_or(0) + fields.get(b).copied().unwrap_or(0);
        Duration::from_millis(t * 10)
    };
    (ticks(11, 12), ticks(13, 14))
}

impl Drain {
    fn rows_per_sec(&self) -> f64 {
        rows_f64(self.rows) / self.elapsed.as_secs_f64()
    }

    fn mb_per_sec(&self) -> f64 {
        rows_f64(self.bytes) / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// u64 -> f64 for reporting (exact below 2^53).
fn rows_f64(n: u64) -> f64 {
    f64::from(u32::try_from(n >> 32).unwrap_or(u32::MAX)) * 4_294_967_296.0
        + f64::from(u32::try_from(n & 0xFFFF_FFFF).unwrap_or(0))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn drain_walstream(config: &ReplicationConfig, slot: &str, txns: u64) -> Drain {
    let started = Instant::now();
    let cpu_before = cpu_times().0;
    let client = ReplicationClient::connect(config).await.expect("connect");
    let (mut stream, acks) = client
        .start_replication(slot, Lsn::ZERO, StartOptions::new([PUBLICATION]))
        .await
        .expect("start replication");
    let (mut rows, mut bytes, mut commits, mut column_bytes) = (0u64, 0u64, 0u64, 0usize);
    while commits < txns {
        match stream.next().await.expect("frame") {
            Frame::XLogData(x) => {
                bytes += u64::try_from(x.data.len()).unwrap_or(0);
                match pgoutput::decode(x.data).expect("decode") {
                    LogicalMessage::Insert(insert) => {
                        rows += 1;
                        for column in insert.tuple.iter() {
                            column_bytes += column.value().map_or(0, |v| v.len());
                        }
                    }
                    LogicalMessage::Commit(commit) => {
                        commits += 1;
                        acks.ack(commit.end_lsn);
                    }
                    _ => {}
                }
            }
            Frame::Keepalive(_) => {}
        }
    }
    let elapsed = started.elapsed();
    let cpu = cpu_times().0.saturating_sub(cpu_before);
    assert!(column_bytes > 0);
    stream
        .shutdown(Duration::from_secs(30))
        .await
        .expect("shutdown");
    Drain {
        rows,
        bytes,
        elapsed,
        cpu,
    }
}

fn drain_pg_recvlogical(pg: &PgCluster, slot: &str, end: Lsn, rows: u64) -> Drain {
    let out = std::env::temp_dir().join(format!("walstream-bench-{slot}.out"));
    let cpu_before = cpu_times().1;
    let started = Instant::now();
    let status = std::process::Command::new(pg.bindir().join("pg_recvlogical"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
        .args(["-U", "postgres", "-d", "postgres", "--slot", slot])
        .args(["--start", "--no-loop", &format!("--endpos={end}")])
        .args(["-o", "proto_version=1"])
        .args(["-o", &format!("publication_names={PUBLICATION}")])
        .arg("-f")
        .arg(&out)
        .status()
        .expect("run pg_recvlogical");
    let elapsed = started.elapsed();
    let cpu = cpu_times().1.saturating_sub(cpu_before);
    assert!(status.success(), "pg_recvlogical failed: {status}");
    // pg_recvlogical writes each message and a newline.
    let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&out);
    Drain {
        rows,
        bytes: written,
        elapsed,
        cpu,
    }
}

fn report(name: &str, d: &Drain) {
    println!(
        "  {name:<14} {:>9} rows {:>8.1} MB in {:>6.2} s: {:>9.0} rows/s {:>7.1} MB/s, \
         client CPU {:>5.2} s",
        d.rows,
        rows_f64(d.bytes) / 1e6,
        d.elapsed.as_secs_f64(),
        d.rows_per_sec(),
        d.mb_per_sec(),
        d.cpu.as_secs_f64()
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows = env_u64(
        "WALSTREAM_BENCH_ROWS",
        if full { 1_000_000 } else { 10_000 },
    );
    let rounds = env_u64("WALSTREAM_BENCH_ROUNDS", if full { 2 } else { 1 });
    let per_txn = 1000u64.min(rows);
    let txns = rows.div_ceil(per_txn);
    let rows = txns * per_txn;

    let pg = PgCluster::builder()
        .setting("max_wal_size", "'8GB'")
        .setting("checkpoint_timeout", "'30min'")
        .start()
        .expect("start cluster");
    pg.psql(OUTBOX_SQL).expect("outbox table");
    pg.psql(&format!(
        "CREATE PUBLICATION {PUBLICATION} FOR TABLE public.outbox"
    ))
    .expect("publication");
    // The relay's kind of runtime; the drain runs as a task on it, as the
    // relay's stream task does (WALSTREAM_BENCH_RUNTIME=current: one thread).
    let runtime = match std::env::var("WALSTREAM_BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    }
    .expect("runtime");
    let config = ReplicationConfig::parse_with_env(&pg.url(), |_| None).expect("config");

    // Slots first, so that each one sees the whole backlog.
    let slots: Vec<(String, String)> = (0..rounds)
        .map(|r| {
            (
                format!("bench_walstream_{r}"),
                format!("bench_recvlogical_{r}"),
            )
        })
        .collect();
    runtime.block_on(async {
        let mut client = ReplicationClient::connect(&config).await.expect("connect");
        for (w, r) in &slots {
            for slot in [w, r] {
                client
                    .create_slot(slot, &CreateSlotOptions::new())
                    .await
                    .expect("create slot");
            }
        }
        client.close().await;
    });

    let loading = Instant::now();
    pg.psql(&format!(
        "DO $$ BEGIN FOR b IN 0..{last} LOOP \
           INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
           SELECT 'order', (b * {per_txn} + g)::text, 'order_created', \
                  jsonb_build_object('order', b * {per_txn} + g, 'total', 42.5, \
                                     'note', repeat('x', 120)) \
           FROM generate_series(1, {per_txn}) g; \
           COMMIT; \
         END LOOP; END $$",
        last = txns - 1
    ))
    .expect("write the backlog");
    let end: Lsn = pg
        .psql("SELECT pg_current_wal_insert_lsn()")
        .expect("end lsn")
        .parse()
        .expect("an LSN");
    println!(
        "backlog: {rows} rows in {txns} transactions written in {:.1} s, WAL end {end}",
        loading.elapsed().as_secs_f64()
    );

    let (mut ws, mut rl) = (Vec::new(), Vec::new());
    for (round, (w, r)) in slots.iter().enumerate() {
        println!("round {}:", round + 1);
        let run_walstream = || {
            let (config, slot) = (config.clone(), w.clone());
            let d = runtime
                .block_on(runtime.spawn(async move { drain_walstream(&config, &slot, txns).await }))
                .expect("drain task");
            assert_eq!(d.rows, rows, "walstream saw every row");
            report("walstream", &d);
            d
        };
        let run_recvlogical = || {
            let d = drain_pg_recvlogical(&pg, r, end, rows);
            report("pg_recvlogical", &d);
            d
        };
        if round % 2 == 0 {
            ws.push(run_walstream());
            rl.push(run_recvlogical());
        } else {
            rl.push(run_recvlogical());
            ws.push(run_walstream());
        }
    }
    let total = |drains: &[Drain]| Drain {
        rows: drains.iter().map(|d| d.rows).sum(),
        bytes: drains.iter().map(|d| d.bytes).sum(),
        elapsed: drains.iter().map(|d| d.elapsed).sum(),
        cpu: drains.iter().map(|d| d.cpu).sum(),
    };
    let (ws, rl) = (total(&ws), total(&rl));
    println!("total:");
    report("walstream", &ws);
    report("pg_recvlogical", &rl);
    println!(
        "walstream / pg_recvlogical: throughput {:.3}, client CPU {:.2}",
        ws.rows_per_sec() / rl.rows_per_sec(),
        ws.cpu.as_secs_f64() / rl.cpu.as_secs_f64().max(0.01)
    );
}
