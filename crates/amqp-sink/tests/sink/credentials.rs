//! Credentials and TLS: the password of the broker URL never shows in an
//! error or a log line (every level and target, but lapin's raw frame
//! traces, which `LOG_DIRECTIVES` keeps off), and `amqps://` connects over
//! TLS, verifying the broker's certificate.

use std::sync::atomic::Ordering;
use std::time::Duration;

use amqp_sink::{LinkError, Publisher, SinkError, SinkEvent};
use e2e::amqp::{amqp_addr, BrokerScope};
use e2e::tls::TlsFront;

use super::support::{capture_logs, config_for, message, publish_confirmed, rabbitmqctl, Reader};

/// A broker user for one test, deleted when dropped.
struct TestUser(String);

impl TestUser {
    fn create(name: &str, password: &str) -> TestUser {
        rabbitmqctl(&["add_user", name, password]).unwrap();
        let user = TestUser(name.to_string());
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]).unwrap();
        user
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.0]);
    }
}

/// The ways a password could be spelled in a log or an error.
fn spellings(password: &str) -> Vec<String> {
    let bytes: Vec<String> = password.bytes().map(|b| b.to_string()).collect();
    vec![
        password.to_string(),
        bytes.join(", "),
        bytes.join(","),
        password.bytes().map(|b| format!("\\x{b:02x}")).collect(),
    ]
}

#[tokio::test]
async fn the_password_never_appears_in_logs_or_errors() {
    let user = e2e::unique_name("sink-user");
    let password = format!("Pw{}NeverShown", fastrand::u64(..));
    let _user = TestUser::create(&user, &password);
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-secret").await.unwrap();
    let addr = amqp_addr();

    let logs = capture_logs(spellings(&password));
    // The right password: connect, publish, close, all of it logged at
    // every level.
    let url = format!("amqp://{user}:{password}@{addr}/%2f");
    let config = config_for(&url, &exchange);
    let (mut publisher, outcomes) = Publisher::connect(config.clone()).await.unwrap();
    let reader = Reader::spawn(outcomes);
    publish_confirmed(&mut publisher, &reader, message(&exchange, "k", 1)).await;
    publisher.close().await.unwrap();

    // A wrong password: the error names the user and the broker, not the
    // password.
    let wrong = format!("{password}Wrong");
    let bad = config_for(&format!("amqp://{user}:{wrong}@{addr}/%2f"), &exchange);
    let error = match Publisher::connect(bad).await {
        Err(error) => error,
        Ok(_) => panic!("connected with a wrong password"),
    };
    let capture = logs.report();
    drop(logs);

    assert!(
        matches!(&error, SinkError::Connect(e) if matches!(e[..], [LinkError::AccessRefused { .. }])),
        "{error:?}"
    );
    let shown = format!("{error} {error:?} {config:?}");
    assert!(shown.contains(&user), "{shown}");
    for secret in spellings(&password) {
        assert!(
            !shown.contains(&secret),
            "error shows the password: {shown}"
        );
    }
    assert!(
        capture.traces > 0,
        "the capture saw TRACE events ({} events)",
        capture.events
    );
    assert!(
        capture.leaks.is_empty(),
        "log lines show the password: {:?}",
        capture.leaks
    );
}

#[tokio::test]
async fn amqps_connects_over_tls_and_verifies_the_broker_certificate() {
    let scope = BrokerScope::connect().await.unwrap();
    let (exchange, _queue) = scope.topic_with_queue("sink-tls").await.unwrap();
    let front = TlsFront::start().await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", front.port);

    // A certificate nobody trusts is refused.
    let untrusted = config_for(&url, &exchange);
    match Publisher::connect(untrusted).await {
        Err(SinkError::Connect(errors)) => assert!(
            matches!(errors[..], [LinkError::Unreachable { .. }]),
            "{errors:?}"
        ),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("accepted an untrusted certificate"),
    }
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 0);

    // Trusting its CA: messages go through TLS.
    let mut config = config_for(&url, &exchange);
    config.tls_ca_pem = Some(front.ca_pem.clone());
    let (mut publisher, outcomes) = Publisher::connect(config).await.unwrap();
    let reader = Reader::spawn(outcomes);
    for i in 1..=20 {
        publisher.publish(message(&exchange, "k", i)).await.unwrap();
    }
    reader
        .wait("20 confirms over TLS", Duration::from_secs(10), |l| {
            l.confirmed().len() == 20
        })
        .await;
    assert!(!reader
        .ledger()
        .saw(|e| matches!(e, SinkEvent::LinkLost { .. })));
    assert_eq!(front.handshakes.load(Ordering::SeqCst), 1);
    publisher.close().await.unwrap();
}
