//! What the sink's integration tests share: a sink configuration for the
//! test broker, a [`Ledger`] that reads the outcome stream and checks its
//! order, test messages, `rabbitmqctl`, and a log capture for the
//! password test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use amqp_sink::{
    BackoffConfig, BrokerUrl, FailureReason, HeaderValue, MessageProperties, Outcomes,
    OutgoingMessage, Publisher, SinkConfig, SinkEvent,
};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A sink configuration for the broker at `url`, publishing to `exchange`
/// (declared by the test), with no dead-letter topology, short reconnect
/// delays and a short heartbeat timeout.
pub fn config_for(url: &str, exchange: &str) -> SinkConfig {
    let broker: BrokerUrl = url.parse().expect("test broker URL");
    let mut config = SinkConfig::new(vec![broker]);
    config.exchange.name = exchange.to_string();
    config.dead_letter = None;
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(500),
        multiplier: 2.0,
    };
    config.heartbeat_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(3);
    config.connection_name = format!("amqp-sink-test-{}", std::process::id());
    config
}

/// [`config_for`] the test broker.
pub fn config(exchange: &str) -> SinkConfig {
    config_for(&e2e::amqp::amqp_url(), exchange)
}

/// Message `i`: message id `m-<i>`, a JSON body, every property kind.
pub fn message(exchange: &str, routing_key: &str, i: u64) -> OutgoingMessage {
    OutgoingMessage {
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        body: Bytes::from(format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(40))),
        properties: MessageProperties {
            message_id: Some(format!("m-{i}")),
            message_type: Some("created".into()),
            content_type: Some("application/json".into()),
            content_encoding: None,
            timestamp: Some(1_700_000_000 + i),
            correlation_id: Some(format!("c-{}", i % 7)),
            app_id: None,
            reply_to: None,
            expiration: None,
            priority: None,
            headers: vec![
                ("aggregate_type".into(), HeaderValue::String("order".into())),
                (
                    "seq".into(),
                    HeaderValue::Int(i64::try_from(i).unwrap_or(i64::MAX)),
                ),
                ("even".into(), HeaderValue::Bool(i.is_multiple_of(2))),
                (
                    "raw".into(),
                    HeaderValue::Bytes(Bytes::from(i.to_be_bytes().to_vec())),
                ),
            ],
        },
    }
}

/// The `i` of a delivery's message id `m-<i>`.
pub fn message_index(delivery: &lapin::message::Delivery) -> u64 {
    delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| id.as_str().strip_prefix("m-"))
        .and_then(|i| i.parse().ok())
        .expect("a test message id m-<i>")
}

/// What the outcome stream said, per sequence number, checked for order.
#[derive(Debug, Default)]
pub struct Ledger {
    /// The highest sequence number with an outcome.
    pub reported: u64,
    /// Per sequence number: `None` confirmed, `Some(reason)` failed.
    pub outcomes: BTreeMap<u64, Option<FailureReason>>,
    /// Every event that is not an outcome, in order.
    pub link_events: Vec<SinkEvent>,
    /// Outcomes that broke the order contract.
    pub violations: Vec<String>,
    /// The stream ended.
    pub ended: bool,
    /// The last few events, for failure messages.
    pub recent: Vec<String>,
}

impl Ledger {
    fn record(&mut self, event: SinkEvent) {
        self.recent.push(format!("{event:?}"));
        if self.recent.len() > 6 {
            self.recent.remove(0);
        }
        match event {
            SinkEvent::Confirmed { up_to } => {
                let up_to = up_to.get();
                if up_to <= self.reported {
                    self.violations.push(format!(
                        "Confirmed up to {up_to} after {} was reported",
                        self.reported
                    ));
                }
                for seq in self.reported + 1..=up_to {
                    self.outcomes.insert(seq, None);
                }
                self.reported = self.reported.max(up_to);
            }
            SinkEvent::Failed { seq, reason } => {
                let seq = seq.get();
                if seq <= self.reported {
                    self.violations
                        .push(format!("Failed {seq} after {} was reported", self.reported));
                }
                // Seqs skipped between the last outcome and this one must
                // not exist: every accepted message gets an outcome.
                for missing in self.reported + 1..seq {
                    self.violations.push(format!(
                        "no outcome for {missing} before Failed {seq}: {:?}",
                        self.recent
                    ));
                }
                self.outcomes.insert(seq, Some(reason));
                self.reported = self.reported.max(seq);
            }
            other => self.link_events.push(other),
        }
    }

