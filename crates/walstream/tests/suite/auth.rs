//! Every authentication method against a server configured for it in
//! pg_hba.conf: trust, password, md5, scram-sha-256; require_auth refuses
//! the methods it does not allow, and a cleartext password crosses plain
//! TCP only with require_auth=password, on both connections; a wrong
//! password is a non-retryable error that never shows the password;
//! ~/.pgpass and Unix sockets work like libpq's.

use e2e::PgCluster;
use walstream::{AuthMethod, Error, ReplicationClient, ReplicationConfig};

use super::support::*;

const SECRET: &str = "s3cret-Pa55";

/// A cluster where role `relay` (REPLICATION, password [`SECRET`] stored
/// with `encryption`) must authenticate with `method` over TCP.
fn cluster_for(method: &str, encryption: &str) -> PgCluster {
    cluster_for_on(None, method, encryption)
}

/// [`cluster_for`] on a chosen PostgreSQL major version.
fn cluster_for_on(version: Option<u32>, method: &str, encryption: &str) -> PgCluster {
    let relay_line = format!("host all relay 127.0.0.1/32 {method}");
    let pg = PgCluster::builder()
        .maybe_version(version)
        .hba(&[
            "local all all trust",
            "host all postgres 127.0.0.1/32 trust",
            &relay_line,
        ])
        .start()
        .unwrap();
    pg.psql(&format!(
        "SET password_encryption = '{encryption}'; \
         CREATE ROLE relay LOGIN REPLICATION PASSWORD '{SECRET}';"
    ))
    .unwrap();
    pg
}

async fn connects_with(pg: &PgCluster, expected: AuthMethod) {
    connects_as(pg, "relay", "", expected).await;
}

/// Connects as `role` with `params` added to the URL: the replication
/// connection authenticates with `expected`, and so does the control one.
async fn connects_as(pg: &PgCluster, role: &str, params: &str, expected: AuthMethod) {
    let url = pg.url_for(role, Some(SECRET), "postgres") + "?" + params;
    let config = config(&url);
    let mut client = ReplicationClient::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("connect as relay: {e}"));
    assert_eq!(client.auth_method(), expected);
    let system = client.identify_system().await.unwrap();
    assert_eq!(system.dbname(), Some("postgres"));
    assert!(!system.system_id().is_empty());
    assert!(system.xlogpos() > walstream::Lsn::ZERO);
    // The control connection authenticates the same way.
    assert_eq!(client.slot_state("nothing_here").await.unwrap(), None);
    client.close().await;
}

#[tokio::test]
async fn trust_authentication_connects() {
    trust_authentication_connects_on(None).await;
}

/// The body of [`trust_authentication_connects`], on a chosen PostgreSQL major version.
pub(crate) async fn trust_authentication_connects_on(version: Option<u32>) {
    let pg = cluster_for_on(version, "trust", "scram-sha-256");
    connects_with(&pg, AuthMethod::Trust).await;
}

/// A cluster with one role per pg_hba.conf method over TCP: `by_trust`,
/// `by_password`, `by_md5`, `by_scram` (REPLICATION, password [`SECRET`]).
fn cluster_of_methods() -> PgCluster {
    cluster_of_methods_on(None)
}

/// [`cluster_of_methods`] on a chosen PostgreSQL major version.
fn cluster_of_methods_on(version: Option<u32>) -> PgCluster {
    let methods = ["trust", "password", "md5", "scram-sha-256"];
    let role = |method: &str| format!("by_{}", method.trim_end_matches("-sha-256"));
    let mut hba = vec![
        "local all all trust".to_string(),
        "host all postgres 127.0.0.1/32 trust".to_string(),
    ];
    hba.extend(
        methods
            .iter()
            .map(|m| format!("host all {} 127.0.0.1/32 {m}", role(m))),
    );
    let pg = PgCluster::builder()
        .maybe_version(version)
        .hba(&hba.iter().map(String::as_str).collect::<Vec<_>>())
        .start()
        .unwrap();
    for method in methods {
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        pg.psql(&format!(
            "SET password_encryption = '{encryption}'; \
             CREATE ROLE {} LOGIN REPLICATION PASSWORD '{SECRET}';",
            role(method)
        ))
        .unwrap();
    }
    pg
}

