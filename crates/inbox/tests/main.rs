//! The inbox against the real broker and a private PostgreSQL: each test
//! named after the guarantee it proves.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::amqp::BrokerScope;
use e2e::{FaultProxy, PgCluster};
use inbox::{
    Binding, BreakerConfig, CircuitBreaker, Handler, HandlerError, Inbox, InboxConfig, Message,
    RetryPolicy,
};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tokio_postgres::{NoTls, Transaction};

/// A private cluster with the table the handlers write their effects to.
fn cluster() -> PgCluster {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,inbox=debug")
        .with_test_writer()
        .try_init();
    let pg = PgCluster::start().expect("start a private PostgreSQL");
    pg.psql("CREATE TABLE applied (message_id text NOT NULL, body text NOT NULL)")
        .unwrap();
    pg
}

/// A topic exchange for the test (what outbox-relay would publish to).
async fn exchange(scope: &BrokerScope) -> String {
    let name = e2e::unique_name("inbox-x");
    scope
        .declare_exchange(&name, lapin::ExchangeKind::Topic)
        .await
        .unwrap();
    name
}

/// A consumer's settings on a fresh queue bound to `exchange`, its queues
/// deleted with the scope.
fn config(scope: &BrokerScope, url: &str, exchange: &str, retry: RetryPolicy) -> InboxConfig {
    let mut c = InboxConfig::new(url, "payments", e2e::unique_name("inbox-q"));
    c.bindings = vec![Binding::new(exchange, "#")];
    c.retry = retry;
    c.reconnect_initial = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(500);
    for q in c.topology().queues() {
        scope.track_queue(&q);
    }
    c
}

async fn publish(scope: &BrokerScope, exchange: &str, id: Option<&str>, body: &str) {
    let mut props = BasicProperties::default().with_delivery_mode(2);
    if let Some(id) = id {
        props = props.with_message_id(id.into());
    }
    scope
        .channel()
        .basic_publish(
            exchange.into(),
            "order.placed".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Inserts the message into `applied`; fails while `fail_first` attempts
/// have not passed; records when each call came.
#[derive(Default, Clone)]
struct Recorder {
    fail_first: u32,
    poison: bool,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Handler for Recorder {
    async fn handle(&self, tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
        self.calls.lock().unwrap().push(Instant::now());
        let body = String::from_utf8_lossy(&m.body).to_string();
        tx.execute(
            "INSERT INTO applied (message_id, body) VALUES ($1, $2)",
            &[&m.message_id, &body],
        )
        .await?;
        if self.poison {
            return Err(HandlerError::Poison(format!("cannot read {body}")));
        }
        if m.attempt <= self.fail_first {
            return Err(HandlerError::Failed(format!(
                "boom on attempt {}",
                m.attempt
            )));
        }
        Ok(())
    }
}

/// Retries from 100 ms, `max_attempts` in all.
fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.5,
    }
}

fn count(pg: &PgCluster, sql: &str) -> u64 {
    pg.psql(sql).unwrap().trim().parse().unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn start<H: Handler>(
    inbox: Inbox<H>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        inbox
            .run(async {
                let _ = stopped.await;
            })
            .await
            .expect("the inbox runs");
    });
    (stop, task)
}

