//! Failover on PostgreSQL 17 and 18: a primary and a physical standby made
//! by the test kit (the standby syncs failover slots; the primary holds
//! logical decoding back until the standby has the WAL, through
//! synchronized_standby_slots); the relay streams under load through a
//! multi-host URL; the primary is SIGKILLed and the standby promoted. The
//! promoted server's outbox table is the truth: every row on it is
//! delivered (no loss), every delivered event is on it (no phantom: a
//! transaction the old primary committed but never shipped is neither),
//! and per aggregate the first deliveries come in commit order.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use e2e::PgCluster;

use super::fixture::{header, seq_of, Fixture, Load};

/// Polls `sql` on `pg` until it prints `want`.
async fn wait_for(pg: &PgCluster, sql: &str, want: &str, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        if pg.psql(sql).ok().as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}:\n{}",
            pg.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the standby holds a copy of the relay's slot that a
/// promotion keeps: synced, not temporary, not invalidated.
async fn wait_for_synced_copy(standby: &PgCluster) {
    wait_for(
        standby,
        "SELECT synced AND NOT temporary AND invalidation_reason IS NULL \
         FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
        "t",
        Duration::from_secs(90),
        "the standby has a synced copy of the slot",
    )
    .await;
}

/// Waits (its link to the primary stalled) until the relay has
/// acknowledged WAL past everything the standby received, so that the
/// promoted server's history forks before what the relay published. A
/// fixed pause was not enough: on a busy machine the relay could still be
/// behind the standby when the primary died, and the fork was never
/// exercised.
async fn relay_acked_past_the_standby(primary: &PgCluster, standby: &PgCluster) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = standby
            .psql("SELECT pg_last_wal_receive_lsn()")
            .unwrap_or_default();
        if !received.is_empty() {
            let past = primary
                .psql(&format!(
                    "SELECT confirmed_flush_lsn > '{received}'::pg_lsn \
                     FROM pg_replication_slots WHERE slot_name = 'outbox_relay'"
                ))
                .unwrap_or_default();
            if past == "t" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the relay acknowledged WAL past the stalled standby's {received} within 60 s:\n{}",
            primary.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (aggregate_id, seq) of every event row on `pg`.
fn rows_on(pg: &PgCluster) -> HashSet<(String, u64)> {
    pg.psql("SELECT aggregate_id || ' ' || (payload->>'seq') FROM outbox")
        .expect("read the outbox")
        .lines()
        .filter_map(|l| {
            let (agg, seq) = l.split_once(' ')?;
            Some((agg.to_string(), seq.parse().ok()?))
        })
        .collect()
}

/// With `hold_decoding` false the primary runs without
/// synchronized_standby_slots: the relay may publish what the standby never
/// received (phantoms, counted, not failed), but nothing on the promoted
/// server may be lost.
async fn a_promoted_standby_loses_nothing_and_delivers_no_phantom(major: u32, hold_decoding: bool) {
    let mut primary = PgCluster::builder()
        .version(major)
        .start()
        .unwrap_or_else(|e| panic!("start PostgreSQL {major}: {e}"));
    // Without the guard, the standby reaches the primary through a proxy
    // that stalls it before the failover.
    let proxy = if hold_decoding {
        None
    } else {
        Some(e2e::FaultProxy::start(primary.addr()).expect("a proxy"))
    };
    let standby = primary
        .standby_with(hold_decoding, proxy.as_ref().map(|p| p.port()))
        .expect("a physical standby");
    let standby_port = standby.port();
    let f = Fixture::with_cluster(primary).await;
    let hosts = format!("127.0.0.1:{},127.0.0.1:{standby_port}", f.pg.port());
    let relay_url = format!("postgres://postgres@{hosts}/postgres");
    // Consumed all along, each delivery with the moment it arrived.
    let mut consumer = f.consumer().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while !tx.is_closed() {
            match consumer.next(Duration::from_millis(200)).await {
                Ok(Some(d)) => {
                    if tx.send((Instant::now(), d)).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
    });
    let mut relay = f.start_relay(&[("RELAY_PG_URL", relay_url.as_str())]);

    // The relay made its slot a failover slot; the standby syncs it.
    wait_for(
        &f.pg,
        "SELECT failover FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
        "t",
        Duration::from_secs(10),
        "the relay's slot is a failover slot",
    )
    .await;
    // Writers on whichever server is the primary.
    let writers_url =
        format!("postgres://postgres@{hosts}/postgres?target_session_attrs=read-write");
    let load = Load::start(&writers_url, 3, 5, Duration::from_millis(5), u64::MAX);
    wait_for_synced_copy(&standby).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The primary dies; the standby is promoted.
    let mut f = f;
    // Without the guard, let the standby fall behind the relay: the link
    // to it stalls while the load goes on, so the promoted server's history
    // forks before what the relay has read.
    if let Some(proxy) = &proxy {
        proxy.stall();
        relay_acked_past_the_standby(&f.pg, &standby).await;
    }
    f.pg.kill().expect("SIGKILL the primary");
    let promoted_at = Instant::now();
    standby.promote().expect("promote the standby");
    // Streaming again: the relay holds the promoted server's slot.
    wait_for(
        &standby,
        "SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'",
        "t",
        Duration::from_secs(60),
        "the relay streams from the promoted server",
    )
    .await;
    let streaming = promoted_at.elapsed();
    standby
        .psql(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('order', 'marker', 'created', '{\"seq\": 0}')",
        )
        .expect("the promoted server takes writes");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let resumed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((at, d))) = tokio::time::timeout(left, rx.recv()).await else {
            panic!("nothing after the promotion:\n{}", relay.output());
        };
        let marker = header(&d, "aggregate_id").as_deref() == Some("marker");
        got.push(d);
        if marker {
            break at.saturating_duration_since(promoted_at);
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = load.stop().await;

    // The truth: what the promoted server holds.
    let truth = rows_on(&standby);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen: HashSet<(String, u64)> = got
        .iter()
        .filter_map(|d| Some((header(d, "aggregate_id")?, seq_of(&d.data))))
        .collect();
    // Until every row of the truth arrived, then until 1 s passes quietly.
    loop {
        let quiet = if truth.is_subset(&seen) {
            Duration::from_secs(1)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match tokio::time::timeout(quiet, rx.recv()).await {
            Ok(Some((_, d))) => {
                if let Some(agg) = header(&d, "aggregate_id") {
                    seen.insert((agg, seq_of(&d.data)));
                }
                got.push(d);
            }
            _ => break,
        }
    }
    drop(rx);

    let mut first: HashSet<(String, u64)> = HashSet::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    let mut phantoms = 0usize;
    for d in &got {
        let agg = header(d, "aggregate_id").expect("aggregate_id");
        let seq = seq_of(&d.data);
        let key = (agg.clone(), seq);
        if !truth.contains(&key) {
            assert!(
                !hold_decoding,
                "delivered {key:?}, which is not on the promoted server (a phantom event)"
            );
            phantoms += 1;
            continue;
        }
        if first.insert(key) {
            if let Some(prev) = last_seq.insert(agg.clone(), seq) {
                assert!(
                    prev < seq,
                    "aggregate {agg}: {seq} arrived first after {prev}"
                );
            }
        }
    }
    let missing: Vec<&(String, u64)> = truth.difference(&first).collect();
    assert!(
        missing.is_empty(),
        "{} rows on the promoted server were never delivered, e.g. {:?}\n{}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        relay.output()
    );
    let acknowledged_lost: usize = written
        .iter()
        .map(|w| {
            w.committed
                .iter()
                .filter(|s| !truth.contains(&(w.aggregate.clone(), **s)))
                .count()
        })
        .sum();
    println!(
        "failover on PostgreSQL {major} (synchronized_standby_slots {}): {phantoms} phantom \
         deliveries; {} rows on the promoted server, all delivered; \
         {} duplicates; streaming again {:.2} s after the promotion; an event committed \
         after it consumed {:.2} s after it; {acknowledged_lost} commits the old primary acknowledged are not on the promoted \
         server (asynchronous replication; the phantoms are among them when it is set \
         empty)",
        if hold_decoding { "set" } else { "empty" },
        truth.len(),
        got.len() - first.len() - phantoms,
        streaming.as_secs_f64(),
        resumed.as_secs_f64(),
    );
    // The relay saw the new timeline and said what it found.
    let said = if hold_decoding {
        "its history holds everything the relay read"
    } else {
        "resuming from the promotion point"
    };
    assert!(relay.output().contains(said), "{}", relay.output());
    if std::env::var_os("FAILOVER_DEBUG").is_some() {
        println!("{}", relay.output());
    }
    relay.kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_17_a_promoted_standby_loses_nothing_and_delivers_no_phantom() {
    a_promoted_standby_loses_nothing_and_delivers_no_phantom(17, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_17_without_synchronized_standby_slots_a_promotion_still_loses_nothing() {
    a_promoted_standby_loses_nothing_and_delivers_no_phantom(17, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_18_a_promoted_standby_loses_nothing_and_delivers_no_phantom() {
    a_promoted_standby_loses_nothing_and_delivers_no_phantom(18, true).await;
}

/// On 17: a slot someone else created without FAILOVER (Debezium's, say)
/// becomes a failover slot when the relay takes it over, unless
/// failover_slot = false; `check` judges each server of a multi-host URL
/// (the standby without, then with, a synced copy of the slot) and
/// `status` shows the flag and the standby's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_17_check_and_status_judge_each_server_and_the_standbys_copy() {
    let mut primary = PgCluster::builder().version(17).start().unwrap();
    let standby = primary.standby().expect("a physical standby");
    let f = Fixture::with_cluster(primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        f.pg.port(),
        standby.port()
    );
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut env: Vec<(&str, &str)> = vec![("RELAY_PG_URL", url.as_str())];
        env.extend_from_slice(extra);
        f.run_to_end(args, &env)
    };
    let failover_of = |slot: &str| {
        f.pg.psql(&format!(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .unwrap()
    };

    // Taken over: off stays off with failover_slot = false, then on.
    f.pg.psql("SELECT pg_create_logical_replication_slot('dbz_slot', 'pgoutput')")
        .unwrap();
    assert_eq!(failover_of("dbz_slot"), "f");
    let relay = f.start_relay(&[("RELAY_SLOT", "dbz_slot"), ("RELAY_FAILOVER_SLOT", "false")]);
    drop(relay);
    assert_eq!(failover_of("dbz_slot"), "f");
    let relay = f.start_relay(&[("RELAY_SLOT", "dbz_slot")]);
    assert_eq!(failover_of("dbz_slot"), "t");
    drop(relay);

    // Before the relay made its slot: the standby has no copy.
    let (_, out) = run(&["check"], &[]);
    let standby_line = format!(
        "warn  host          127.0.0.1:{}: PostgreSQL 17",
        standby.port()
    );
    assert!(
        out.lines().any(|l| l.starts_with(&standby_line) && l.contains("has no copy of slot outbox_relay")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "ok    host          127.0.0.1:{}: PostgreSQL 17",
            f.pg.port()
        )),
        "{out}"
    );

    let relay = f.start_relay(&[("RELAY_PG_URL", url.as_str())]);
    wait_for_synced_copy(&standby).await;
    let (ok, out) = run(&["check"], &[]);
    assert!(ok, "{out}");
    let standby_ok = format!(
        "ok    host          127.0.0.1:{}: PostgreSQL 17",
        standby.port()
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&standby_ok) && l.contains("synced at")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("ok    failover ")
            && l.contains("is a failover slot")
            && l.contains("(streaming)")),
        "{out}"
    );
    let (ok, out) = run(&["status", "--json"], &[]);
    assert!(ok, "{out}");
    let json = out.get(out.find('{').expect("json")..).unwrap_or_default();
    let status: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        status["failover"],
        serde_json::Value::Bool(true),
        "{status}"
    );
    let servers = status["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2, "{status}");
    assert_eq!(servers[0]["role"], "primary");
    assert_eq!(servers[1]["role"], "standby");
    assert_eq!(
        servers[1]["slot_synced"],
        serde_json::Value::Bool(true),
        "{status}"
    );

    // Pointed at the standby alone, the relay refuses: its synced copy of
    // the slot is never consumed.
    let standby_url = standby.url();
    let (ok, out) = f.run_to_end(&["run"], &[("RELAY_PG_URL", standby_url.as_str())]);
    assert!(!ok, "{out}");
    assert!(out.contains("is a standby (in recovery)"), "{out}");
    assert_eq!(
        standby
            .psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "f"
    );
    drop(relay);
}

/// On 15 (no failover slots), a failover loses the slot: the running relay
/// stops with the reason, and a relay started again on the promoted server
/// refuses to create a new slot (it would start there and skip every event
/// committed in between); `setup` creates it when the operator says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_15_a_failover_stops_the_relay_and_no_slot_is_recreated_behind_its_back() {
    let mut primary = PgCluster::start().unwrap();
    let standby = primary.standby().expect("a physical standby");
    let mut f = Fixture::with_cluster(primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        f.pg.port(),
        standby.port()
    );
    let mut relay = f.start_relay(&[("RELAY_PG_URL", url.as_str())]);
    f.insert_events("a", 0, 5);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.pg.kill().expect("SIGKILL the primary");
    standby.promote().expect("promote the standby");
    let status = relay.wait(Duration::from_secs(60)).unwrap();
    assert!(!status.success(), "{}", relay.output());
    let out = relay.output();
    assert!(out.contains("slot outbox_relay no longer exists"), "{out}");
    assert!(out.contains("When the slot is lost"), "{out}");
    assert!(!out.contains("pg_create_logical_replication_slot"), "{out}");

    let (ok, out) = f.run_to_end(&["run"], &[("RELAY_PG_URL", url.as_str())]);
    assert!(!ok, "{out}");
    assert!(out.contains("lost in a failover"), "{out}");
    assert!(out.contains("When the slot is lost"), "{out}");
    assert_eq!(
        standby
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "0",
        "no slot was created behind the operator's back"
    );
    let (ok, out) = f.run_to_end(&["setup"], &[("RELAY_PG_URL", url.as_str())]);
    assert!(ok, "{out}");
    assert_eq!(
        standby
            .psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "1"
    );
}
