//! A broker memory alarm blocks publishing: the sink pauses (no error, no
//! failed message) and goes on when the alarm clears.
//!
//! This raises a broker-wide alarm (`rabbitmqctl
//! set_vm_memory_high_watermark 0`), so it is a test binary of its own with
//! a single, short test (cargo runs test binaries one at a time), and a
//! guard restores the watermark it found even if the test fails. While it
//! runs, other publishers on the machine's broker are blocked too.

#[path = "sink/support.rs"]
mod support;

use std::time::Duration;

use amqp_sink::{LinkState, Publisher, SinkEvent};
use e2e::amqp::BrokerScope;

use support::{config, message, rabbitmqctl, Reader};

/// Restores the broker's memory watermark when dropped.
struct Watermark {
    previous: Vec<String>,
}

impl Watermark {
    /// Raises the memory alarm (watermark 0), remembering the watermark.
    fn raise_alarm() -> Watermark {
        let current = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .expect("reading the memory watermark");
        // `0.4`, or `{absolute,1073741824}`.
        let previous = match current
            .strip_prefix("{absolute,")
            .and_then(|v| v.strip_suffix('}'))
        {
            Some(bytes) => vec!["absolute".to_string(), bytes.to_string()],
            None => {
                current
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("unexpected watermark {current}"));
                vec![current]
            }
        };
        let guard = Watermark { previous };
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]).expect("raising the alarm");
        guard
    }
}

impl Drop for Watermark {
    fn drop(&mut self) {
        let mut args = vec!["set_vm_memory_high_watermark"];
        args.extend(self.previous.iter().map(String::as_str));
        if let Err(e) = rabbitmqctl(&args) {
            eprintln!("RESTORE THE BROKER BY HAND: rabbitmqctl {args:?}: {e}");
        }
    }
}

#[tokio::test]
async fn a_memory_alarm_pauses_publishing_and_resumes_without_errors() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-alarm").await.unwrap();
    let (mut publisher, outcomes) = Publisher::connect(config(&exchange)).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=10 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("10 confirms", Duration::from_secs(10), |l| l.reported == 10)
        .await;

    let alarm = Watermark::raise_alarm();
    // The broker blocks a connection when it next publishes.
    for i in 11..=30 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("the block", Duration::from_secs(15), |l| {
            l.saw(|e| matches!(e, SinkEvent::Blocked { .. }))
        })
        .await;
    assert!(matches!(
        &*publisher.link_state().borrow(),
        LinkState::Blocked { .. }
    ));
    // Paused, not failed: a moment later nothing more was reported.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = reader.ledger().reported;
    assert!(during < 30, "messages were confirmed during the alarm");
    assert!(reader.ledger().failed().is_empty());

    drop(alarm);
    reader
        .wait(
            "every confirm after the alarm",
            Duration::from_secs(15),
            |l| l.reported == 30,
        )
        .await;
    {
        let ledger = reader.ledger();
        assert!(ledger.failed().is_empty(), "{:?}", ledger.failed());
        assert!(ledger.saw(|e| matches!(e, SinkEvent::Unblocked)));
        assert!(!ledger.saw(|e| matches!(e, SinkEvent::LinkLost { .. })));
    }
    publisher.close().await.unwrap();
}
