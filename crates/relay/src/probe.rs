//! What the relay reads before judging its prerequisites (see
//! `crate::prereq`): PostgreSQL's catalog (through `crate::catalog`) and
//! the broker (through amqp-sink's [`Inspector`]). Only reading: nothing
//! is created or changed here.

use amqp_sink::{ExchangeType, Found, Inspector, SinkConfig};

use crate::catalog::{self, CatalogError, PgFacts};
use crate::config::Config;

/// What the broker says, as `crate::prereq::judge_broker` needs it.
#[derive(Debug, Clone)]
pub struct BrokerFacts {
    /// The broker reached (redacted), or why each one could not be.
    pub reached: Result<String, Vec<String>>,
    /// Each table's exchange that is constant (a per-row template is
    /// looked at row by row), once per name.
    pub exchanges: Vec<(String, Result<Found, String>)>,
    /// The dead-letter exchange.
    pub dead_letter_exchange: Result<Found, String>,
    /// The dead-letter queue.
    pub dead_letter_queue: Result<Found, String>,
}

/// Reads every fact of PostgreSQL's prerequisites on `client`.
pub async fn postgres(
    client: &tokio_postgres::Client,
    config: &Config,
) -> Result<PgFacts, CatalogError> {
    let tables: Vec<_> = config.mapping.table_names().cloned().collect();
    catalog::gather(client, &tables, &config.publication, &config.slot).await
}

/// Looks at the broker: the first URL that answers, then the exchange, the
/// dead-letter exchange and queue as the sink would declare them (only
/// compared when the relay declares them).
pub async fn broker(config: &Config, sink: &SinkConfig) -> BrokerFacts {
    let mut errors = Vec::new();
    let mut inspector = None;
    for url in &sink.brokers {
        match Inspector::connect(sink, url).await {
            Ok(i) => {
                inspector = Some(i);
                break;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let Some(inspector) = inspector else {
        let gone = || Err("the broker is unreachable".to_string());
        return BrokerFacts {
            reached: Err(errors),
            exchanges: config
                .constant_exchanges()
                .into_iter()
                .map(|name| (name, gone()))
                .collect(),
            dead_letter_exchange: gone(),
            dead_letter_queue: gone(),
        };
    };
    let compare = config.declare_exchange;
    let text = |e: amqp_sink::LinkError| e.to_string();
    let mut exchanges = Vec::new();
    for name in config.constant_exchanges() {
        let found = if name.is_empty() {
            Ok(Found::Matches)
        } else {
            inspector
                .exchange(&name, ExchangeType::Topic, compare)
                .await
                .map_err(text)
        };
        exchanges.push((name, found));
    }
    let dead_letter_exchange = inspector
        .exchange(
            &config.mapping.dead_letter_exchange,
            ExchangeType::Fanout,
            compare,
        )
        .await
        .map_err(text);
    let dead_letter_queue = inspector
        .queue(
            &config.dead_letter_queue,
            compare,
            config.dead_letter_queue_type,
        )
        .await
        .map_err(text);
    let reached = Ok(inspector.broker().to_string());
    inspector.close().await;
    BrokerFacts {
        reached,
        exchanges,
        dead_letter_exchange,
        dead_letter_queue,
    }
}
