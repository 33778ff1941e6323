//! A three-node RabbitMQ cluster (the kit's private nodes, never the
//! shared broker) with a quorum queue bound to the exchange, and the relay
//! given every node's URL. Under load, one after the other on one cluster
//! (booting three nodes costs about as long as one, so the faults share
//! it):
//!
//! 1. the node the relay is connected to is SIGKILLed: the relay moves to
//!    another node and publishes again; the node comes back on its data;
//! 2. the node the relay is connected to is cut from its peers: it is in
//!    the minority and pauses (`pause_minority`), so nothing it took is
//!    confirmed; the relay is SIGKILLed while its work sits there
//!    unconfirmed, and its successor starts from the slot, which must not
//!    have passed any of it; the partition heals;
//! 3. the whole cluster is stopped cleanly and started again: the durable
//!    exchange and the quorum queue survive, the relay waits without
//!    spinning and publishes again once a node answers.
//!
//! At the end every committed row is in the quorum queue, first deliveries
//! keep per-aggregate order, and duplicates are counted.

use std::time::{Duration, Instant};

use e2e::RabbitCluster;
use lapin::types::{AMQPValue, FieldTable};

use super::broker_node::{back_within, confirmed, everything_in, topology_at};
use super::fixture::{committed_count, verify, Fixture, Load};
use crate::operations::metrics_addr;

/// A durable topic exchange and a quorum queue bound to every key,
/// declared through the node at `url`: (exchange, queue).
async fn quorum_topology(url: &str) -> (String, String) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    topology_at(url, "cluster", arguments).await
}

/// What the relay says each time it connects to a broker.
const CONNECTED: &str = "connected to the broker";

/// The index of the node the relay last said it connected to.
fn connected_node(cluster: &RabbitCluster, relay: &e2e::RelayProcess) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = relay.lines();
        let port = lines
            .iter()
            .rev()
            .find(|l| l.contains(CONNECTED))
            .and_then(|l| l.split("127.0.0.1:").nth(1))
            .and_then(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<u16>()
                    .ok()
            });
        if let Some(index) = port.and_then(|p| cluster.index_of_port(p)) {
            return index;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never said which node it connected to:\n{}",
            relay.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the relay has connected again (after `connected_before`
/// connections) and then has a new confirm. Confirms taken in just before
/// a node went away still count up, so the metric alone does not say the
/// relay moved.
async fn publishes_again(relay: &e2e::RelayProcess, addr: &str, connected_before: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while relay.count_lines(CONNECTED) == connected_before {
        assert!(
            Instant::now() < deadline,
            "the relay did not connect again within 60 s:\n{}",
            relay.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = confirmed(addr).await;
    back_within(addr, before).await;
}

/// CPU seconds the process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // Clock ticks: 100 a second on Linux.
    Duration::from_millis(ticks.saturating_mul(10)).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_with_a_quorum_queue_loses_nothing_to_node_loss_partition_or_restart()
{
    let mut cluster = tokio::task::block_in_place(|| RabbitCluster::start(3))
        .expect("a three-node RabbitMQ cluster");
    let first_url = cluster.nodes()[0].url();
    let (exchange, queue) = quorum_topology(&first_url).await;
    let members = cluster.nodes()[0]
        .ctl(&["list_queues", "name", "members", "--formatter", "json"])
        .unwrap();
    for node in cluster.nodes() {
        assert!(
            members.contains(node.name()),
            "the quorum queue has a member on every node: {members}"
        );
    }

    let f = Fixture::new().await;
    let urls = cluster.urls();
    let env = [
        ("RELAY_AMQP_URL", urls.as_str()),
        ("RELAY_EXCHANGE", exchange.as_str()),
        ("RELAY_DEAD_LETTER_QUEUE_TYPE", "quorum"),
        ("RELAY_BACKOFF_INITIAL_MS", "200"),
        ("RELAY_BACKOFF_MAX_MS", "5000"),
    ];
    let mut relay = f.start_relay(&env);
    let mut addr = metrics_addr(&relay);
    let load = Load::start(&f.pg.url(), 2, 5, Duration::from_millis(20), u64::MAX);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. SIGKILL of the node the relay uses.
    let used = connected_node(&cluster, &relay);
    let connected_before = relay.count_lines(CONNECTED);
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.node_mut(used).unwrap().kill())
        .expect("SIGKILL the node");
    publishes_again(&relay, &addr, connected_before).await;
    let moved = killed.elapsed();
    let now_on = connected_node(&cluster, &relay);
    assert_ne!(now_on, used, "the relay moved to a node that is up");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| {
        cluster.node_mut(used).unwrap().start_again()?;
        cluster.wait_until_whole(Duration::from_secs(120))
    })
    .expect("the killed node rejoins");

    // 2. The node the relay uses is cut from its peers and pauses; the
    // relay dies while what it sent there is unconfirmed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = connected_node(&cluster, &relay);
    let held = f.confirmed_flush("outbox_relay");
    cluster.isolate(used).expect("cut the node from its peers");
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.kill().unwrap();
    let after_cut = f.confirmed_flush("outbox_relay");
    assert!(after_cut >= held, "the slot went backwards");
    let paused_port = cluster.nodes()[used].port();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", paused_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the cut node did not pause (pause_minority)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay = f.start_relay(&env);
    addr = metrics_addr(&relay);
    let republished = back_within(&addr, 0).await;
    assert_ne!(
        connected_node(&cluster, &relay),
        used,
        "the successor publishes to the majority, not the paused node"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.heal(used).expect("heal the partition");
    tokio::task::block_in_place(|| cluster.wait_until_whole(Duration::from_secs(120)))
        .expect("the partition heals and the paused node runs again");

    // 3. The whole cluster stops and starts again; the relay waits without
    // spinning.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_before = relay.count_lines(CONNECTED);
    let cpu_before = cpu_seconds(relay.pid());
    let down_since = Instant::now();
    tokio::task::block_in_place(|| cluster.restart()).expect("restart the whole cluster");
    let down = down_since.elapsed();
    let cpu_down = cpu_seconds(relay.pid()) - cpu_before;
    let whole = Instant::now();
    publishes_again(&relay, &addr, connected_before).await;
    let restarted = whole.elapsed();
    assert!(
        relay.try_status().is_none(),
        "the relay waits for the cluster, it does not exit:\n{}",
        relay.output()
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = load.stop().await;
    let got = everything_in(&cluster.nodes()[0].url(), &queue, &written).await;
    let wanted = committed_count(&written);
    let verdict = verify(&got, &written);
    println!(
        "three-node cluster, quorum queue: {verdict:?} of {wanted} committed; publishing again \
         {:.2} s after the used node was SIGKILLed; a successor of the relay killed during a \
         partition published {:.2} s after it started; after a whole-cluster restart \
         ({:.1} s down, relay CPU {:.2} s meanwhile) publishing again {:.2} s after the cluster \
         was whole",
        moved.as_secs_f64(),
        republished.as_secs_f64(),
        down.as_secs_f64(),
        cpu_down,
        restarted.as_secs_f64()
    );
    assert_eq!(verdict.unique, wanted, "{verdict:?}");
    assert!(
        cpu_down < down.as_secs_f64() * 0.2,
        "the relay spun while the cluster was down: {cpu_down:.2} s of CPU in {down:?}"
    );
    assert!(
        restarted < Duration::from_secs(10),
        "publishing resumed {restarted:?} after the cluster was back:\n{}",
        relay.output()
    );
    relay.kill().unwrap();
}
