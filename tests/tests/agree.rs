//! `check` and `run` judge the same facts the same way: `run` refuses to
//! start, with the same words and the same fix, on what `check` fails, and
//! `check` fails on nothing `run` handles. Each case here is a way the two
//! used to disagree.

use std::time::Duration;

use e2e::amqp::{self, BrokerScope};
use e2e::{PgCluster, RelayProcess};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;

/// Runs `outbox-relay <args>` to completion; returns (success, output).
fn relay(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    RelayProcess::run_to_end(args, env)
}

fn ready_cluster() -> PgCluster {
    PgCluster::with_outbox().expect("a cluster with the outbox table")
}

/// Environment for a relay against `pg` with unique broker names.
fn env(pg: &PgCluster, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("RELAY_PG_URL".into(), pg.url()),
        ("RELAY_AMQP_URL".into(), amqp::amqp_url()),
        ("RELAY_EXCHANGE".into(), e2e::unique_name("agree-x")),
        (
            "RELAY_DEAD_LETTER_EXCHANGE".into(),
            e2e::unique_name("agree-dlx"),
        ),
        (
            "RELAY_DEAD_LETTER_QUEUE".into(),
            e2e::unique_name("agree-dlq"),
        ),
        ("RELAY_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("RELAY_BACKOFF_MAX_MS".into(), "500".into()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The FAIL line of `check` named `name`, without its prefix.
fn fail_line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with("FAIL") && l[4..].trim_start().starts_with(name))
        .map(|l| l[4..].trim_start())
        .unwrap_or_else(|| panic!("no FAIL {name} line in:\n{out}"))
}

/// `check` fails with a line named `name`, and `run` refuses to start with
/// the same line.
fn both_refuse(env: &[(String, String)], name: &str) -> String {
    let env = pairs(env);
    let (ok, check) = relay(&["check"], &env);
    assert!(!ok, "check passed:\n{check}");
    let line = fail_line(&check, name).to_string();
    // The words after the name, up to the fix (a settings error has no
    // line of its own in run's output, only its words).
    let words = line[name.len()..]
        .trim_start()
        .split("; fix:")
        .next()
        .unwrap_or_default()
        .to_string();
    let (ok, run) = relay(&["run", "--no-standby"], &env);
    assert!(!ok, "run started:\n{run}");
    assert!(
        run.contains(&words),
        "run did not refuse with check's words\ncheck: {line}\nrun: {run}"
    );
    if name != "settings" {
        assert!(
            run.contains(&line),
            "run's fix differs\ncheck: {line}\nrun: {run}"
        );
    }
    line
}

#[test]
fn a_template_that_does_not_parse_is_refused_by_check_and_run_alike() {
    let pg = ready_cluster();
    let env = env(
        &pg,
        &[("RELAY_ROUTING_KEY", "{aggregate_type.{event_type}")],
    );
    let line = both_refuse(&env, "settings");
    assert!(line.contains("routing_key: template"), "{line}");
    assert!(line.contains("is not closed"), "{line}");
}

#[test]
fn a_template_naming_a_missing_column_is_refused_by_check_and_run_alike() {
    let pg = ready_cluster();
    let env = env(&pg, &[("RELAY_ROUTING_KEY", "{aggregate_type}.{kind}")]);
    let line = both_refuse(&env, "columns");
    assert!(line.contains("no column kind (routing_key)"), "{line}");
}

#[test]
fn an_invalid_slot_name_is_refused_by_check_and_run_alike() {
    let pg = ready_cluster();
    let env = env(&pg, &[("RELAY_SLOT", "Bad-Slot")]);
    let line = both_refuse(&env, "settings");
    assert!(line.contains("lower case letters"), "{line}");
}

#[tokio::test]
async fn an_exchange_of_another_type_is_refused_by_check_and_run_alike() {
    let pg = ready_cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("agree-fanout");
    scope
        .declare_exchange(&exchange, ExchangeKind::Fanout)
        .await
        .unwrap();
    let env = env(&pg, &[("RELAY_EXCHANGE", &exchange)]);
    let line = tokio::task::spawn_blocking(move || both_refuse(&env, "exchange"))
        .await
        .unwrap();
    assert!(line.contains("not as the relay declares it"), "{line}");
    assert!(line.contains("declare_exchange = false"), "{line}");
    assert!(!line.contains("passive mode"), "{line}");
}

#[tokio::test]
async fn a_dead_letter_queue_with_other_arguments_is_refused_by_check_and_run_alike() {
    let pg = ready_cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let queue = e2e::unique_name("agree-dlq-args");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(10));
    scope.declare_queue(&queue, args).await.unwrap();
    let env = env(&pg, &[("RELAY_DEAD_LETTER_QUEUE", &queue)]);
    let line = tokio::task::spawn_blocking(move || both_refuse(&env, "dead_letter"))
        .await
        .unwrap();
    assert!(line.contains(&queue), "{line}");
    assert!(line.contains("dead_letter_queue"), "{line}");
}