fn pg_config(pg: &PgCluster) -> tokio_postgres::Config {
    pg.url().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_or_resent_message_is_applied_once() {
    let pg = cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let x = exchange(&scope).await;
    let proxy = Arc::new(FaultProxy::start(e2e::amqp::amqp_addr()).unwrap());
    let url = e2e::amqp::amqp_url_via(proxy.addr());
    let c = config(&scope, &url, &x, RetryPolicy::default());
    // The link is cut after the first commit, before its ack: the broker
    // gets the delivery back and redelivers it to the reconnected consumer.
    let cut_once = Arc::new(AtomicBool::new(false));
    let hook_proxy = Arc::clone(&proxy);
    let hook_cut = Arc::clone(&cut_once);
    let inbox = Inbox::new(c.clone(), pg_config(&pg), NoTls, Recorder::default())
        .unwrap()
        .on_committed(move |_| {
            if !hook_cut.swap(true, Ordering::SeqCst) {
                hook_proxy.cut();
                // The proxy runs on its own thread: wait until it has
                // closed the link, so that the ack cannot slip through.
                let deadline = Instant::now() + Duration::from_secs(5);
                while hook_proxy.open_connections() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    inbox.migrate().await.unwrap();
    inbox.declare().await.unwrap();
    let stats = inbox.stats();
    let (stop, task) = start(inbox);
    publish(&scope, &x, Some("order-1"), "first").await;
    wait_until("the cut", Duration::from_secs(20), || {
        cut_once.load(Ordering::SeqCst)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    wait_until(
        "the redelivery to be skipped",
        Duration::from_secs(30),
        || stats.snapshot().duplicates >= 1,
    )
    .await;
    // The relay sent it twice (a rewind after a broker fault): skipped too.
    publish(&scope, &x, Some("order-1"), "first").await;
    publish(&scope, &x, Some("order-2"), "second").await;
    wait_until("both", Duration::from_secs(30), || {
        let s = stats.snapshot();
        s.duplicates >= 2 && s.applied >= 2
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM applied WHERE message_id = 'order-1'"
        ),
        1
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM applied"), 2);
    assert_eq!(
        count(
            &pg,
            "SELECT duplicates FROM inbox WHERE consumer = 'payments' AND message_id = 'order-1'"
        ),
        2,
        "the inbox table shows the duplicates it skipped"
    );
    let s = stats.snapshot();
    assert!(s.sessions >= 2, "it reconnected: {s:?}");
    assert_eq!((s.applied, s.duplicates), (2, 2), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_twice_is_applied_once_after_two_jittered_delays() {
    let pg = cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let x = exchange(&scope).await;
    let policy = RetryPolicy {
        max_attempts: 5,
        initial: Duration::from_millis(600),
        max: Duration::from_secs(10),
        multiplier: 2.0,
        jitter: 0.5,
    };
    let c = config(&scope, &e2e::amqp::amqp_url(), &x, policy.clone());
    let recorder = Recorder {
        fail_first: 2,
        ..Recorder::default()
    };
    let calls = Arc::clone(&recorder.calls);
    let inbox = Inbox::new(c, pg_config(&pg), NoTls, recorder).unwrap();
    inbox.migrate().await.unwrap();
    inbox.declare().await.unwrap();
    let stats = inbox.stats();
    let (stop, task) = start(inbox);
    publish(&scope, &x, Some("order-7"), "seven").await;
    wait_until("the third attempt", Duration::from_secs(30), || {
        stats.snapshot().applied == 1
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    let s = stats.snapshot();
    assert_eq!((s.applied, s.retried, s.parked), (1, 2, 0), "{s:?}");
    assert_eq!(
        count(&pg, "SELECT count(*) FROM applied"),
        1,
        "the failed attempts rolled back"
    );
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "two failures, then the success");
    // Each wait is the broker's TTL on the attempt's delay queue: within
    // the attempt's range, plus the hand-offs (publish, confirm, expiry,
    // dead-lettering, delivery) a few tens of milliseconds each.
    const HAND_OFFS: Duration = Duration::from_millis(400);
    for (retry, pair) in (1u32..).zip(calls.windows(2)) {
        let waited = pair[1] - pair[0];
        let (low, high) = policy.range(retry);
        assert!(
            waited >= low && waited <= high + HAND_OFFS,
            "retry {retry} waited {waited:?}, outside {low:?}..{high:?} (+{HAND_OFFS:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_parked_with_its_error_after_the_last_attempt() {
    let pg = cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let x = exchange(&scope).await;
    let policy = quick_retries(3);
    let c = config(&scope, &e2e::amqp::amqp_url(), &x, policy);
    let parked_queue = c.topology().parked_queue();
    let recorder = Recorder {
        fail_first: u32::MAX,
        ..Recorder::default()
    };
    let calls = Arc::clone(&recorder.calls);
    let inbox = Inbox::new(c.clone(), pg_config(&pg), NoTls, recorder).unwrap();
    inbox.migrate().await.unwrap();
    inbox.declare().await.unwrap();
    let stats = inbox.stats();
    let (stop, task) = start(inbox);
    publish(&scope, &x, Some("order-9"), "nine").await;
    // Without a message id nothing can be deduplicated: parked at once.
    publish(&scope, &x, None, "anonymous").await;
    wait_until("both parked", Duration::from_secs(30), || {
        stats.snapshot().parked == 2
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    // A handler saying poison parks at the first attempt.
    let poisoner = Recorder {
        poison: true,
        ..Recorder::default()
    };
    let inbox = Inbox::new(c, pg_config(&pg), NoTls, poisoner).unwrap();
    inbox.declare().await.unwrap();
    let poison_stats = inbox.stats();
    let (stop, task) = start(inbox);
    publish(&scope, &x, Some("order-10"), "unreadable").await;
    wait_until("the poison parked", Duration::from_secs(30), || {
        poison_stats.snapshot().parked == 1
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();

    assert_eq!(calls.lock().unwrap().len(), 3, "three attempts in all");
    assert_eq!(stats.snapshot().retried, 2);
    assert_eq!(count(&pg, "SELECT count(*) FROM applied"), 0);
    assert_eq!(
        count(&pg, "SELECT count(*) FROM inbox"),
        0,
        "a failed attempt leaves no claim behind"
    );
    let mut parked = scope.consume(&parked_queue).await.unwrap();
    let got = parked.collect(3, Duration::from_secs(10)).await.unwrap();
    let by_id = |id: Option<&str>| {
        got.iter()
            .find(|d| d.properties.message_id().as_ref().map(|m| m.as_str()) == id)
            .unwrap_or_else(|| panic!("{id:?} not parked"))
    };
    let header = |d: &lapin::message::Delivery, name: &str| -> Option<String> {
        match d.properties.headers().as_ref()?.inner().get(name)? {
            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
            other => Some(format!("{other:?}")),
        }
    };
    let nine = by_id(Some("order-9"));
    assert_eq!(&nine.data[..], b"nine");
    assert_eq!(
        header(nine, inbox::ERROR_HEADER).as_deref(),
        Some("boom on attempt 3")
    );
    assert!(header(nine, inbox::ATTEMPTS_HEADER).unwrap().contains('3'));
    assert_eq!(
        header(nine, inbox::ORIGINAL_EXCHANGE_HEADER).as_deref(),
        Some(x.as_str())
    );
    assert_eq!(
        header(nine, inbox::ORIGINAL_ROUTING_KEY_HEADER).as_deref(),
        Some("order.placed")
    );
    let anonymous = by_id(None);
    assert!(header(anonymous, inbox::ERROR_HEADER)
        .unwrap()
        .contains("no message_id"));
    let ten = by_id(Some("order-10"));
    assert_eq!(
        header(ten, inbox::ERROR_HEADER).as_deref(),
        Some("cannot read unreadable")
    );
    assert!(header(ten, inbox::ATTEMPTS_HEADER).unwrap().contains('1'));
}

/// Calls a dependency through the breaker before writing its effect.
#[derive(Clone)]
struct Guarded {
    breaker: Arc<CircuitBreaker>,
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Handler for Guarded {
    async fn handle(&self, tx: &Transaction<'_>, m: &Message) -> Result<(), HandlerError> {
        let down = Arc::clone(&self.down);
        let calls = Arc::clone(&self.calls);
        self.breaker
            .call(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if down.load(Ordering::SeqCst) {
                    Err("payment provider unreachable")
                } else {
                    Ok(())
                }
            })
            .await?;
        let body = String::from_utf8_lossy(&m.body).to_string();
        tx.execute(
            "INSERT INTO applied (message_id, body) VALUES ($1, $2)",
            &[&m.message_id, &body],
        )
        .await?;
        Ok(())
    }
}

async fn ready_in(scope: &BrokerScope, queue: &str) -> u32 {
    scope
        .channel()
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stops_consumption_and_a_successful_probe_resumes_it() {
    let pg = cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let x = exchange(&scope).await;
    let mut c = config(&scope, &e2e::amqp::amqp_url(), &x, RetryPolicy::default());
    c.prefetch = 1;
    c.concurrency = 2;
    let queue = c.queue.clone();
    let breaker = Arc::new(CircuitBreaker::new(
        "payment provider",
        BreakerConfig {
            failures_to_open: 1,
            open_for: Duration::from_millis(700),
        },
    ));
    let handler = Guarded {
        breaker: Arc::clone(&breaker),
        down: Arc::new(AtomicBool::new(true)),
        calls: Arc::new(AtomicU32::new(0)),
    };
    let (down, calls) = (Arc::clone(&handler.down), Arc::clone(&handler.calls));
    let inbox = Inbox::new(c, pg_config(&pg), NoTls, handler)
        .unwrap()
        .with_breaker(Arc::clone(&breaker));
    inbox.migrate().await.unwrap();
    inbox.declare().await.unwrap();
    let stats = inbox.stats();
    let (stop, task) = start(inbox);
    for i in 0..10 {
        publish(&scope, &x, Some(&format!("pay-{i}")), "charge").await;
    }
    wait_until("the breaker to open", Duration::from_secs(20), || {
        breaker.is_open()
    })
    .await;
    // While the provider is down: a probe every 0.7 s, nothing else taken
    // from the queue, no retry spent.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = calls.load(Ordering::SeqCst);
    assert!(during <= 2 + 5, "calls while open: {during}");
    assert!(
        ready_in(&scope, &queue).await >= 6,
        "the messages wait on the broker while the breaker is open"
    );
    let s = stats.snapshot();
    assert_eq!((s.applied, s.retried, s.parked), (0, 0, 0), "{s:?}");
    assert!(s.unavailable >= 2, "{s:?}");
    // The provider is back: the next probe closes the breaker and the
    // queue drains, each message once.
    down.store(false, Ordering::SeqCst);
    wait_until("all ten applied", Duration::from_secs(20), || {
        stats.snapshot().applied == 10
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    assert!(!breaker.is_open());
    assert_eq!(count(&pg, "SELECT count(*) FROM applied"), 10);
    assert_eq!(
        count(&pg, "SELECT count(DISTINCT message_id) FROM applied"),
        10
    );
    assert_eq!(
        stats.snapshot().retried,
        0,
        "no attempt was spent on the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_ids_older_than_the_window_in_batches() {
    let pg = cluster();
    let client = pg.client().await.unwrap();
    let table = inbox::InboxTable::parse("public.inbox").unwrap();
    inbox::migrate(&client, &table).await.unwrap();
    pg.psql(
        "INSERT INTO inbox (consumer, message_id, received_at)
         SELECT 'payments', 'old-' || g, now() - interval '8 days' FROM generate_series(1, 2500) g;
         INSERT INTO inbox (consumer, message_id)
         SELECT 'payments', 'new-' || g FROM generate_series(1, 10) g;",
    )
    .unwrap();
    let pruned = inbox::prune(&client, &table, Duration::from_secs(7 * 86_400), 1000)
        .await
        .unwrap();
    assert_eq!(pruned, 2500);
    assert_eq!(count(&pg, "SELECT count(*) FROM inbox"), 10);
    assert_eq!(
        inbox::prune(&client, &table, Duration::from_secs(7 * 86_400), 1000)
            .await
            .unwrap(),
        0
    );
}

/// Swallows an SQL error and says Ok: the transaction is aborted, and
/// COMMIT on it would silently roll back.
struct Swallower;

impl Handler for Swallower {
    async fn handle(&self, tx: &Transaction<'_>, _m: &Message) -> Result<(), HandlerError> {
        let _ = tx.execute("SELECT 1 / 0", &[]).await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_hides_a_failed_transaction_is_not_taken_at_its_word() {
    let pg = cluster();
    let scope = BrokerScope::connect().await.unwrap();
    let x = exchange(&scope).await;
    let policy = quick_retries(2);
    let c = config(&scope, &e2e::amqp::amqp_url(), &x, policy);
    let parked_queue = c.topology().parked_queue();
    let inbox = Inbox::new(c, pg_config(&pg), NoTls, Swallower).unwrap();
    inbox.migrate().await.unwrap();
    inbox.declare().await.unwrap();
    let stats = inbox.stats();
    let (stop, task) = start(inbox);
    publish(&scope, &x, Some("order-11"), "eleven").await;
    // A message id PostgreSQL cannot store (a NUL) is parked, not retried
    // forever.
    publish(&scope, &x, Some("bad\0id"), "nul").await;
    wait_until("both parked", Duration::from_secs(30), || {
        stats.snapshot().parked == 2
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap();
    let s = stats.snapshot();
    assert_eq!((s.applied, s.retried), (0, 1), "{s:?}");
    assert_eq!(count(&pg, "SELECT count(*) FROM inbox"), 0);
    let mut parked = scope.consume(&parked_queue).await.unwrap();
    let got = parked.collect(2, Duration::from_secs(10)).await.unwrap();
    let errors: Vec<String> = got
        .iter()
        .map(|d| {
            match d
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(inbox::ERROR_HEADER))
            {
                Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
                other => format!("{other:?}"),
            }
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("its transaction had failed")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("NUL")), "{errors:?}");
}
