//! `FaultProxy` really cuts, stalls, delays and restores a link: against a
//! plain echo server and against a real PostgreSQL session.

use std::time::{Duration, Instant};

use e2e::{FaultProxy, PgCluster, ProxyMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on a free port; runs until the test's runtime ends.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(msg).await?;
    let mut got = vec![0u8; msg.len()];
    stream.read_exact(&mut got).await?;
    Ok(got)
}

#[tokio::test]
async fn cut_fails_client_io_within_a_second_and_refuses_new_connections() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"ping").await.unwrap(), b"ping");

    proxy.cut();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
        .await
        .expect("a cut link must fail the client's read within a second");
    assert!(
        matches!(read, Err(_) | Ok(0)),
        "read after cut returned data: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        TcpStream::connect(proxy.addr()).await.is_err(),
        "a cut proxy refuses new connections"
    );

    proxy.restore();
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"back").await.unwrap(), b"back");
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn stall_holds_bytes_without_closing_until_restore() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut client, b"one").await.unwrap(), b"one");

    proxy.stall();
    assert_eq!(proxy.mode(), ProxyMode::Stall);
    client.write_all(b"two").await.unwrap();
    let mut buf = [0u8; 3];
    let stalled =
        tokio::time::timeout(Duration::from_millis(700), client.read_exact(&mut buf)).await;
    assert!(stalled.is_err(), "a stalled link delivered {buf:?}");
    assert_eq!(proxy.open_connections(), 1, "a stall closes nothing");

    proxy.restore();
    tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut buf))
        .await
        .expect("held bytes arrive after restore")
        .unwrap();
    assert_eq!(&buf, b"two");
}

#[tokio::test]
async fn delay_slows_every_chunk() {
    let proxy = FaultProxy::start(echo_server().await).unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    proxy.delay(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(round_trip(&mut client, b"slow").await.unwrap(), b"slow");
    // Once on the way there, once on the way back.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn cut_fails_a_real_postgres_session_within_a_second() {
    let pg = PgCluster::start().unwrap();
    let proxy = FaultProxy::start(pg.addr()).unwrap();
    let url = format!("postgres://postgres@{}/postgres", proxy.addr());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();

    proxy.cut();
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(1),
        client.simple_query("SELECT pg_sleep(0.1)"),
    )
    .await
    .expect("the query must fail within a second, not hang");
    assert!(result.is_err());
    assert!(started.elapsed() < Duration::from_secs(1));

    proxy.restore();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.unwrap();
}
