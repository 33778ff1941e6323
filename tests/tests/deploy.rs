//! The deployment files under deploy/ are kept honest: the example settings
//! file names every setting and parses; the systemd unit passes
//! `systemd-analyze verify`; the Kubernetes manifests pass a schema
//! validator and their settings parse; the alert rules pass `promtool
//! check rules` and their unit tests; and the dashboard and the rules name
//! only series the running relay exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::operations::{http_get, metrics_addr};
use crate::relay::fixture::Fixture;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs a tool; (success, stdout + stderr). A missing tool fails the test
/// with what installs it.
fn tool(program: &str, args: &[&str], installs: &str) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}; {installs}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `outbox-relay --config FILE config`: (success, output).
fn relay_config(file: &Path) -> (bool, String) {
    let file = file.display().to_string();
    e2e::RelayProcess::run_to_end(
        &["--config", &file, "config"],
        &[
            ("RELAY_PG_URL", "postgres://relay@db.example/shop"),
            ("RELAY_AMQP_URL", "amqp://relay@mq.example/%2f"),
        ],
    )
}

#[test]
fn the_example_settings_file_names_every_setting_and_parses() {
    let path = repo().join("deploy/relay.toml");
    let (ok, out) = relay_config(&path);
    assert!(ok, "{out}");
    assert!(!out.contains("do not parse"), "{out}");
    let text = read("deploy/relay.toml");
    let keys: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(keys.len() >= 30, "{out}");
    for key in keys {
        assert!(
            text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
            }),
            "deploy/relay.toml does not mention {key}"
        );
    }
    // Each setting has a comment above it (a line starting with #).
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.starts_with('#') {
            let above = lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.trim().is_empty())
                .any(|l| l.starts_with('#'));
            assert!(above, "no comment above {line:?}");
        }
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/outbox-relay.service");
    assert!(unit.contains("Type=notify"), "{unit}");
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
    // verify wants ExecStart's binary to exist: the built one stands in.
    let binary = e2e::relay_binary().expect("the relay binary");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox-relay.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/outbox-relay", &binary.display().to_string()),
    )
    .unwrap();
    let (ok, out) = tool(
        "systemd-analyze",
        &["verify", &path.display().to_string()],
        "install systemd",
    );
    assert!(ok, "{out}");
    assert!(out.trim().is_empty(), "systemd-analyze has remarks:\n{out}");
}

/// The relay.toml inside the ConfigMap (the `relay.toml: |` block).
fn configmap_settings(manifest: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.trim() == "relay.toml: |" {
            inside = true;
            continue;
        }
        if inside {
            match line.strip_prefix("    ") {
                Some(rest) => {
                    out.push_str(rest);
                    out.push('\n');
                }
                None if line.trim().is_empty() => out.push('\n'),
                None => break,
            }
        }
    }
    out
}

#[test]
fn the_kubernetes_manifests_validate_and_their_settings_parse() {
    let (ok, out) = tool(
        "kubernetes-validate",
        &["--strict", "deploy/kubernetes/outbox-relay.yaml"],
        "pip install kubernetes-validate (.ci/run does)",
    );
    assert!(ok, "{out}");
    assert!(!out.contains("ERROR") && !out.contains("WARN"), "{out}");
    let manifest = read("deploy/kubernetes/outbox-relay.yaml");
    for needle in [
        "replicas: 2",
        "path: /readyz",
        "path: /healthz",
        "kind: Secret",
        "secretRef",
    ] {
        assert!(manifest.contains(needle), "{needle} missing");
    }
    let settings = configmap_settings(&manifest);
    assert!(settings.contains("metrics_addr"), "{settings}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, settings).unwrap();
    let (ok, out) = relay_config(&path);
    assert!(ok && !out.contains("do not parse"), "{out}");
    assert!(out.contains("0.0.0.0:9187"), "{out}");
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let installs = "install Debian's prometheus package (.ci/run does)";
    let (ok, out) = tool(
        "promtool",
        &[
            "check",
            "rules",
            "deploy/prometheus/outbox-relay-alerts.yaml",
        ],
        installs,
    );
    assert!(ok, "{out}");
    let (ok, out) = tool(
        "promtool",
        &[
            "test",
            "rules",
            "deploy/prometheus/outbox-relay-alerts.test.yaml",
        ],
        installs,
    );
    assert!(ok, "{out}");
    // Every alert has a test case.
    let rules = read("deploy/prometheus/outbox-relay-alerts.yaml");
    let tests = read("deploy/prometheus/outbox-relay-alerts.test.yaml");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no test for {alert}"
        );
    }
}

/// Metric names in a text: `outbox_relay_...` and `process_...`.
fn series_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["outbox_relay_", "process_"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(prefix) {
            let start = from + at;
            let preceded =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |e| start + e);
            if !preceded {
                out.insert(text[start..end].to_string());
            }
            from = end;
        }
    }
    out
}

#[tokio::test]
async fn the_dashboard_and_the_rules_name_only_series_the_relay_exports() {
    let f = Fixture::new().await;
    let mut relay = f.start_relay(&[]);
    let addr = metrics_addr(&relay);
    f.insert_events("d", 0, 3);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (_, exposition) = http_get(&addr, "/metrics").await;
    relay.kill().unwrap();
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let dashboard = read("deploy/grafana/outbox-relay-dashboard.json");
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 8));
    for (file, text) in [
        (
            "deploy/grafana/outbox-relay-dashboard.json",
            dashboard.clone(),
        ),
        (
            "deploy/prometheus/outbox-relay-alerts.yaml",
            read("deploy/prometheus/outbox-relay-alerts.yaml"),
        ),
    ] {
        for name in series_named(&text) {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which the relay does not export:\n{exposition}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_relay_says_ready_once_it_streams_and_stopping_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let f = Fixture::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let notify = path.display().to_string();
    let mut relay = f.spawn_relay(&["run"], &[("NOTIFY_SOCKET", notify.as_str())]);
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    while !said.iter().any(|m: &String| m.contains("READY=1")) {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no READY=1 ({e}): {said:?}\n{}", relay.output()));
        said.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    let ready = said.last().unwrap();
    assert!(
        ready.contains("STATUS=streaming from the slot to the broker"),
        "{said:?}"
    );
    // Ready means the walsender holds the slot (the log line says so too,
    // but it reaches the test through a reader thread, perhaps later).
    assert_eq!(
        f.pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "t",
        "READY=1 before streaming:\n{}",
        relay.output()
    );
    relay
        .wait_for_line(
            "streaming from the slot",
            std::time::Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    relay.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "no STOPPING=1:\n{}", relay.output());
    let status = relay.wait(std::time::Duration::from_secs(20)).unwrap();
    assert!(status.success());
}
