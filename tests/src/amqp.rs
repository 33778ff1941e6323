//! RabbitMQ helpers for tests against the shared broker.
//!
//! The broker is shared by every test running at once, so each test uses
//! names from [`crate::unique_name`] and a [`BrokerScope`] that remembers what
//! the test declared (or what the relay declared for it) and deletes it when
//! dropped, also when the test panics. Queues are declared with an expiry as
//! a second line of defence against a test process that is killed.
//!
//! The URL comes from `RELAY_TEST_AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::KitError;

/// Default broker for tests.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A queue a test declares disappears this long after its last use, even if
/// the test process dies before cleaning up.
const QUEUE_EXPIRY_MS: i64 = 10 * 60 * 1000;

/// The broker URL tests use.
pub fn amqp_url() -> String {
    std::env::var("RELAY_TEST_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_string())
}

/// `host:port` of the test broker (for putting a [`crate::FaultProxy`] in
/// front of it).
pub fn amqp_addr() -> std::net::SocketAddr {
    let url = amqp_url();
    let rest = url.split("://").nth(1).unwrap_or("127.0.0.1:5672");
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    };
    use std::net::ToSocketAddrs;
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 5672)))
}

/// The test broker URL with its host and port replaced (to go through a
/// proxy).
pub fn amqp_url_via(addr: std::net::SocketAddr) -> String {
    let url = amqp_url();
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or(("amqp", "127.0.0.1:5672/%2f"));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}/{path}")
}

/// Opens a connection to the test broker.
pub async fn connect() -> Result<Connection, KitError> {
    connect_to(&amqp_url()).await
}

/// Opens a connection to a broker URL.
pub async fn connect_to(url: &str) -> Result<Connection, KitError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|source| KitError::Amqp {
            url: redact(url),
            source,
        })
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn amqp_err(source: lapin::Error) -> KitError {
    KitError::Amqp {
        url: redact(&amqp_url()),
        source,
    }
}

/// What one test declared on the shared broker; deleted on drop.
#[derive(Debug)]
pub struct BrokerScope {
    connection: Connection,
    channel: Channel,
    exchanges: Mutex<Vec<String>>,
    queues: Mutex<Vec<String>>,
}

/// Deletes exchanges and queues from the test broker, from code that is not
/// async (a plain `#[test]` that ran a script against the broker).
pub fn delete_blocking(exchanges: &[&str], queues: &[&str]) {
    let exchanges: Vec<String> = exchanges.iter().map(|s| s.to_string()).collect();
    let queues: Vec<String> = queues.iter().map(|s| s.to_string()).collect();
    let cleanup = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(scope) = BrokerScope::connect().await {
                for e in &exchanges {
                    scope.track_exchange(e);
                }
                for q in &queues {
                    scope.track_queue(q);
                }
            }
        });
    });
    let _ = cleanup.join();
}

