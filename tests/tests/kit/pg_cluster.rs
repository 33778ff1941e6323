//! `PgCluster` really starts a logical-replication-ready server, keeps its
//! data across restarts and crashes, and leaves nothing behind.

use e2e::PgCluster;

#[tokio::test]
async fn cluster_starts_with_logical_wal_and_room_for_slots() {
    let pg = PgCluster::start().expect("start cluster");
    let client = pg.client().await.expect("connect");
    let show = |name: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .expect(name);
            row.get::<_, String>(0)
        }
    };
    assert_eq!(show("wal_level").await, "logical");
    assert!(show("max_replication_slots").await.parse::<u32>().unwrap() >= 10);
    assert!(show("max_wal_senders").await.parse::<u32>().unwrap() >= 10);
    // The kit's own settings take effect too.
    drop(client);
    let custom = PgCluster::builder()
        .setting("wal_sender_timeout", "2s")
        .start()
        .expect("start cluster with a setting");
    assert_eq!(custom.psql("SHOW wal_sender_timeout").unwrap(), "2s");
}

#[tokio::test]
async fn restart_and_crash_keep_committed_data_and_port() {
    let mut pg = PgCluster::start().expect("start cluster");
    let port = pg.port();
    pg.psql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (1), (2)")
        .unwrap();

    pg.restart().expect("restart");
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT sum(n) FROM kept").unwrap(), "3");

    pg.psql("INSERT INTO kept VALUES (3)").unwrap();
    pg.crash().expect("crash");
    assert!(!pg.is_running());
    assert!(
        pg.psql("SELECT 1").is_err(),
        "a crashed server answers nothing"
    );
    pg.start_again().expect("start after crash");
    assert_eq!(pg.psql("SELECT sum(n) FROM kept").unwrap(), "6");

    // A client of the new server works, as it would for the relay.
    let client = pg.client().await.expect("connect after restart");
    let n: i64 = client
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
}

#[test]
fn cluster_is_stopped_and_removed_on_drop_even_when_the_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let pg = PgCluster::start().expect("start cluster");
        tx.send((pg.data_dir(), pg.port())).unwrap();
        panic!("a test fails while its cluster runs");
    })
    .join();
    assert!(panicked.is_err());
    let (data_dir, port) = rx.recv().unwrap();
    assert!(!data_dir.exists(), "{} is left behind", data_dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server on port {port} still accepts connections"
    );
}

#[test]
fn missing_server_binaries_give_an_actionable_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = PgCluster::builder()
        .bindir(empty.path())
        .start()
        .expect_err("no binaries, no cluster");
    let msg = err.to_string();
    assert!(msg.contains("install postgresql"), "{msg}");
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");
}