#[test]
fn a_payload_of_any_type_and_no_created_at_pass_check_and_run_publishes() {
    let pg = PgCluster::start().unwrap();
    pg.psql(
        "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
           aggregate_type text NOT NULL, aggregate_id text NOT NULL,
           event_type text NOT NULL, payload integer NOT NULL)",
    )
    .unwrap();
    let env = env(&pg, &[]);
    let (ok, check) = relay(&["check"], &pairs(&env));
    assert!(ok, "{check}");
    let columns = check
        .lines()
        .find(|l| l.starts_with("warn  columns"))
        .unwrap_or_else(|| panic!("{check}"));
    assert!(
        columns.contains("payload column payload is integer"),
        "{columns}"
    );
    assert!(columns.contains("no column created_at"), "{columns}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let exchange = env
        .iter()
        .find(|(k, _)| k == "RELAY_EXCHANGE")
        .map(|(_, v)| v.clone())
        .unwrap();
    runtime.block_on(async {
        let scope = BrokerScope::connect().await.unwrap();
        scope
            .declare_exchange(&exchange, ExchangeKind::Topic)
            .await
            .unwrap();
        let queue = e2e::unique_name("agree-q");
        scope
            .declare_queue(&queue, FieldTable::default())
            .await
            .unwrap();
        scope.bind(&queue, &exchange, "#").await.unwrap();
        let mut consumer = scope.consume(&queue).await.unwrap();
        let mut run = RelayProcess::spawn(["run"], &pairs(&env)).unwrap();
        run.wait_for_line("streaming from the slot", Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("{}", run.output()));
        assert!(
            run.output().contains("no column created_at"),
            "{}",
            run.output()
        );
        pg.psql(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             VALUES ('order', '1', 'created', 42)",
        )
        .unwrap();
        let got = consumer.collect(1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(&got[0].data[..], b"42");
        run.kill().unwrap();
    });
}

#[tokio::test]
async fn a_constant_exchange_with_escaped_braces_means_one_name_everywhere() {
    let pg = ready_cluster();
    let name = e2e::unique_name("agree-{v2}");
    let written = name.replace('{', "{{").replace('}', "}}");
    let env = env(&pg, &[("RELAY_EXCHANGE", &written)]);
    let (ok, check) = tokio::task::spawn_blocking({
        let env = env.clone();
        move || relay(&["check"], &pairs(&env))
    })
    .await
    .unwrap();
    assert!(ok, "{check}");
    assert!(
        check.contains(&format!("exchange {name} does not exist yet")),
        "{check}"
    );
    let scope = BrokerScope::connect().await.unwrap();
    scope.track_exchange(&name);
    let mut run = RelayProcess::spawn(["run"], &pairs(&env)).unwrap();
    run.wait_for_line("streaming from the slot", Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{}", run.output()));
    // run declared exactly that name.
    let channel = scope.connection().create_channel().await.unwrap();
    channel
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("run did not declare {name}: {e}"));
    run.kill().unwrap();
}

#[test]
fn check_passes_while_the_relay_runs() {
    let pg = ready_cluster();
    let env = env(&pg, &[]);
    let mut run = RelayProcess::spawn(["run"], &pairs(&env)).unwrap();
    run.wait_for_line("streaming from the slot", Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{}", run.output()));
    let (ok, check) = relay(&["check"], &pairs(&env));
    assert!(ok, "{check}");
    assert!(
        check.contains("is streaming to a running outbox-relay"),
        "{check}"
    );
    run.kill().unwrap();
}

#[test]
fn a_startup_connection_failure_says_its_cause_and_fix() {
    let pg = PgCluster::builder()
        .hba(&[
            "local all all trust",
            "host all relay_pw 127.0.0.1/32 scram-sha-256",
            "host all relay_pw ::1/128 scram-sha-256",
            "host all all 127.0.0.1/32 trust",
            "host all all ::1/128 trust",
        ])
        .start()
        .unwrap();
    pg.psql(e2e::OUTBOX_SQL).unwrap();
    pg.psql(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE relay_pw LOGIN REPLICATION PASSWORD 'right-pw';
         GRANT SELECT ON outbox TO relay_pw",
    )
    .unwrap();
    let wrong = pg.url_for("relay_pw", Some("wrong-pw"), "postgres");
    let wrong_env = env(&pg, &[("RELAY_PG_URL", &wrong)]);
    let (ok, run) = relay(&["run"], &pairs(&wrong_env));
    assert!(!ok, "{run}");
    assert!(run.contains("password for role relay_pw is wrong"), "{run}");
    assert!(!run.contains("reconnect to resume"), "{run}");
    let (ok, check) = relay(&["check"], &pairs(&wrong_env));
    assert!(!ok);
    assert!(fail_line(&check, "postgres").contains("password for role relay_pw is wrong"));

    // A role that does not exist is not a pg_hba.conf problem.
    let trusting = ready_cluster();
    let nobody = trusting.url_for("nobody", None, "postgres");
    let nobody_env = env(&trusting, &[("RELAY_PG_URL", &nobody)]);
    let (ok, run) = relay(&["run"], &pairs(&nobody_env));
    assert!(!ok, "{run}");
    assert!(run.contains("role nobody does not exist"), "{run}");
    assert!(!run.contains("pg_hba.conf"), "{run}");
}
