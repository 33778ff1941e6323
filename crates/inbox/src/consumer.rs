//! The consumer: takes deliveries from the work queue and applies each
//! exactly once.
//!
//! For each delivery, in one PostgreSQL transaction: claim the message id
//! in the inbox table (a duplicate is committed as seen, acked and
//! skipped), run the handler, commit. The delivery is acked only after the
//! commit, so a consumer that dies between the two gets the message again
//! and skips it; one that dies before the commit applied nothing and
//! applies it on redelivery. A handler failure rolls back and the message
//! is retried through the delay queues (published with confirms before the
//! delivery is acked: a retry is never lost), or parked once its attempts
//! ran out; a poison message is parked at once. A circuit breaker that is
//! open stops the workers from taking deliveries, and the message whose
//! dependency was unavailable is tried again in hand once the breaker lets
//! a probe through: no attempt is spent on a dependency that is down.
//!
//! Each of `concurrency` workers has its own channel (prefetch `prefetch`)
//! and its own PostgreSQL connection. A lost broker link or database
//! connection ends the session: unacked deliveries go back to the queue,
//! and the consumer reconnects with backoff. A stop drops the session the
//! same way: nothing acked is undone, nothing unacked is lost.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket, Transaction};

use crate::breaker::CircuitBreaker;
use crate::error::{HandlerError, InboxError};
use crate::message::{
    bounded, Message, ATTEMPTS_HEADER, ATTEMPT_HEADER, CONSUMER_HEADER, ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER, ORIGINAL_ROUTING_KEY_HEADER,
};
use crate::retry::{Next, RetryPolicy};
use crate::store::{self, InboxTable};
use crate::topology::{Binding, QueueKind, Topology};

/// Applies one message's effects in the caller's transaction.
///
/// The transaction also holds the message's claim in the inbox table: what
/// the handler writes commits with the claim or not at all. Calls to other
/// systems (an HTTP API) are not undone by a rollback; make them idempotent
/// (pass the message id along) or guard them with a [`CircuitBreaker`].
pub trait Handler: Send + Sync + 'static {
    /// Applies `message` through `tx`.
    fn handle(
        &self,
        tx: &Transaction<'_>,
        message: &Message,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A consumer's settings.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// The broker (`amqp://` or `amqps://`).
    pub amqp_url: String,
    /// The consumer's name: its key in the inbox table (several consumers
    /// of one event each apply it once) and its consumer tags.
    pub consumer: String,
    /// The work queue.
    pub queue: String,
    /// Its bindings to the relay's exchanges.
    pub bindings: Vec<Binding>,
    /// Its kind.
    pub queue_kind: QueueKind,
    /// Declare it with `x-single-active-consumer` (ordered consumption
    /// across processes; see the README's ordering trade-off).
    pub single_active_consumer: bool,
    /// Unacked deliveries per worker.
    pub prefetch: u16,
    /// Workers, each with its own channel and database connection.
    pub concurrency: usize,
    /// The inbox table (`schema.table` or `table`).
    pub inbox_table: String,
    /// Retries and parking.
    pub retry: RetryPolicy,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl InboxConfig {
    /// The defaults for a consumer named `consumer` reading `queue`.
    pub fn new(
        amqp_url: impl Into<String>,
        consumer: impl Into<String>,
        queue: impl Into<String>,
    ) -> InboxConfig {
        InboxConfig {
            amqp_url: amqp_url.into(),
            consumer: consumer.into(),
            queue: queue.into(),
            bindings: Vec::new(),
            queue_kind: QueueKind::Classic,
            single_active_consumer: false,
            prefetch: 32,
            concurrency: 1,
            inbox_table: "inbox".into(),
            retry: RetryPolicy::default(),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
        }
    }

    /// The queues it declares.
    pub fn topology(&self) -> Topology {
        Topology {
            queue: self.queue.clone(),
            bindings: self.bindings.clone(),
            kind: self.queue_kind,
            single_active_consumer: self.single_active_consumer,
            retries: self.retry.retries(),
        }
    }

    fn validate(&self) -> Result<(Topology, InboxTable), InboxError> {
        let config = |e: &dyn std::fmt::Display| InboxError::Config(e.to_string());
        if self.consumer.is_empty() || self.consumer.chars().any(char::is_control) {
            return Err(InboxError::Config(
                "consumer must be a name without control characters".into(),
            ));
        }
        if self.prefetch == 0 || self.concurrency == 0 {
            return Err(InboxError::Config(
                "prefetch and concurrency must be at least 1".into(),
            ));
        }
        if self.concurrency > 64 {
            return Err(InboxError::Config(format!(
                "concurrency {} is over 64 (each worker holds a database connection)",
                self.concurrency
            )));
        }
        self.retry.validate().map_err(|e| config(&e))?;
        let topology = self.topology();
        topology.validate()?;
        let table = InboxTable::parse(&self.inbox_table).map_err(|e| config(&e))?;
        Ok((topology, table))
    }
}

/// What a consumer did, counted since it started.
#[derive(Debug, Default)]
pub struct Stats {
    applied: AtomicU64,
    duplicates: AtomicU64,
    retried: AtomicU64,
    parked: AtomicU64,
    unavailable: AtomicU64,
    sessions: AtomicU64,
}

/// A reading of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Messages applied (their effects committed).
    pub applied: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Failed attempts sent to a delay queue.
    pub retried: u64,
    /// Messages parked.
    pub parked: u64,
    /// Attempts held back by an open breaker (not counted as attempts).
    pub unavailable: u64,
    /// Sessions started (1 plus reconnects).
    pub sessions: u64,
}