impl BrokerScope {
    /// Connects to the test broker.
    pub async fn connect() -> Result<BrokerScope, KitError> {
        BrokerScope::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url` (a private node, say).
    pub async fn connect_to(url: &str) -> Result<BrokerScope, KitError> {
        let connection = connect_to(url).await?;
        let channel = connection.create_channel().await.map_err(amqp_err)?;
        Ok(BrokerScope {
            connection,
            channel,
            exchanges: Mutex::default(),
            queues: Mutex::default(),
        })
    }

    /// The scope's channel, for anything the helpers do not cover.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The scope's connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Deletes this exchange when the scope drops (for exchanges the relay
    /// declares on the test's behalf).
    pub fn track_exchange(&self, name: &str) {
        if let Ok(mut e) = self.exchanges.lock() {
            e.push(name.to_string());
        }
    }

    /// Deletes this queue when the scope drops.
    pub fn track_queue(&self, name: &str) {
        if let Ok(mut q) = self.queues.lock() {
            q.push(name.to_string());
        }
    }

    /// Declares a durable exchange of this kind (deleted on drop).
    pub async fn declare_exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), KitError> {
        self.track_exchange(name);
        self.channel
            .exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)
    }

    /// Declares a durable queue (deleted on drop, and expiring on its own
    /// after ten idle minutes), with extra arguments such as `x-max-length`.
    pub async fn declare_queue(&self, name: &str, arguments: FieldTable) -> Result<(), KitError> {
        self.declare_queue_with(name, true, arguments).await
    }

    /// Declares a queue, durable or not (a non-durable queue keeps its
    /// messages in memory only), deleted on drop and expiring on its own.
    pub async fn declare_queue_with(
        &self,
        name: &str,
        durable: bool,
        mut arguments: FieldTable,
    ) -> Result<(), KitError> {
        self.track_queue(name);
        arguments.insert("x-expires".into(), AMQPValue::LongLongInt(QUEUE_EXPIRY_MS));
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map(|_| ())
            .map_err(amqp_err)
    }

    /// Binds a queue to an exchange with a binding key.
    pub async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), KitError> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)
    }

    /// A fresh durable topic exchange and a queue bound to it with `#` (every
    /// routing key): the usual fixture. Returns (exchange, queue).
    pub async fn topic_with_queue(&self, prefix: &str) -> Result<(String, String), KitError> {
        let exchange = crate::unique_name(&format!("{prefix}-x"));
        let queue = crate::unique_name(&format!("{prefix}-q"));
        self.declare_exchange(&exchange, ExchangeKind::Topic)
            .await?;
        self.declare_queue(&queue, FieldTable::default()).await?;
        self.bind(&queue, &exchange, "#").await?;
        Ok((exchange, queue))
    }

    /// Starts consuming a queue (on a channel of its own).
    pub async fn consume(&self, queue: &str) -> Result<Collector, KitError> {
        let channel = self.connection.create_channel().await.map_err(amqp_err)?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                crate::unique_name("kit-consumer").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp_err)?;
        Ok(Collector {
            _channel: channel,
            consumer,
        })
    }
}

impl Drop for BrokerScope {
    fn drop(&mut self) {
        let exchanges =
            std::mem::take(&mut *self.exchanges.lock().unwrap_or_else(|e| e.into_inner()));
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        if exchanges.is_empty() && queues.is_empty() {
            return;
        }
        // Drop cannot await, and the test's runtime may be gone or busy:
        // clean up on a thread of its own with a fresh connection.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let work = async {
                    let conn = connect().await.ok()?;
                    let ch = conn.create_channel().await.ok()?;
                    for q in &queues {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for x in &exchanges {
                        let _ = ch
                            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                    let _ = conn.close(200, "test done".into()).await;
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), work).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// A consumer that collects deliveries (acking each) with timeouts.
#[derive(Debug)]
pub struct Collector {
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl Collector {
    /// The next delivery, or None if none arrives within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>, KitError> {
        match tokio::time::timeout(timeout, self.consumer.next()).await {
            Err(_) => Ok(None),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(amqp_err(e)),
            Ok(Some(Ok(delivery))) => {
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(amqp_err)?;
                Ok(Some(delivery))
            }
        }
    }

    /// Exactly `n` deliveries, failing if they do not all arrive within
    /// `timeout`.
    pub async fn collect(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Delivery>, KitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(d) => got.push(d),
                None => {
                    return Err(KitError::Timeout(
                        timeout,
                        format!("{n} messages (got {})", got.len()),
                    ))
                }
            }
        }
        Ok(got)
    }

    /// Every delivery until none arrives for `quiet`, at most `max_wait`.
    pub async fn drain(
        &mut self,
        quiet: Duration,
        max_wait: Duration,
    ) -> Result<Vec<Delivery>, KitError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            match self.next(quiet.min(left)).await? {
                Some(d) => got.push(d),
                None => return Ok(got),
            }
        }
    }
}
