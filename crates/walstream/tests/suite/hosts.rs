//! Several servers in one connection string, against a real primary and a
//! physical standby made by the test kit: a dead server is passed over,
//! `target_session_attrs` picks the primary or the standby whatever the
//! order, and with none suitable the error says why and is retryable (a
//! standby being promoted becomes the primary).

use walstream::{Error, ReplicationClient};

use super::support::*;
use e2e::PgCluster;

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether the server a replication connection reached is in recovery.
async fn in_recovery(client: &mut ReplicationClient) -> bool {
    let rows = client
        .simple_query("SELECT pg_is_in_recovery()::text")
        .await
        .unwrap();
    rows[0][0].as_deref() == Some("true")
}

#[tokio::test]
async fn a_dead_first_server_is_passed_over() {
    let pg = PgCluster::start().unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        dead_port(),
        pg.port()
    );
    let config = config(&url);
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert!(client.identify_system().await.is_ok());
    // Its control connection goes to the same server.
    assert_eq!(client.slot_state("nothing_here").await.unwrap(), None);
    client.close().await;
    let control = walstream::connect_control(&config).await.unwrap();
    control.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn target_session_attrs_picks_the_primary_or_the_standby_in_any_order() {
    let mut primary = PgCluster::start().unwrap();
    let standby = primary.standby().unwrap();
    // The standby first: `any` takes it, read-write and primary pass it over.
    let both = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres",
        standby.port(),
        primary.port()
    );
    for (attrs, want_standby) in [
        ("any", true),
        ("read-write", false),
        ("primary", false),
        ("standby", true),
        ("prefer-standby", true),
        ("read-only", true),
    ] {
        let config = config_of(&format!("{both}?target_session_attrs={attrs}"));
        let mut client = ReplicationClient::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{attrs}: {e}"));
        assert_eq!(in_recovery(&mut client).await, want_standby, "{attrs}");
        client.close().await;
        let control = walstream::connect_control(&config).await.unwrap();
        let row = control
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, bool>(0), want_standby, "control, {attrs}");
    }
    // The primary first: prefer-standby still finds the standby; standby
    // alone with prefer-standby falls back to any server.
    let config = config_of(&format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=prefer-standby",
        primary.port(),
        standby.port()
    ));
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert!(in_recovery(&mut client).await);
    client.close().await;
    let config = config_of(&format!(
        "postgres://postgres@127.0.0.1:{}/postgres?target_session_attrs=prefer-standby",
        primary.port()
    ));
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert!(!in_recovery(&mut client).await);
    client.close().await;

    // Only the standby and a dead server, asking for the primary (a
    // failover half done): retryable, naming each server and why.
    let dead = dead_port();
    let config = config_of(&format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{}/postgres?target_session_attrs=primary",
        standby.port()
    ));
    let err = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(matches!(err, Error::NoSuitableServer { .. }), "{err}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{dead}")), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{} is a standby", standby.port())),
        "{text}"
    );
    // Promoted, the standby is what the same settings find.
    standby.promote().unwrap();
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert!(!in_recovery(&mut client).await);
    client.close().await;
    drop(primary.stop());
}

fn config_of(url: &str) -> walstream::ReplicationConfig {
    config(url)
}