/// Both connections refuse to authenticate as `role` with `params`, for
/// good, saying `why`.
async fn refused_as(pg: &PgCluster, role: &str, params: &str, why: &str) {
    let url = pg.url_for(role, Some(SECRET), "postgres") + "?" + params;
    let config = config(&url);
    let replication = ReplicationClient::connect(&config).await.err();
    let control = walstream::connect_control(&config).await.err();
    for err in [replication, control] {
        let err = err.unwrap_or_else(|| panic!("{role} with {params:?} was let in"));
        assert!(matches!(err, Error::Auth { .. }), "{err}");
        assert!(!err.is_retryable(), "{err}");
        assert!(err.to_string().contains(why), "{role}, {params}: {err}");
    }
}

#[tokio::test]
async fn a_cleartext_password_crosses_plain_tcp_only_with_require_auth_password() {
    let pg = cluster_of_methods();
    refused_as(&pg, "by_password", "", "without TLS").await;
    refused_as(
        &pg,
        "by_password",
        "sslmode=prefer",
        "require_auth=password",
    )
    .await;
    refused_as(&pg, "by_password", "require_auth=!md5", "without TLS").await;
    connects_as(
        &pg,
        "by_password",
        "require_auth=password",
        AuthMethod::Password,
    )
    .await;
    let either = "require_auth=password,scram-sha-256";
    connects_as(&pg, "by_password", either, AuthMethod::Password).await;
    connects_as(&pg, "by_scram", either, AuthMethod::ScramSha256).await;
}

#[tokio::test]
async fn require_auth_scram_sha_256_refuses_md5_password_and_trust_servers() {
    let pg = cluster_of_methods();
    let scram = "require_auth=scram-sha-256";
    let refusal = |method: &str| format!("asked for {method}, which {scram} does not allow");
    refused_as(
        &pg,
        "by_md5",
        scram,
        &refusal("md5 password authentication"),
    )
    .await;
    refused_as(
        &pg,
        "by_password",
        scram,
        &refusal("cleartext password authentication"),
    )
    .await;
    refused_as(&pg, "by_trust", scram, "asked for no authentication at all").await;
    connects_as(&pg, "by_scram", scram, AuthMethod::ScramSha256).await;
}

#[tokio::test]
async fn negation_lists_refuse_the_methods_they_name_and_allow_the_rest() {
    let pg = cluster_of_methods();
    let weak = "require_auth=!md5,!password";
    refused_as(&pg, "by_md5", weak, "remove !md5 from require_auth").await;
    refused_as(
        &pg,
        "by_password",
        weak,
        "remove !password from require_auth",
    )
    .await;
    connects_as(&pg, "by_scram", weak, AuthMethod::ScramSha256).await;
    connects_as(&pg, "by_trust", weak, AuthMethod::Trust).await;
    refused_as(&pg, "by_trust", "require_auth=!none", "remove !none").await;
    connects_as(&pg, "by_md5", "require_auth=!none", AuthMethod::Md5).await;
}

#[tokio::test]
async fn md5_authentication_connects() {
    md5_authentication_connects_on(None).await;
}

/// The body of [`md5_authentication_connects`], on a chosen PostgreSQL major version.
pub(crate) async fn md5_authentication_connects_on(version: Option<u32>) {
    let pg = cluster_for_on(version, "md5", "md5");
    connects_with(&pg, AuthMethod::Md5).await;
}

#[tokio::test]
async fn scram_sha_256_authentication_connects_and_streams() {
    scram_sha_256_authentication_connects_and_streams_on(None).await;
}

