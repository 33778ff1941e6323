//! TLS against a server with a certificate signed by a CA made in the test:
//! each sslmode checks what libpq's checks, SCRAM binds to the channel, and
//! the stream (and the control connection) run over TLS.

use std::path::PathBuf;
use std::time::Duration;

use e2e::PgCluster;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use walstream::{AuthMethod, Error, ReplicationClient};

use super::support::*;

const SECRET: &str = "tls-Pa55word";

/// A CA: its PEM certificate and an issuer to sign server certificates.
fn make_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A cluster serving TLS with a certificate for `localhost` only, signed by
/// the returned CA (written to a file in `dir`). Role `relay` may connect
/// over TLS only, with SCRAM; role `by_password` over TLS only, with a
/// cleartext password.
fn tls_cluster(dir: &std::path::Path) -> (PgCluster, PathBuf) {
    let (ca_pem, issuer) = make_ca("walstream test CA");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();

    let pg = PgCluster::builder()
        .hba(&[
            "local all all trust",
            "host all postgres 127.0.0.1/32 trust",
            "hostssl all relay 127.0.0.1/32 scram-sha-256",
            "hostssl all by_password 127.0.0.1/32 password",
        ])
        .start()
        .unwrap();
    pg.write_file("server.crt", &cert.pem()).unwrap();
    pg.write_file("server.key", &key.serialize_pem()).unwrap();
    pg.append_conf("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        .unwrap();
    pg.reload().unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while pg.psql("SHOW ssl").unwrap() != "on" {
        assert!(std::time::Instant::now() < deadline, "ssl did not turn on");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.psql(&format!(
        "CREATE ROLE relay LOGIN REPLICATION PASSWORD '{SECRET}'; \
         CREATE ROLE by_password LOGIN REPLICATION PASSWORD '{SECRET}';"
    ))
    .unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca_pem).unwrap();
    (pg, ca_file)
}

fn url(pg: &PgCluster, host: &str, params: &str) -> String {
    format!(
        "postgres://relay:{SECRET}@{host}:{}/postgres?{params}",
        pg.port()
    )
}

#[tokio::test]
async fn tls_modes_check_the_certificate_like_libpq_and_scram_binds_to_the_channel() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, ca) = tls_cluster(dir.path());
    let ca = ca.display().to_string();

    // verify-full with the right CA and the certificate's name: TLS, and
    // SCRAM-SHA-256-PLUS (channel_binding=require refuses anything else).
    let full = config(&url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}&channel_binding=require"),
    ));
    let client = ReplicationClient::connect(&full).await.unwrap();
    assert!(client.is_tls());
    assert_eq!(client.auth_method(), AuthMethod::ScramSha256Plus);
    let pid = client.backend_pid();
    let ssl = pg
        .psql(&format!("SELECT ssl FROM pg_stat_ssl WHERE pid = {pid}"))
        .unwrap();
    assert_eq!(ssl, "t", "the server sees an encrypted session");
    client.close().await;

    // verify-full refuses a host name the certificate does not carry.
    let wrong_host = config(&url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    let err = ReplicationClient::connect(&wrong_host).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // The control connection refuses it the same way, for good.
    let err = walstream::connect_control(&wrong_host).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");

    // ... and a certificate from another CA.
    let (other_ca, _) = make_ca("someone else's CA");
    let other_file = dir.path().join("other.crt");
    std::fs::write(&other_file, other_ca).unwrap();
    let wrong_ca = config(&url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", other_file.display()),
    ));
    let err = ReplicationClient::connect(&wrong_ca).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(!err.is_retryable(), "{err}");

    // verify-ca checks the chain, not the name.
    let ca_only = config(&url(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ));
    assert!(ReplicationClient::connect(&ca_only).await.unwrap().is_tls());

    // require encrypts without checking; channel binding can be turned off.
    let require = config(&url(
        &pg,
        "127.0.0.1",
        "sslmode=require&channel_binding=disable",
    ));
    let client = ReplicationClient::connect(&require).await.unwrap();
    assert!(client.is_tls());
    assert_eq!(client.auth_method(), AuthMethod::ScramSha256);

    // Without TLS, pg_hba.conf (hostssl only) refuses for good.
    let plain = config(&url(&pg, "127.0.0.1", "sslmode=disable"));
    let err = ReplicationClient::connect(&plain).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");

    // The whole path over verify-full: control connection (slot checks,
    // with channel binding too) and the stream.
    create_outbox(&pg);
    let slot = e2e::unique_ident("tls");
    client_with_slot(&full, &slot).await.close().await;
    insert_each(&pg, [1, 2]);
    let (mut stream, acks) = start(&full, &slot).await;
    let txns = read_txns(&mut stream, 2).await;
    assert_eq!(txns[1].ids, [2]);
    acks.ack(txns[1].end_lsn);
    stream.shutdown(PATIENCE).await.unwrap();
    assert_eq!(slot_row(&pg, &slot).await.0, Some(txns[1].end_lsn));
}

#[tokio::test]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let pg = PgCluster::start().unwrap();
    let require = config(&(pg.url() + "?sslmode=require"));
    let err = ReplicationClient::connect(&require).await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("does not accept TLS"), "{err}");

    let prefer = config(&(pg.url() + "?sslmode=prefer"));
    let client = ReplicationClient::connect(&prefer).await.unwrap();
    assert!(!client.is_tls());
}

#[tokio::test]
async fn a_cleartext_password_crosses_tls_without_asking_and_require_auth_still_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (pg, _ca) = tls_cluster(dir.path());
    let url = format!(
        "postgres://by_password:{SECRET}@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    );
    let mut client = ReplicationClient::connect(&config(&url)).await.unwrap();
    assert!(client.is_tls());
    assert_eq!(client.auth_method(), AuthMethod::Password);
    // The control connection too (pg_hba.conf takes it over TLS only).
    assert_eq!(client.slot_state("none").await.unwrap(), None);
    client.close().await;

    let scram_only = config(&(url + "&require_auth=scram-sha-256"));
    let err = ReplicationClient::connect(&scram_only).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("cleartext password"), "{err}");
    let err = walstream::connect_control(&scram_only).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
}
