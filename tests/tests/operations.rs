//! Operating the relay: metrics and health endpoints, logs (JSON, and never
//! a password), the demo script, and the compose file kept honest.

use std::time::Duration;

use e2e::PgCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::relay::fixture::Fixture;

/// GET `path` from `addr` with HTTP/1.1; returns (status, body).
pub(crate) async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_get_with(addr, path, None).await;
    (status, body)
}

/// GET `path` with an `Accept` header if given; returns (status, the
/// Content-Type, body).
pub(crate) async fn http_get_with(
    addr: &str,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = response
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Unchunk if needed (axum may send chunked bodies).
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body
    };
    (status, content_type, body)
}

/// The metrics address the relay logged (it binds port 0 in tests).
pub(crate) fn metrics_addr(relay: &e2e::RelayProcess) -> String {
    let line = relay
        .wait_for_line("metrics on /metrics", Duration::from_secs(30))
        .unwrap();
    let at = line.find("addr=").expect("addr field") + "addr=".len();
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(|c: char| !c.is_ascii_digit() && c != '.' && c != ':')
        .to_string()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_with_every_listed_series_and_health_is_json() {
    let f = Fixture::new().await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let addr = metrics_addr(&relay);
    f.insert_events("m", 0, 20);
    f.pg.psql("DELETE FROM outbox").unwrap();
    consumer.collect(20, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, text) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    // Every sample line is `name{labels} value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name_labels, value) = line.rsplit_once(' ').expect(line);
        assert!(value.parse::<f64>().is_ok(), "bad value in {line:?}");
        let name = name_labels.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
    }
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    assert!(value("outbox_relay_events_published_total") >= 20.0);
    assert!(value("outbox_relay_events_confirmed_total") >= 20.0);
    assert!(value("outbox_relay_transactions_total") >= 1.0);
    assert!(value("outbox_relay_confirmed_lsn") > 0.0);
    assert!(value("outbox_relay_server_wal_end") > 0.0);
    assert!(value("outbox_relay_commit_to_confirm_seconds_count") >= 20.0);
    for series in [
        "outbox_relay_inflight_messages",
        "outbox_relay_inflight_bytes",
        "outbox_relay_replication_lag_bytes",
        "outbox_relay_build_info",
        "# TYPE outbox_relay_events_dead_lettered_total counter",
        "# TYPE outbox_relay_events_ignored_total counter",
        "# TYPE outbox_relay_reconnects_total counter",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }

    let (status, body) = http_get(&addr, "/healthz").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "alive");
    let (status, body) = http_get(&addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true);
    relay.kill().unwrap();
}

/// One sample's value in Prometheus text.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