impl Stats {
    /// The counts now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            applied: get(&self.applied),
            duplicates: get(&self.duplicates),
            retried: get(&self.retried),
            parked: get(&self.parked),
            unavailable: get(&self.unavailable),
            sessions: get(&self.sessions),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Client, tokio_postgres::Error>> + Send>>;
type Connect = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;
type Hook = Arc<dyn Fn(&Message) + Send + Sync>;

/// An idempotent consumer (see the module documentation).
pub struct Inbox<H> {
    config: InboxConfig,
    topology: Topology,
    table: InboxTable,
    handler: Arc<H>,
    connect: Connect,
    breaker: Option<Arc<CircuitBreaker>>,
    stats: Arc<Stats>,
    on_committed: Option<Hook>,
}

impl<H> std::fmt::Debug for Inbox<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("consumer", &self.config.consumer)
            .field("queue", &self.config.queue)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Inbox<H> {
    /// A consumer with these settings, database and handler. `tls` is how
    /// tokio-postgres makes TLS connections (`tokio_postgres::NoTls` for
    /// none).
    pub fn new<T>(
        config: InboxConfig,
        pg: tokio_postgres::Config,
        tls: T,
        handler: H,
    ) -> Result<Inbox<H>, InboxError>
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (topology, table) = config.validate()?;
        let connect: Connect = Arc::new(move || {
            let pg = pg.clone();
            let tls = tls.clone();
            Box::pin(async move {
                let (client, connection) = pg.connect(tls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::warn!(error = %e, "the inbox's database connection ended");
                    }
                });
                Ok(client)
            })
        });
        Ok(Inbox {
            config,
            topology,
            table,
            handler: Arc::new(handler),
            connect,
            breaker: None,
            stats: Arc::new(Stats::default()),
            on_committed: None,
        })
    }

    /// Pauses consumption while this breaker is open (the handler calls
    /// its dependency through it).
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Calls `hook` after each commit, before the ack (for metrics, or a
    /// test that cuts the link there).
    pub fn on_committed(mut self, hook: impl Fn(&Message) + Send + Sync + 'static) -> Self {
        self.on_committed = Some(Arc::new(hook));
        self
    }

    /// Its counts (shared: read them while it runs).
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Creates the inbox table if missing (sql/inbox.sql, under the
    /// configured name).
    pub async fn migrate(&self) -> Result<(), InboxError> {
        let client = (self.connect)()
            .await
            .map_err(|e| InboxError::Database(e.to_string()))?;
        store::migrate(&client, &self.table)
            .await
            .map_err(|e| InboxError::Database(e.to_string()))
    }

    /// Declares the queues and bindings (what each session does first):
    /// call it before the producers start, so that no message is published
    /// before its queue is bound.
    pub async fn declare(&self) -> Result<(), InboxError> {
        let connection =
            Connection::connect(&self.config.amqp_url, ConnectionProperties::default())
                .await
                .map_err(broker("connecting to the broker"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        let declared = self.topology.declare(&channel).await;
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            connection.close(200, "declared".into()),
        )
        .await;
        declared
    }

    /// Consumes until `stop` resolves, reconnecting after failures; `Err`
    /// only for unusable settings.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), InboxError> {
        let shared = Arc::new(self);
        let mut stop = std::pin::pin!(stop);
        let mut delay = shared.config.reconnect_initial;
        loop {
            let started = Instant::now();
            Stats::add(&shared.stats.sessions);
            let ended = tokio::select! {
                () = &mut stop => return Ok(()),
                ended = session(&shared) => ended,
            };
            let error = match ended {
                Err(e @ InboxError::Config(_)) => return Err(e),
                Err(e) => e,
                Ok(()) => InboxError::Broker("the session ended".into()),
            };
            if started.elapsed() > Duration::from_secs(30) {
                delay = shared.config.reconnect_initial;
            }
            let wait = delay.mul_f64(0.5 + fastrand::f64() / 2.0);
            tracing::warn!(consumer = %shared.config.consumer, error = %error, retry_in = ?wait, "inbox session ended; reconnecting");
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            delay = (delay * 2).min(shared.config.reconnect_max);
        }
    }
}

fn broker(what: &str) -> impl Fn(lapin::Error) -> InboxError + '_ {
    move |e| InboxError::Broker(format!("{what}: {e}"))
}

