//! What the operator reads: a successful command logs nothing at WARN or
//! ERROR; a retry loop writes one line per distinct problem, then
//! summaries with the attempt count, not a line per attempt; under JSON
//! logs every line is JSON, the fatal one included; `status --json` answers
//! a JSON object on error; `status` names the slot's holder and its lag in
//! time.

use std::time::Duration;

use crate::relay::fixture::Fixture;

/// Log records at WARN or ERROR in text-format output.
fn warnings(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("ERROR"))
        .collect()
}

#[tokio::test]
async fn successful_check_setup_and_status_log_nothing_at_warn_or_error() {
    let f = Fixture::new().await;
    for args in [
        &["setup"][..],
        &["check"][..],
        &["status"][..],
        &["status", "--json"][..],
    ] {
        let (ok, out) = f.run_to_end(args, &[("RELAY_LOG", "info")]);
        assert!(ok, "{args:?}:\n{out}");
        assert!(
            warnings(&out).is_empty(),
            "{args:?} logged warnings or errors:\n{out}"
        );
    }
    // The columns line names each column once, headers included.
    let (_, out) = f.run_to_end(&["check"], &[]);
    let columns = out
        .lines()
        .find(|l| l.starts_with("ok    columns"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        columns.contains(
            "6 used: id, payload, aggregate_type, event_type, created_at, aggregate_id; \
             headers: aggregate_type, aggregate_id, event_type"
        ),
        "{columns}"
    );
}

#[tokio::test]
async fn a_broker_that_stays_down_gets_one_line_per_problem_then_summaries_with_the_attempts() {
    let f = Fixture::new().await;
    let closed = |_: ()| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let urls = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f,amqp://guest:guest@127.0.0.1:{}/%2f",
        closed(()),
        closed(())
    );
    let mut relay = f.spawn_relay(
        &["run"],
        &[
            ("RELAY_AMQP_URL", urls.as_str()),
            ("RELAY_BACKOFF_INITIAL_MS", "20"),
            ("RELAY_BACKOFF_MAX_MS", "100"),
            ("RELAY_LOG", "info"),
        ],
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    relay.kill().unwrap();
    let out = relay.output();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("cannot reach the broker"))
        .collect();
    // About 60 attempts in 6 s: lines at attempts 1, 2, 4, 8, 16, 32.
    assert!(
        (3..=8).contains(&lines.len()),
        "{} lines for the same failure:\n{out}",
        lines.len()
    );
    assert!(!lines[0].contains("attempts="), "{}", lines[0]);
    assert!(lines[1].contains("attempts=2"), "{}", lines[1]);
    assert!(lines.iter().all(|l| l.contains("retry_in=")), "{out}");
    // Each line says all of it: both brokers, one line.
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("IO error") && !l.contains("cannot reach the broker"))
            .count(),
        0,
        "a second line per attempt:\n{out}"
    );
}

#[tokio::test]
async fn under_json_logs_every_line_is_json_the_fatal_one_too_and_status_json_answers_an_error_object(
) {
    let f = Fixture::new().await;
    let url = f.pg.url_for("postgres", None, "no_such_database");
    assert_ne!(url, f.pg.url(), "the fixture's URL names its database");
    for (args, env) in [
        (&["--log-format", "json", "run"][..], vec![]),
        (&["run"][..], vec![("RELAY_LOG_FORMAT", "json")]),
        (&["--log-format", "json", "check"][..], vec![]),
    ] {
        let mut env = env;
        env.push(("RELAY_PG_URL", url.as_str()));
        let (ok, out) = f.run_to_end(args, &env);
        assert!(!ok, "{args:?}:\n{out}");
        let log_lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with('{') || l.contains("error"))
            .filter(|l| !l.starts_with("FAIL") && !l.starts_with("skip"))
            .collect();
        if args.contains(&"check") {
            // check's report is its output; its logs (none here) are JSON.
            assert!(out.contains("FAIL  postgres"), "{out}");
            continue;
        }
        let mut fatal = 0;
        for line in &log_lines {
            let record: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}\n{out}"));
            if record["level"] == "ERROR" {
                fatal += 1;
                assert!(
                    record["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no_such_database")),
                    "{record}"
                );
            }
        }
        assert_eq!(fatal, 1, "{args:?}: one fatal record:\n{out}");
    }
    let (ok, out) = f.run_to_end(&["status", "--json"], &[("RELAY_PG_URL", url.as_str())]);
    assert!(!ok, "{out}");
    let object = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(object).unwrap();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_database")),
        "{v}"
    );
}

#[tokio::test]
async fn status_names_the_holder_and_the_walsender_and_shows_the_lag_in_time() {
    let f = Fixture::new().await;
    let mut relay = f.start_relay(&[]);
    f.insert_events("s", 0, 10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, out) = f.run_to_end(&["status", "--json"], &[]);
    assert!(ok, "{out}");
    let start = out.find('{').expect("json");
    let v: serde_json::Value = serde_json::from_str(&out[start..]).expect(&out);
    assert_eq!(v["active"], true, "{v}");
    assert_eq!(v["holder"]["application_name"], "outbox-relay", "{v}");
    assert_eq!(v["holder"]["pid"], v["active_pid"], "{v}");
    assert_eq!(v["holder"]["state"], "streaming", "{v}");
    assert_eq!(v["holder"]["client_addr"], "127.0.0.1", "{v}");
    let (ok, text) = f.run_to_end(&["status"], &[]);
    assert!(ok, "{text}");
    let active = text
        .lines()
        .find(|l| l.starts_with("active"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        active.contains("outbox-relay from 127.0.0.1, walsender PID"),
        "{active}"
    );
    let lag = text.lines().find(|l| l.starts_with("lag")).unwrap();
    assert!(
        lag.contains("s behind") || lag.contains("no recent time measurement"),
        "{lag}"
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn a_broker_that_refuses_the_login_is_named_as_such_in_plain_words() {
    let f = Fixture::new().await;
    let wrong = e2e::amqp::amqp_url().replacen("guest:guest@", "guest:wrong-password@", 1);
    assert_ne!(
        wrong,
        e2e::amqp::amqp_url(),
        "the test broker's URL has guest:guest"
    );
    let (ok, out) = f.run_to_end(&["check"], &[("RELAY_AMQP_URL", wrong.as_str())]);
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL  rabbitmq"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("refused user 'guest'"), "{line}");
    assert!(line.contains("fix:"), "{line}");
    assert!(!out.contains("no broker could be reached"), "{out}");
    assert!(!out.contains("wrong-password"), "{out}");
    // No Rust debug structs and no log records on the way.
    assert!(warnings(&out).is_empty(), "{out}");
    assert!(!out.contains("Error {") && !out.contains("Some("), "{out}");
}