/// `promtool check metrics` on `text`: (passed, what it said).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test]
async fn metrics_answer_prometheus_text_unless_openmetrics_is_asked_pass_promtool_and_add_up() {
    let f = Fixture::new().await;
    // An exchange no queue is bound to: every event comes back and its
    // dead-letter copy goes instead.
    let nowhere = f.exchange_without_queues().await;
    let mut relay = f.start_relay(&[("RELAY_EXCHANGE", nowhere.as_str())]);
    let addr = metrics_addr(&relay);
    let mut dead = f.scope.consume(&f.dead_letter_queue).await.unwrap();
    f.insert_events("u", 0, 5);
    dead.collect(5, Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, content_type, text) = http_get_with(&addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    let (passed, said) = promtool_check_metrics(&text);
    assert!(passed, "promtool check metrics:\n{said}\n{text}");
    let (_, plain_type, _) = http_get_with(&addr, "/metrics", Some("text/plain")).await;
    assert_eq!(plain_type, content_type);
    // What Prometheus 2.x asks for.
    let (_, om_type, om) = http_get_with(
        &addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE outbox_relay_events_published counter"));

    // The counters add up: each event was published, returned, and its
    // dead-letter copy published and confirmed.
    let published = sample(&text, "outbox_relay_events_published_total");
    let confirmed = sample(&text, "outbox_relay_events_confirmed_total");
    let returned = sample(
        &text,
        "outbox_relay_events_not_confirmed_total{outcome=\"returned\"}",
    );
    let rewound = sample(
        &text,
        "outbox_relay_events_not_confirmed_total{outcome=\"rewound\"}",
    );
    let inflight = sample(&text, "outbox_relay_inflight_messages");
    assert_eq!((published, confirmed, returned), (10.0, 5.0, 5.0), "{text}");
    assert_eq!(published, confirmed + returned + rewound + inflight);
    assert_eq!(
        sample(
            &text,
            "outbox_relay_events_dead_lettered_total{reason=\"no_route\"}"
        ),
        5.0
    );
    // The process, the standby state, the last confirm, the lag in time.
    assert!(sample(&text, "process_resident_memory_bytes") > 1_000_000.0);
    assert!(sample(&text, "process_open_fds") > 3.0);
    assert!(sample(&text, "process_cpu_seconds_total") > 0.0);
    assert!(sample(&text, "process_start_time_seconds") > 1.7e9);
    assert_eq!(sample(&text, "outbox_relay_standby"), 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = sample(&text, "outbox_relay_last_confirm_timestamp_seconds");
    assert!(now - last < 30.0 && last <= now + 1.0, "{last} vs {now}");
    assert_eq!(sample(&text, "outbox_relay_replication_lag_seconds"), 0.0);
    relay.kill().unwrap();
}

#[tokio::test]
async fn logs_never_show_a_password_and_json_logs_carry_the_span_fields() {
    // A role that needs a password.
    let pg = PgCluster::builder()
        .hba(&[
            "host all postgres 127.0.0.1/32 trust",
            "host all all 127.0.0.1/32 scram-sha-256",
        ])
        .start()
        .unwrap();
    let f = Fixture::with_cluster(pg).await;
    f.pg.psql(
        "CREATE ROLE relay LOGIN REPLICATION PASSWORD 'pg-s3cret-pw';
         GRANT SELECT ON outbox TO relay;
         CREATE PUBLICATION outbox_relay FOR TABLE outbox;",
    )
    .unwrap();
    let pg_url = f.pg.url_for("relay", Some("pg-s3cret-pw"), "postgres");
    // A dead broker first: its failure is logged, with the URL redacted.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let amqp = format!(
        "amqp://guest:amqp-s3cret-pw@127.0.0.1:{dead_port}/%2f,{}",
        f.amqp_url
    );
    let mut relay = f.spawn_relay(
        &["run", "--log-format", "json"],
        &[
            ("RELAY_PG_URL", &pg_url),
            ("RELAY_AMQP_URL", &amqp),
            ("RELAY_LOG", "trace"),
        ],
    );
    relay
        .wait_for_line("streaming from the slot", Duration::from_secs(60))
        .unwrap();
    f.insert_events("l", 0, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A wrong password: the error is logged, the password is not.
    let mut wrong = f.spawn_relay(
        &["run"],
        &[(
            "RELAY_PG_URL",
            &f.pg.url_for("relay", Some("wrong-s3cret-pw"), "postgres"),
        )],
    );
    let status = wrong.wait(Duration::from_secs(30)).unwrap();
    assert!(!status.success());
    assert!(
        wrong.output().contains("password authentication failed"),
        "{}",
        wrong.output()
    );
    relay.kill().unwrap();

    let output = relay.output() + &wrong.output();
    for secret in [
        "pg-s3cret-pw",
        "amqp-s3cret-pw",
        "wrong-s3cret-pw",
        "guest:guest@",
    ] {
        assert!(!output.contains(secret), "{secret} was logged:\n{output}");
    }
    let mut with_span = 0;
    for line in relay.lines() {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["span"]["slot"] == "outbox_relay" && v["span"]["exchange"] == f.exchange.as_str() {
            with_span += 1;
        }
    }
    assert!(with_span > 0, "no line carries the relay span's fields");
}

#[test]
fn the_demo_script_delivers_an_order_event_and_cleans_up() {
    let exchange = e2e::unique_name("demo");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let relay_bin = e2e::relay_binary().unwrap();
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .env("DEMO_EXCHANGE", &exchange)
        .env("RELAY_BIN", &relay_bin)
        .env(
            "CONSUME_BIN",
            relay_bin.parent().unwrap().join("examples/consume"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Delete the demo's exchange from the shared broker.
    e2e::amqp::delete_blocking(&[&exchange], &[]);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("received routing_key=order.created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"customer\": \"ada@example.com\""),
        "{stdout}"
    );
    assert!(stdout.contains("lag                  0 bytes"), "{stdout}");
}

#[test]
fn the_compose_file_matches_what_the_code_expects() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    // Every RELAY_* variable it sets is a setting the relay knows.
    let (ok, config) = {
        let mut p = e2e::RelayProcess::spawn(["config"], &[]).unwrap();
        let status = p.wait(Duration::from_secs(30)).unwrap();
        (status.success(), p.output())
    };
    assert!(ok, "{config}");
    let vars: Vec<&str> = compose
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("RELAY_"))
        .collect();
    assert!(vars.contains(&"RELAY_PG_URL") && vars.contains(&"RELAY_AMQP_URL"));
    for var in &vars {
        assert!(
            config.contains(&format!(", {var})")),
            "{var} is not a setting:\n{config}"
        );
    }
    // Every file it mounts exists.
    for line in compose
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("- ./"))
    {
        let path = line[2..].split(':').next().unwrap();
        assert!(root.join(path).exists(), "{path} does not exist");
    }
    // Postgres runs with logical decoding; the relay exposes its metrics port.
    assert!(compose.contains("wal_level=logical"));
    assert!(compose.contains("RELAY_METRICS_ADDR: 0.0.0.0:9187"));
    assert!(compose.contains("\"127.0.0.1:9187:9187\""));
    // Ports face the host only, and the relay is not the superuser.
    for line in compose
        .lines()
        .filter(|l| l.trim_start().starts_with("ports:"))
    {
        for port in line.split('"').skip(1).step_by(2) {
            assert!(port.starts_with("127.0.0.1:"), "{line}");
        }
    }
    assert!(compose.contains("RELAY_PG_URL: postgres://outbox_relay:"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("-p outbox-relay"));
    assert!(dockerfile.contains("USER nonroot"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/outbox-relay\"]"));
}

/// The relay's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Slowloris against the metrics endpoint: 200 clients that each send part
/// of a request and then nothing. The relay closes every one within its
/// header read timeout, never holds more than its connection limit, and a
/// scrape made while they hang on is answered at once.
#[tokio::test]
async fn stalled_http_clients_are_shed_within_seconds_and_never_starve_scrapes_or_descriptors() {
    // The endpoint's defaults (crates/relay/src/metrics.rs, `Limits`).
    const MAX_CONNECTIONS: usize = 64;
    const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
    const CLIENTS: usize = 200;
    // Descriptors the relay may open or close on its own meanwhile, plus
    // the scrapes this test makes.
    const SLACK: usize = 4;

    let f = Fixture::new().await;
    let mut relay = f.start_relay(&[]);
    let addr = metrics_addr(&relay);
    let pid = relay.pid();
    let (status, _) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = open_fds(pid);

    // Watch the relay's descriptors from before the flood until the end.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let watching = watching.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(open_fds(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };

    // 200 clients that each send part of a request and then nothing.
    let start = std::time::Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let partial = if i % 2 == 0 {
            "GET /metr".to_string()
        } else {
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Stall: ")
        };
        stream.write_all(partial.as_bytes()).await.unwrap();
        clients.push(stream);
    }
    let opened = start.elapsed();
    // Each client waits for the server to close it (end of stream or a
    // reset), and reports when.
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return start.elapsed(),
                        Ok(_) => {}
                    }
                }
            })
        })
        .collect();

    // A scrape while the stalled clients hold the endpoint is answered.
    let (status, during) =
        tokio::time::timeout(Duration::from_secs(10), http_get(&addr, "/metrics"))
            .await
            .expect("a scrape during the flood is answered within 10 s");
    let scraped = start.elapsed();
    assert_eq!(status, 200);
    assert!(during.contains("outbox_relay_build_info"), "{during}");

    // Every stalled client is closed by the server within a few seconds of
    // its header timeout (10 s of slack for a loaded machine: without the
    // timeout they would never be).
    let deadline = HEADER_READ_TIMEOUT + Duration::from_secs(10);
    let mut closed = Vec::with_capacity(CLIENTS);
    for close in closes {
        let at = tokio::time::timeout_at(tokio::time::Instant::from_std(start + deadline), close)
            .await
            .unwrap_or_else(|_| {
                panic!("a stalled client was still open {deadline:?} after the flood began")
            })
            .unwrap();
        closed.push(at);
    }
    closed.sort();
    let first_close = closed[0];
    let last_close = closed[CLIENTS - 1];
    assert!(
        scraped < last_close,
        "the scrape ({scraped:?}) came after the last stalled client was closed ({last_close:?})"
    );

    // The descriptors come back to the baseline.
    let back = loop {
        let now = open_fds(pid);
        if now <= baseline + SLACK {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < deadline + Duration::from_secs(2),
            "the relay still holds {now} descriptors (baseline {baseline})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = watcher.await.unwrap();
    let (status, _) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    eprintln!(
        "fds: baseline {baseline}, peak {peak}, back to baseline after {back:?}; \
         {CLIENTS} stalled clients opened in {opened:?}, scrape answered at {scraped:?}, \
         closed between {first_close:?} and {last_close:?}"
    );
    assert!(
        peak <= baseline + MAX_CONNECTIONS + SLACK,
        "the relay held {peak} descriptors (baseline {baseline}, at most {MAX_CONNECTIONS} connections)"
    );
    relay.kill().unwrap();
}

// Multi-threaded: the TLS front runs on this runtime while the test blocks
// on the relay's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_and_trusts_a_private_ca_only_when_given_its_file() {
    let f = Fixture::new().await;
    let front = e2e::tls::TlsFront::start().await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", front.port);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &front.ca_pem).unwrap();
    let ca = ca.to_string_lossy().to_string();
    let check = |extra: Vec<(&'static str, String)>| {
        let mut env = f.env();
        env.retain(|(k, _)| k != "RELAY_AMQP_URL");
        env.push(("RELAY_AMQP_URL".into(), url.clone()));
        for (k, v) in extra {
            env.push((k.to_string(), v));
        }
        async move {
            tokio::task::spawn_blocking(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut p = e2e::RelayProcess::spawn(["check"], &env).unwrap();
                let status = p.wait(Duration::from_secs(60)).unwrap();
                (status.success(), p.output())
            })
            .await
            .unwrap()
        }
    };
    // Without the CA: the certificate is refused, nothing is sent.
    let (_, out) = check(vec![]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL  rabbitmq"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("amqps://guest@localhost"), "{line}");
    assert_eq!(
        front.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // With it: the broker is reached over TLS, and run publishes through it.
    let (_, out) = check(vec![("RELAY_AMQP_CA_FILE", ca.clone())]).await;
    assert!(out.contains("ok    rabbitmq"), "{out}");
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[("RELAY_AMQP_URL", &url), ("RELAY_AMQP_CA_FILE", &ca)]);
    f.insert_events("tls", 1, 1);
    let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    relay.kill().unwrap();
    // A file that is not a certificate is a settings error, said as such.
    let (ok, out) = check(vec![("RELAY_AMQP_CA_FILE", "/dev/null".into())]).await;
    assert!(!ok);
    assert!(
        out.contains("amqp_ca_file /dev/null: no PEM certificate"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_standby_is_ready_so_a_two_replica_deployment_is_ready() {
    let f = Fixture::new().await;
    let mut active = f.start_relay(&[]);
    let mut standby = f.spawn_relay(&["run"], &[("RELAY_STANDBY_POLL_MS", "200")]);
    standby
        .wait_for_line("waiting as a standby", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{}", standby.output()));
    for (relay, role) in [(&active, "active"), (&standby, "standby")] {
        let addr = metrics_addr(relay);
        let (status, body) = http_get(&addr, "/readyz").await;
        assert_eq!(status, 200, "{role}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["role"], role, "{body}");
        let (status, body) = http_get(&addr, "/healthz").await;
        assert_eq!(status, 200, "{role}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["live"], true, "{body}");
        let (_, metrics) = http_get(&addr, "/metrics").await;
        let standby_gauge = metrics
            .lines()
            .find_map(|l| l.strip_prefix("outbox_relay_standby "))
            .unwrap_or_else(|| panic!("{metrics}"));
        assert_eq!(standby_gauge, if role == "standby" { "1" } else { "0" });
    }
    active.kill().unwrap();
    standby.kill().unwrap();
}
