//! The order saga end to end (examples/saga): 1,000 orders through three
//! services, each with its own schema, outbox and inbox, and one
//! outbox-relay with a `[[table]]` entry per outbox, while a consumer is
//! SIGKILLed twice, the relay once, and the relay's broker link is cut
//! for 5 s. Every order ends confirmed or cancelled, a confirmed one with
//! exactly one charge and one reservation, a cancelled one compensated,
//! nobody charged twice; the inbox tables show the duplicates they skipped
//! (those of the faults, and a replay of every order.placed event).
//! (10% of payments are declined, 5% of orders find no stock, 3% fail at
//! capture: every compensation path is taken.)

use std::time::{Duration, Instant};

use e2e::amqp::{self, BrokerScope};
use e2e::{FaultProxy, PgCluster, RelayProcess};
use saga::runner::{self, FailureRates};
use saga::schema;
use saga::services::Service;

const ORDERS: u64 = 1000;
const RATE: f64 = 100.0;

struct Saga {
    bin: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Saga {
    fn spawn(&self, args: &[&str]) -> RelayProcess {
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        RelayProcess::spawn_program(&self.bin, args, &env).expect("start saga")
    }

    /// A service, once it consumes.
    fn service(&self, name: &str) -> RelayProcess {
        let p = self.spawn(&["service", name]);
        p.wait_for_line("consuming", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{name} does not start: {e}\n{}", p.output()));
        p
    }
}

fn start_relay(env: &[(String, String)]) -> RelayProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let relay = RelayProcess::spawn(["run"], &env).expect("start the relay");
    relay
        .wait_for_line("streaming from the slot", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the relay does not stream: {e}\n{}", relay.output()));
    relay
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_end_confirmed_or_compensated_through_kills_and_a_cut_link() {
    let pg = PgCluster::start().expect("start a private PostgreSQL");
    let scope = BrokerScope::connect().await.unwrap();
    let prefix = e2e::unique_name("saga");
    for service in schema::SERVICES {
        scope.track_exchange(&schema::exchange(&prefix, service));
        let config = Service::parse(service)
            .unwrap()
            .inbox_config("", &prefix, 1);
        for queue in config.topology().queues() {
            scope.track_queue(&queue);
        }
    }
    let dlx = e2e::unique_name("saga-dlx");
    let dlq = e2e::unique_name("saga-dlq");
    scope.track_exchange(&dlx);
    scope.track_queue(&dlq);

    let saga = Saga {
        bin: e2e::workspace_binary("saga", "saga").expect("build the saga"),
        env: vec![
            ("SAGA_PG_URL".into(), pg.url()),
            ("SAGA_AMQP_URL".into(), amqp::amqp_url()),
            ("SAGA_PREFIX".into(), prefix.clone()),
        ],
    };
    let mut setup = saga.spawn(&["setup"]);
    let status = setup.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", setup.output());

    // One relay for the three outboxes; its broker link goes through a
    // proxy the test can cut.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, schema::relay_toml(&prefix)).unwrap();
    let proxy = FaultProxy::start(amqp::amqp_addr()).unwrap();
    let relay_env: Vec<(String, String)> = vec![
        ("RELAY_CONFIG".into(), config.to_str().unwrap().into()),
        ("RELAY_PG_URL".into(), pg.url()),
        ("RELAY_AMQP_URL".into(), amqp::amqp_url_via(proxy.addr())),
        ("RELAY_DEAD_LETTER_EXCHANGE".into(), dlx.clone()),
        ("RELAY_DEAD_LETTER_QUEUE".into(), dlq.clone()),
        ("RELAY_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        ("RELAY_BACKOFF_INITIAL_MS".into(), "100".into()),
        ("RELAY_BACKOFF_MAX_MS".into(), "1000".into()),
        ("RELAY_HEARTBEAT_SECS".into(), "3".into()),
    ];
    let mut relay = start_relay(&relay_env);
    let mut orders = saga.service("orders");
    let mut payments = saga.service("payments");
    let mut stock = saga.service("stock");

    // Place the orders in the background; the faults come meanwhile.
    let mut client = pg.client().await.unwrap();
    let placing = tokio::spawn(async move {
        let failures = FailureRates {
            decline: 0.10,
            shortage: 0.05,
            // And a few captures that fail after the stock was reserved:
            // the release-stock compensation.
            capture_failure: 0.03,
        };
        let ids = runner::place(&mut client, RATE, ORDERS, failures, 7)
            .await
            .expect("place the orders");
        (client, ids)
    });
    let started = Instant::now();
    let at = |secs: f64| async move {
        let when = Duration::from_secs_f64(secs);
        if let Some(wait) = when.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    };
    // t=2 s: a consumer is SIGKILLed (and started again).
    at(2.0).await;
    payments.kill().unwrap();
    payments = saga.service("payments");
    // t=3..8 s: the relay's broker link is cut.
    at(3.0).await;
    proxy.cut();
    // t=6 s: the same consumer, SIGKILLed again.
    at(6.0).await;
    payments.kill().unwrap();
    payments = saga.service("payments");
    at(8.0).await;
    proxy.restore();
    // t=10 s: the relay is SIGKILLed under load and started again.
    at(10.0).await;
    relay.kill().unwrap();
    let env = relay_env.clone();
    relay = tokio::task::spawn_blocking(move || start_relay(&env))
        .await
        .unwrap();

    let (client, ids) = placing.await.unwrap();
    let pending = runner::wait(&client, &ids, Duration::from_secs(180))
        .await
        .unwrap();
    let report = runner::verify(&client, &ids).await.unwrap();
    let outputs = || {
        format!(
            "relay:\n{}\norders:\n{}\npayments:\n{}\nstock:\n{}",
            tail(&relay.output()),
            tail(&orders.output()),
            tail(&payments.output()),
            tail(&stock.output())
        )
    };
    assert_eq!(pending, 0, "{}\n{}", report.render(), outputs());
    assert!(
        report.violations.is_empty(),
        "{}\n{}",
        report.render(),
        outputs()
    );
    assert_eq!(report.orders, i64::try_from(ORDERS).unwrap());
    assert_eq!(report.confirmed + report.cancelled, report.orders);
    // The failure paths were all taken, about as often as asked.
    assert!((50..=150).contains(&report.declined), "{}", report.render());
    assert!(
        (20..=90).contains(&report.out_of_stock),
        "{}",
        report.render()
    );
    assert!(
        (10..=60).contains(&report.capture_failed),
        "{}",
        report.render()
    );
    // The faults above produce some duplicates (how many depends on where
    // each kill lands). A replay of every order.placed event while the
    // services run makes a thousand more for certain: each must be
    // skipped, and nobody charged again.
    let from_faults = report.duplicates_skipped;
    let mut replay = RelayProcess::spawn(
        ["replay", "--table", "orders.outbox", "--since", "-infinity"],
        &relay_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )
    .expect("start the replay");
    let status = replay.wait(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{}", replay.output());
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let report = runner::verify(&client, &ids).await.unwrap();
        if report.duplicates_skipped >= from_faults + 1000 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        report.duplicates_skipped >= from_faults + 1000,
        "the replayed events were received and skipped: {}\n{}",
        report.render(),
        outputs()
    );
    assert!(
        report.violations.is_empty(),
        "after the replay: {}",
        report.render()
    );
    println!("duplicates from the faults: {from_faults}");
    for p in [&mut relay, &mut orders, &mut payments, &mut stock] {
        let _ = p.kill();
    }
    println!("{}", report.render());
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