    /// Sequence numbers reported confirmed.
    pub fn confirmed(&self) -> Vec<u64> {
        self.outcomes
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Sequence numbers reported failed, with why.
    pub fn failed(&self) -> Vec<(u64, FailureReason)> {
        self.outcomes
            .iter()
            .filter_map(|(s, o)| o.clone().map(|r| (*s, r)))
            .collect()
    }

    /// Whether a link event matching `pred` was seen.
    pub fn saw(&self, pred: impl Fn(&SinkEvent) -> bool) -> bool {
        self.link_events.iter().any(pred)
    }
}

/// Reads an [`Outcomes`] stream in a task of its own into a [`Ledger`].
#[derive(Debug)]
pub struct Reader {
    ledger: Arc<Mutex<Ledger>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Reader {
    pub fn spawn(mut outcomes: Outcomes) -> Reader {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let changed = Arc::new(Notify::new());
        let task = {
            let ledger = Arc::clone(&ledger);
            let changed = Arc::clone(&changed);
            tokio::spawn(async move {
                while let Some(event) = outcomes.recv().await {
                    ledger.lock().unwrap().record(event);
                    changed.notify_waiters();
                }
                ledger.lock().unwrap().ended = true;
                changed.notify_waiters();
            })
        };
        Reader {
            ledger,
            changed,
            task,
        }
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap()
    }

    /// Waits until `pred` holds, failing the test after `timeout`.
    pub async fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Ledger) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let ledger = self.ledger();
                assert!(
                    ledger.violations.is_empty(),
                    "outcome order broken: {:?}",
                    ledger.violations
                );
                if pred(&ledger) {
                    return;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                let ledger = self.ledger();
                panic!(
                    "timed out after {timeout:?} waiting for {what}: reported up to {}, link \
                     events {:?}",
                    ledger.reported, ledger.link_events
                );
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }
}

/// Publishes `message` and waits until the broker confirmed it; returns
/// its sequence number.
pub async fn publish_confirmed(
    publisher: &mut Publisher,
    reader: &Reader,
    message: OutgoingMessage,
) -> u64 {
    let seq = publisher.publish(message).await.unwrap().get();
    reader
        .wait(
            &format!("message {seq} confirmed"),
            Duration::from_secs(10),
            |l| l.outcomes.get(&seq).is_some_and(|o| o.is_none()),
        )
        .await;
    seq
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `rabbitmqctl` with these arguments; its trimmed output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("running rabbitmqctl {args:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

static CAPTURING: AtomicBool = AtomicBool::new(false);
static CAPTURE: Mutex<Capture> = Mutex::new(Capture {
    secrets: Vec::new(),
    leaks: Vec::new(),
    events: 0,
    traces: 0,
});

/// What the log capture found.
#[derive(Debug, Clone)]
pub struct Capture {
    secrets: Vec<String>,
    /// Log lines that contained a secret.
    pub leaks: Vec<String>,
    /// Events seen.
    pub events: usize,
    /// TRACE events seen (proof that the capture sees that level).
    pub traces: usize,
}

/// Checks every tracing event of the process, at every level, from every
/// thread (lapin logs from its own I/O thread), for these secrets while the
/// guard lives; only what `amqp_sink::LOG_DIRECTIVES` filters out (lapin's
/// frame traces) is skipped. Lines are checked as they come, not kept: other tests run
/// at the same time.
pub fn capture_logs(secrets: Vec<String>) -> LogCapture {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(CaptureLayer);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
    *CAPTURE.lock().unwrap() = Capture {
        secrets,
        leaks: Vec::new(),
        events: 0,
        traces: 0,
    };
    CAPTURING.store(true, Ordering::SeqCst);
    // Callsites cached as "never" before the capture started must be asked
    // again.
    tracing::callsite::rebuild_interest_cache();
    LogCapture
}

/// Stops capturing when dropped.
#[derive(Debug)]
pub struct LogCapture;

impl LogCapture {
    /// What was found so far.
    pub fn report(&self) -> Capture {
        CAPTURE.lock().unwrap().clone()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURING.store(false, Ordering::SeqCst);
    }
}

fn check_line(line: String, trace: bool) {
    let mut capture = CAPTURE.lock().unwrap();
    capture.events += 1;
    if trace {
        capture.traces += 1;
    }
    if capture.secrets.iter().any(|s| line.contains(s.as_str())) {
        capture.leaks.push(line);
    }
}

struct CaptureLayer;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // Everything, at every level, except what
        // `amqp_sink::LOG_DIRECTIVES` (lapin=debug) filters out.
        CAPTURING.load(Ordering::Relaxed)
            && !(metadata.target().starts_with("lapin")
                && *metadata.level() == tracing::Level::TRACE)
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut line = format!("span {}", attrs.metadata().name());
        attrs.record(&mut Fields(&mut line));
        check_line(line, false);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        let mut line = format!("{} {}", metadata.level(), metadata.target());
        event.record(&mut Fields(&mut line));
        let trace = *metadata.level() == tracing::Level::TRACE;
        check_line(line, trace);
    }
}
