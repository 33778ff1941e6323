//! Several outbox tables in one relay: one slot, one publication, a
//! mapping per `[[table]]` entry. Rows of both tables written in the same
//! transactions, interleaved, each reach their own exchange in commit
//! order with their own mapping; a table added to the settings is added to
//! the existing publication by the relay that holds the slot (never while
//! a relay with the old settings streams it); check, status and the
//! metrics name every table.

use std::time::Duration;

use crate::operations::{http_get, metrics_addr};

use super::fixture::{header, seq_of, Fixture};

const BILLING_SQL: &str = "
CREATE SCHEMA billing;
CREATE TABLE billing.outbox (
    event_id   bigserial PRIMARY KEY,
    kind       text NOT NULL,
    tenant     text NOT NULL,
    invoice    int NOT NULL,
    body       text NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tables_interleaved_in_one_transaction_reach_their_own_exchanges_in_order() {
    let f = Fixture::new().await;
    f.pg.psql(BILLING_SQL).unwrap();
    let (billing_exchange, billing_queue) = f.scope.topic_with_queue("billing").await.unwrap();

    // First the relay knows one table: setup makes the publication for it.
    let (ok, out) = f.run_to_end(&["setup"], &[]);
    assert!(ok, "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        format!(
            r#"
# The orders' table keeps the top-level mapping (the fixture's exchange).
[[table]]
name = "public.outbox"

[[table]]
name = "billing.outbox"
exchange = "{billing_exchange}"
routing_key = "invoice.{{kind}}"
id_column = "event_id"
payload_column = "body"
type_column = "kind"
timestamp_column = "created"
content_type = "text/plain"
header_columns = ["tenant", "invoice"]
"#
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let with_file = [("RELAY_CONFIG", config)];

    // check judges both tables and says the publication lacks one, which
    // run adds (the role owns everything here).
    let (ok, out) = f.run_to_end(&["check"], &with_file);
    assert!(ok, "{out}");
    assert!(out.contains("public.outbox exists"), "{out}");
    assert!(out.contains("billing.outbox exists"), "{out}");
    assert!(
        out.contains("does not cover billing.outbox"),
        "check names the table missing from the publication: {out}"
    );

    // While a relay with the old settings streams the slot, setup does not
    // add the table: that relay would skip its rows and ack past them.
    let mut old = f.start_relay(&[]);
    let (ok, out) = f.run_to_end(&["setup"], &with_file);
    assert!(!ok, "{out}");
    assert!(out.contains("streamed by a running process"), "{out}");
    old.kill().unwrap();

    let mut orders = f.consumer().await;
    let mut billing = f.scope.consume(&billing_queue).await.unwrap();
    let relay = f.start_relay(&with_file);
    let addr = metrics_addr(&relay);
    relay
        .wait_for_line("added tables to the publication", Duration::from_secs(5))
        .expect("run adds the table to the publication");

    // Two transactions, each interleaving both tables row by row.
    const PER_TABLE: usize = 60;
    for (first, agg) in [(0, "o1"), (PER_TABLE / 2, "o1")] {
        let mut sql = String::from("BEGIN;\n");
        for i in first..first + PER_TABLE / 2 {
            sql.push_str(&format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
                 VALUES ('order', '{agg}', 'created', '{{\"seq\": {i}}}');
                 INSERT INTO billing.outbox (kind, tenant, invoice, body)
                 VALUES ('{}', 'acme', {i}, 'invoice {i}');\n",
                if i % 2 == 0 { "issued" } else { "paid" }
            ));
        }
        sql.push_str("COMMIT;");
        f.pg.psql(&sql).unwrap();
    }

    let got_orders = orders
        .collect(PER_TABLE, Duration::from_secs(60))
        .await
        .unwrap();
    let got_billing = billing
        .collect(PER_TABLE, Duration::from_secs(60))
        .await
        .unwrap();

    // Each table's events, and only those, on its exchange, in order.
    let seqs: Vec<u64> = got_orders.iter().map(|d| seq_of(&d.data)).collect();
    let expected: Vec<u64> = (0..u64::try_from(PER_TABLE).unwrap()).collect();
    assert_eq!(seqs, expected);
    for d in &got_orders {
        assert_eq!(d.exchange.as_str(), f.exchange);
        assert_eq!(d.routing_key.as_str(), "order.created");
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
    }
    let invoices: Vec<String> = got_billing
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..PER_TABLE).map(|i| format!("invoice {i}")).collect();
    assert_eq!(invoices, expected, "billing events in commit order");
    for (i, d) in got_billing.iter().enumerate() {
        let kind = if i % 2 == 0 { "issued" } else { "paid" };
        assert_eq!(d.exchange.as_str(), billing_exchange);
        assert_eq!(d.routing_key.as_str(), format!("invoice.{kind}"));
        assert_eq!(d.properties.kind().as_ref().map(|k| k.as_str()), Some(kind));
        assert_eq!(
            d.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("text/plain")
        );
        assert!(d.properties.message_id().is_some());
        assert!(d.properties.timestamp().is_some());
        assert_eq!(header(d, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            header(d, "invoice").as_deref(),
            Some(i.to_string().as_str())
        );
        assert_eq!(header(d, "body"), None);
    }
    // The ids are the billing table's own, in order.
    let ids: Vec<u64> = got_billing
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // The metrics carry the table.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(&addr, "/metrics").await;
        let done = [
            format!(
                "outbox_relay_table_events_confirmed_total{{table=\"public.outbox\"}} {PER_TABLE}"
            ),
            format!(
                "outbox_relay_table_events_confirmed_total{{table=\"billing.outbox\"}} {PER_TABLE}"
            ),
        ]
        .iter()
        .all(|line| text.contains(line.as_str()));
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "per-table confirmed counts: {}",
            text.lines()
                .filter(|l| l.contains("table_events"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // status lists both tables as published; check now passes clean.
    let (ok, out) = f.run_to_end(&["status"], &with_file);
    assert!(ok, "{out}");
    assert!(
        out.contains("table                public.outbox published"),
        "{out}"
    );
    assert!(
        out.contains("table                billing.outbox published"),
        "{out}"
    );
    let mut relay = relay;
    relay.kill().unwrap();
    let (ok, out) = f.run_to_end(&["check"], &with_file);
    assert!(ok, "{out}");
    assert!(
        out.contains("publishes inserts of public.outbox, billing.outbox"),
        "{out}"
    );
}