fn database(what: &str) -> impl Fn(tokio_postgres::Error) -> InboxError + '_ {
    move |e| InboxError::Database(format!("{what}: {e}"))
}

/// One connection to the broker and the workers on it, until one fails.
async fn session<H: Handler>(inbox: &Arc<Inbox<H>>) -> Result<(), InboxError> {
    let c = &inbox.config;
    let connection = Connection::connect(&c.amqp_url, ConnectionProperties::default())
        .await
        .map_err(broker("connecting to the broker"))?;
    let declaring = connection
        .create_channel()
        .await
        .map_err(broker("opening a channel"))?;
    inbox.topology.declare(&declaring).await?;
    let _ = declaring.close(200, "declared".into()).await;
    let mut workers = JoinSet::new();
    for n in 0..c.concurrency {
        let client = (inbox.connect)()
            .await
            .map_err(database("connecting to PostgreSQL"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        channel
            .basic_qos(c.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("turning on publisher confirms"))?;
        let tag = format!("{}-{n}-{:08x}", c.consumer, fastrand::u32(..));
        let consumer = channel
            .basic_consume(
                c.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("consuming the work queue"))?;
        workers.spawn(worker(Arc::clone(inbox), client, channel, consumer));
    }
    tracing::info!(consumer = %c.consumer, queue = %c.queue, workers = c.concurrency, "consuming");
    // A lost connection does not always wake a worker blocked on it (an
    // ack on a dead socket can wait forever): watch it too.
    let lost = async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !connection.status().connected() {
                return;
            }
        }
    };
    let first = tokio::select! {
        first = workers.join_next() => first,
        () = lost => Some(Ok(Err(InboxError::Broker("the broker connection was lost".into())))),
    };
    workers.abort_all();
    // Closing a connection that is already dead may never answer.
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(200, "session over".into()),
    )
    .await;
    match first {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(InboxError::Broker(format!("a worker stopped: {e}"))),
        None => Ok(()),
    }
}

async fn worker<H: Handler>(
    inbox: Arc<Inbox<H>>,
    mut client: Client,
    channel: Channel,
    mut consumer: lapin::Consumer,
) -> Result<(), InboxError> {
    loop {
        // An open breaker: take nothing until it lets a call through.
        if let Some(breaker) = &inbox.breaker {
            breaker.ready().await;
        }
        let delivery = match consumer.next().await {
            None => {
                return Err(InboxError::Broker(
                    "the broker cancelled the consumer".into(),
                ))
            }
            Some(Err(e)) => return Err(broker("receiving")(e)),
            Some(Ok(d)) => d,
        };
        process(&inbox, &mut client, &channel, &delivery).await?;
    }
}