/// The body of [`scram_sha_256_authentication_connects_and_streams`], on a chosen PostgreSQL major version.
pub(crate) async fn scram_sha_256_authentication_connects_and_streams_on(version: Option<u32>) {
    let pg = cluster_for_on(version, "scram-sha-256", "scram-sha-256");
    connects_with(&pg, AuthMethod::ScramSha256).await;
    // Without TLS there is nothing to bind to: channel_binding=require
    // refuses rather than silently authenticating unbound.
    let url = pg.url_for("relay", Some(SECRET), "postgres") + "?channel_binding=require";
    let err = ReplicationClient::connect(&config(&url)).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("not TLS"), "{err}");

    create_outbox(&pg);
    pg.psql("GRANT SELECT ON outbox TO relay").unwrap();
    let config = config(&pg.url_for("relay", Some(SECRET), "postgres"));
    let slot = e2e::unique_ident("scram");
    client_with_slot(&config, &slot).await.close().await;
    insert_each(&pg, [7]);
    let (mut stream, _acks) = start(&config, &slot).await;
    assert_eq!(read_txns(&mut stream, 1).await[0].ids, [7]);
}

#[tokio::test]
async fn a_wrong_password_is_not_retryable_and_never_shown() {
    a_wrong_password_is_not_retryable_and_never_shown_on(None).await;
}

/// The body of [`a_wrong_password_is_not_retryable_and_never_shown`], on a chosen PostgreSQL major version.
pub(crate) async fn a_wrong_password_is_not_retryable_and_never_shown_on(version: Option<u32>) {
    let pg = cluster_for_on(version, "scram-sha-256", "scram-sha-256");
    let wrong = "Wr0ng-Secret-xyz";
    let config = config(&pg.url_for("relay", Some(wrong), "postgres"));
    let err = ReplicationClient::connect(&config).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    let shown = format!("{err} {err:?} {config} {config:?}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    assert!(!shown.contains(wrong), "the password leaked: {shown}");

    // No password at all is the client's to report.
    let none = super::support::config(&pg.url_for("relay", None, "postgres"));
    let err = ReplicationClient::connect(&none).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("PGPASSWORD or ~/.pgpass"), "{err}");

    // An unknown role is refused for good too.
    let pg_hba_refuses = super::support::config(&pg.url_for("nobody", Some("x"), "postgres"));
    let err = ReplicationClient::connect(&pg_hba_refuses)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
}

#[tokio::test]
async fn the_password_file_supplies_a_missing_password() {
    use std::os::unix::fs::PermissionsExt;
    let pg = cluster_for("md5", "md5");
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!("127.0.0.1:{}:postgres:relay:{SECRET}\n", pg.port()),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = ReplicationConfig::parse_with_env(
        &format!(
            "host=127.0.0.1 port={} user=relay dbname=postgres passfile={}",
            pg.port(),
            passfile.display()
        ),
        |_| None,
    )
    .unwrap();
    assert!(!config.has_password());
    let client = ReplicationClient::connect(&config).await.unwrap();
    assert_eq!(client.auth_method(), AuthMethod::Md5);
}

#[tokio::test]
async fn unix_socket_connections_work() {
    unix_socket_connections_work_on(None).await;
}

/// The body of [`unix_socket_connections_work`], on a chosen PostgreSQL major version.
pub(crate) async fn unix_socket_connections_work_on(version: Option<u32>) {
    let pg = PgCluster::builder().maybe_version(version).start().unwrap();
    let socket_dir = pg.data_dir().parent().unwrap().join("sock");
    let config = ReplicationConfig::parse_with_env(
        &format!(
            "host={} port={} user=postgres dbname=postgres",
            socket_dir.display(),
            pg.port()
        ),
        |_| None,
    )
    .unwrap();
    let mut client = ReplicationClient::connect(&config).await.unwrap();
    assert!(!client.is_tls());
    assert!(client.identify_system().await.is_ok());
    assert_eq!(client.slot_state("none").await.unwrap(), None);
}
