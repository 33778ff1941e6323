//! `outbox-relay config --from-debezium`: a Debezium Server properties file
//! with the outbox event router and the RabbitMQ sink, written from the
//! option names Debezium documents, becomes relay settings under which the
//! relay publishes a Debezium-shaped outbox row where Debezium would have:
//! the same exchange, the topic as routing key, the id as message_id.

use std::time::Duration;

use e2e::{PgCluster, RelayProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debezium_server_config_converts_to_settings_that_publish_where_debezium_did() {
    let pg = PgCluster::start().expect("a cluster");
    // Debezium's documented outbox table.
    pg.psql(
        "CREATE TABLE public.outbox (
             id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
             aggregatetype varchar(255) NOT NULL,
             aggregateid varchar(255) NOT NULL,
             type varchar(255) NOT NULL,
             payload jsonb,
             created_at timestamptz NOT NULL DEFAULT now())",
    )
    .unwrap();
    let scope = e2e::amqp::BrokerScope::connect().await.unwrap();
    let exchange = e2e::unique_name("dbz-events");
    scope
        .declare_exchange(&exchange, lapin::ExchangeKind::Topic)
        .await
        .unwrap();
    let queue = e2e::unique_name("dbz-orders");
    scope
        .declare_queue_with(&queue, true, lapin::types::FieldTable::default())
        .await
        .unwrap();
    scope
        .bind(&queue, &exchange, "outbox.event.order")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let properties = dir.path().join("application.properties");
    std::fs::write(
        &properties,
        format!(
            "debezium.sink.type=rabbitmq\n\
             debezium.sink.rabbitmq.connection.host=127.0.0.1\n\
             debezium.sink.rabbitmq.connection.port=5672\n\
             debezium.sink.rabbitmq.connection.username=guest\n\
             debezium.sink.rabbitmq.connection.password=guest\n\
             debezium.sink.rabbitmq.exchange={exchange}\n\
             debezium.sink.rabbitmq.routingKeyFromTopicName=true\n\
             debezium.source.connector.class=io.debezium.connector.postgresql.PostgresConnector\n\
             debezium.source.offset.storage.file.filename=data/offsets.dat\n\
             debezium.source.offset.flush.interval.ms=0\n\
             debezium.source.database.hostname=127.0.0.1\n\
             debezium.source.database.port={port}\n\
             debezium.source.database.user=postgres\n\
             debezium.source.database.dbname=postgres\n\
             debezium.source.topic.prefix=shop\n\
             debezium.source.plugin.name=pgoutput\n\
             debezium.source.slot.name=dbz_outbox\n\
             debezium.source.publication.name=dbz_outbox_pub\n\
             debezium.source.table.include.list=public.outbox\n\
             debezium.transforms=outbox\n\
             debezium.transforms.outbox.type=io.debezium.transforms.outbox.EventRouter\n\
             debezium.transforms.outbox.table.field.event.timestamp=created_at\n\
             debezium.transforms.outbox.route.by.field=aggregatetype\n\
             debezium.transforms.outbox.route.topic.replacement=outbox.event.${{routedByValue}}\n",
            port = pg.port()
        ),
    )
    .unwrap();
    let path = properties.display().to_string();
    let (ok, toml) = RelayProcess::run_to_end(&["config", "--from-debezium", &path], &[]);
    assert!(ok, "{toml}");
    assert!(!toml.contains("password=guest"), "{toml}");
    assert!(
        toml.contains("debezium.sink.rabbitmq.connection.password")
            || toml.contains("RELAY_AMQP_URL"),
        "{toml}"
    );
    let settings = dir.path().join("relay.toml");
    std::fs::write(&settings, &toml).unwrap();
    let settings = settings.display().to_string();

    let amqp_url = e2e::amqp::amqp_url();
    let dead_letter = e2e::unique_name("dbz-dlx");
    scope.track_exchange(&dead_letter);
    scope.track_queue(&dead_letter);
    let env = [
        // The password, as the converted file says to give it.
        ("RELAY_AMQP_URL", amqp_url.as_str()),
        ("RELAY_METRICS_ADDR", "127.0.0.1:0"),
        ("RELAY_DEAD_LETTER_EXCHANGE", dead_letter.as_str()),
        ("RELAY_DEAD_LETTER_QUEUE", dead_letter.as_str()),
    ];
    let (ok, check) = RelayProcess::run_to_end(&["--config", &settings, "check"], &env);
    assert!(ok, "check under the converted settings:\n{toml}\n{check}");
    let mut relay = RelayProcess::spawn(["--config", settings.as_str(), "run"], &env).unwrap();
    relay
        .wait_for_line("streaming from the slot", Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{}", relay.output()));
    let id = pg
        .psql(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
             VALUES ('order', '42', 'OrderCreated', '{\"total\": 1999}') RETURNING id",
        )
        .unwrap();
    let mut consumer = scope.consume(&queue).await.unwrap();
    let got = consumer
        .collect(1, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.output()));
    let d = &got[0];
    assert_eq!(d.routing_key.as_str(), "outbox.event.order");
    assert_eq!(d.exchange.as_str(), exchange);
    assert_eq!(
        d.properties.message_id().as_ref().map(|m| m.as_str()),
        id.lines().next().map(str::trim)
    );
    assert_eq!(
        d.properties.kind().as_ref().map(|k| k.as_str()),
        Some("OrderCreated")
    );
    assert!(d.properties.timestamp().is_some());
    assert_eq!(&d.data[..], br#"{"total": 1999}"#);
    relay.kill().unwrap();
}
