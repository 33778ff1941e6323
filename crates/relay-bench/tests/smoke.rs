//! The bench still runs: `relay-bench --smoke` end to end (its own
//! cluster, the shared broker, the real relay) with tiny counts, and its
//! JSON carries every key scripts read. Figures are not checked: a smoke
//! run's are meaningless.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_smoke_run_prints_the_table_and_writes_every_json_key() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .arg("--smoke")
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run relay-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("relay-bench --smoke took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(300));
    assert!(stdout.contains("| figure | outbox-relay | ceiling or peer | ratio |"));
    assert!(stdout.contains("backlog drain"));
    assert!(stdout.contains("1d the floor of cost"));
    assert!(stdout.contains("Machine: "));

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in [
        "drain_events_per_s",
        "drain_ratio_to_ceiling",
        "cpu_s_per_100k",
        "peak_rss_mib",
        "peak_rss_mib_1m_txn",
        "poller_events_per_s",
        "latency_p99_ms_at_500",
        "bare_cpu_s_per_100k",
        "recvlogical_cpu_s_per_100k",
        "cpu_ratio_to_floor",
        "relay_switches_per_event",
        "bare_switches_per_event",
    ] {
        let v = doc[key].as_f64();
        assert!(
            v.is_some_and(|v| v > 0.0),
            "{key} should be a positive number, is {}",
            doc[key]
        );
    }
    // Not measured in a smoke run, but present for scripts.
    for key in ["latency_p99_ms_at_2000", "debezium_null_events_per_s"] {
        assert!(
            doc.get(key).is_some_and(serde_json::Value::is_null),
            "{key} should be null"
        );
    }
    let machine = &doc["machine"];
    for key in ["nproc", "cpu_model", "postgres", "rabbitmq"] {
        assert!(!machine[key].is_null(), "machine.{key} missing");
    }
    assert!(doc["table"].as_array().is_some_and(|t| t.len() >= 8));
    assert_eq!(doc["details"]["drain"]["strays"], 0);
}

#[test]
fn the_saga_smoke_run_measures_both_publishers() {
    let out = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .args(["--saga", "--smoke"])
        .output()
        .expect("run relay-bench --saga");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay-bench --saga --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("| orders/s | outbox-relay p50 / p95 / p99 (ms) | polling publisher"),
        "{stdout}"
    );
    assert!(!stdout.contains("unfinished"), "{stdout}");
}