/// Applies, skips, retries or parks one delivery, then acks it.
async fn process<H: Handler>(
    inbox: &Inbox<H>,
    client: &mut Client,
    channel: &Channel,
    delivery: &Delivery,
) -> Result<(), InboxError> {
    let c = &inbox.config;
    let message = match Message::from_delivery(delivery) {
        Ok(m) => m,
        Err(why) => {
            park(inbox, channel, delivery, &why, 0).await?;
            return ack(delivery).await;
        }
    };
    // Unavailable answers while the breaker was closed, for this delivery.
    let mut closed_refusals = 0u32;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(database("opening a transaction"))?;
        let first = match store::claim(&tx, &inbox.table, &c.consumer, &message.message_id).await {
            Ok(first) => first,
            // A value PostgreSQL refuses (class 22, data exception): this
            // message can never be claimed; anything else is the
            // database's or the setup's, and ends the session.
            Err(e) if e.code().is_some_and(|code| code.code().starts_with("22")) => {
                let _ = tx.rollback().await;
                let why = format!("its message_id cannot be stored in the inbox table: {e}");
                park(inbox, channel, delivery, &why, message.attempt).await?;
                return ack(delivery).await;
            }
            Err(e) => return Err(database("claiming the message id in the inbox table")(e)),
        };
        if !first {
            tx.commit()
                .await
                .map_err(database("committing a duplicate's count"))?;
            tracing::debug!(consumer = %c.consumer, message_id = %message.message_id, redelivered = message.redelivered, "duplicate skipped");
            ack(delivery).await?;
            Stats::add(&inbox.stats.duplicates);
            return Ok(());
        }
        let outcome = match inbox.handler.handle(&tx, &message).await {
            // The claim is read back first: a handler that caught an SQL
            // error and returned Ok left the transaction aborted, and
            // PostgreSQL answers COMMIT on it with a ROLLBACK that the
            // client does not report as an error. The read fails instead.
            Ok(()) => {
                match store::claimed(&tx, &inbox.table, &c.consumer, &message.message_id).await {
                    Err(e) if e.is_closed() => return Err(database("reading the claim")(e)),
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(HandlerError::Failed(format!(
                        "the handler returned Ok, but its transaction had failed (an SQL error \
                         it did not return?): {e}"
                    )))
                    }
                    Ok(false) => {
                        let _ = tx.rollback().await;
                        Err(HandlerError::Failed(
                            "the handler removed the message's claim from the inbox table".into(),
                        ))
                    }
                    Ok(true) => match tx.commit().await {
                        Ok(()) => Ok(()),
                        Err(e) if e.is_closed() => return Err(database("committing")(e)),
                        Err(e) => Err(HandlerError::Failed(format!("commit: {e}"))),
                    },
                }
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        let why = match outcome {
            Ok(()) => {
                Stats::add(&inbox.stats.applied);
                if let Some(hook) = &inbox.on_committed {
                    hook(&message);
                }
                return ack(delivery).await;
            }
            // The breaker refused the call or the call opened it: wait for
            // it. (Open with a probe due means the handler refused on its
            // own without taking the probe: that would spin; it counts as
            // a failure instead.)
            Err(HandlerError::Unavailable(why))
                if inbox.breaker.as_ref().is_some_and(|b| {
                    if b.is_open() {
                        !b.probe_due()
                    } else {
                        // Closed again (a probe succeeded meanwhile): try
                        // again, a few times at most.
                        closed_refusals += 1;
                        closed_refusals <= 3
                    }
                }) =>
            {
                // Not an attempt: wait for the breaker, try again in hand.
                tracing::debug!(consumer = %c.consumer, message_id = %message.message_id, reason = %why, "dependency unavailable; waiting for the circuit breaker");
                Stats::add(&inbox.stats.unavailable);
                if let Some(breaker) = &inbox.breaker {
                    breaker.ready().await;
                }
                continue;
            }
            Err(HandlerError::Poison(why)) => {
                tracing::warn!(consumer = %c.consumer, message_id = %message.message_id, reason = %why, "poison message parked");
                park(inbox, channel, delivery, &why, message.attempt).await?;
                return ack(delivery).await;
            }
            Err(HandlerError::Failed(why) | HandlerError::Unavailable(why)) => why,
        };
        match c.retry.after_failure(message.attempt) {
            Next::Retry(n) => {
                let delay = c.retry.delay(n, fastrand::f64());
                tracing::info!(consumer = %c.consumer, message_id = %message.message_id, attempt = message.attempt, retry_in = ?delay, reason = %why, "handler failed; retrying");
                retry(inbox, channel, delivery, &message, n, delay, &why).await?;
                Stats::add(&inbox.stats.retried);
            }
            Next::Park => {
                tracing::warn!(consumer = %c.consumer, message_id = %message.message_id, attempts = message.attempt, reason = %why, "attempts exhausted; message parked");
                park(inbox, channel, delivery, &why, message.attempt).await?;
            }
        }
        return ack(delivery).await;
    }
}

async fn ack(delivery: &Delivery) -> Result<(), InboxError> {
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(broker("acking"))
}

/// The delivery's properties to publish again: all but `expiration` (a
/// retry sets its own) and `user_id` (the broker checks it against the
/// publishing user).
fn copied(p: &BasicProperties, headers: FieldTable) -> BasicProperties {
    let mut out = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    out
}

/// The delivery's headers with the original destination kept and `extra`
/// set.
fn headers_with(delivery: &Delivery, extra: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    if !headers.inner().contains_key(ORIGINAL_EXCHANGE_HEADER) {
        headers.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            AMQPValue::LongString(delivery.exchange.as_str().into()),
        );
        headers.insert(
            ORIGINAL_ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(delivery.routing_key.as_str().into()),
        );
    }
    for (name, value) in extra {
        headers.insert(name.into(), value);
    }
    headers
}

/// Sends a failed message to retry `n`'s delay queue, confirmed.
async fn retry<H>(
    inbox: &Inbox<H>,
    channel: &Channel,
    delivery: &Delivery,
    message: &Message,
    n: u32,
    delay: Duration,
    why: &str,
) -> Result<(), InboxError> {
    let headers = headers_with(
        delivery,
        vec![
            (ATTEMPT_HEADER, AMQPValue::LongUInt(message.attempt)),
            (
                ERROR_HEADER,
                AMQPValue::LongString(bounded(why, 1000).into()),
            ),
        ],
    );
    let ttl = RetryPolicy::ttl_millis(delay).to_string();
    let properties = copied(&delivery.properties, headers).with_expiration(ttl.into());
    let queue = inbox.topology.retry_queue(n);
    publish(channel, &queue, &delivery.data, properties).await
}

/// Sends a message to the parking queue with why, confirmed.
async fn park<H>(
    inbox: &Inbox<H>,
    channel: &Channel,
    delivery: &Delivery,
    why: &str,
    attempts: u32,
) -> Result<(), InboxError> {
    let headers = headers_with(
        delivery,
        vec![
            (
                ERROR_HEADER,
                AMQPValue::LongString(bounded(why, 1000).into()),
            ),
            (ATTEMPTS_HEADER, AMQPValue::LongUInt(attempts)),
            (
                CONSUMER_HEADER,
                AMQPValue::LongString(inbox.config.consumer.as_str().into()),
            ),
        ],
    );
    let properties = copied(&delivery.properties, headers);
    publish(
        channel,
        &inbox.topology.parked_queue(),
        &delivery.data,
        properties,
    )
    .await?;
    Stats::add(&inbox.stats.parked);
    Ok(())
}

/// Publishes to a queue through the default exchange and waits for the
/// broker's confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), InboxError> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            properties,
        )
        .await
        .map_err(broker("publishing"))?
        .await
        .map_err(broker("publishing"))?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(InboxError::Broker(format!(
            "queue {queue} is missing ({} {})",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(InboxError::Broker(format!(
            "the broker refused the message for {queue}"
        ))),
        Confirmation::NotRequested => Err(InboxError::Broker(
            "the channel is not in confirm mode".into(),
        )),
    }
}
