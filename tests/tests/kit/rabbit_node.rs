//! The kit's private RabbitMQ node: it boots on its own ports (never
//! 5672), accepts AMQP, can be SIGKILLed and started again on the same
//! data, stopped and started cleanly, and is gone after drop.

use std::net::TcpStream;
use std::time::Duration;

use e2e::RabbitNode;

/// Whether a process runs (a zombie left to an init that does not reap
/// does not count).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

fn answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn a_private_node_boots_dies_restarts_on_its_data_and_is_gone_after_drop() {
    let mut node = RabbitNode::start().expect("a private RabbitMQ node");
    assert_ne!(node.port(), 5672);
    let port = node.port();
    let pid = node.os_pid().expect("the node wrote its PID");
    // A durable queue survives a SIGKILL: the node restarts on its data.
    let conn = lapin::Connection::connect(&node.url(), lapin::ConnectionProperties::default())
        .await
        .expect("connect to the private node");
    let channel = conn.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare("kit-durable".into(), durable, Default::default())
        .await
        .unwrap();
    node.kill().expect("SIGKILL the node");
    assert!(!answers(port));
    assert!(!alive(pid), "the BEAM is gone");
    node.start_again().expect("start it again");
    assert_ne!(node.os_pid(), Some(pid));
    let list = node.ctl(&["list_queues", "name", "durable"]).unwrap();
    assert!(list.contains("kit-durable"), "{list}");
    // A clean stop and start of the application.
    node.stop_app().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!answers(port));
    node.start_app().unwrap();
    assert!(answers(port));
    let pid = node.os_pid().unwrap();
    drop(node);
    std::thread::sleep(Duration::from_millis(500));
    assert!(!alive(pid), "dropped, the node is gone");
}

#[tokio::test]
async fn three_private_nodes_form_one_cluster_and_a_cut_node_pauses_until_healed() {
    let cluster = e2e::RabbitCluster::start(3).expect("a three-node cluster");
    let status = cluster.nodes()[2]
        .ctl(&["cluster_status", "--formatter", "json"])
        .unwrap();
    for node in cluster.nodes() {
        assert!(status.contains(node.name()), "{status}");
    }
    let running: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        running["running_nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    assert!(cluster.urls().split(',').count() == 3);

    // A node cut from its peers is in the minority and pauses; healed, it
    // runs again and the cluster is whole.
    let port = cluster.nodes()[2].port();
    cluster.isolate(2).expect("cut node 2 from its peers");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answers(port) {
        assert!(std::time::Instant::now() < deadline, "node 2 did not pause");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.heal(2).expect("heal");
    cluster
        .wait_until_whole(Duration::from_secs(120))
        .expect("whole again");
    let mut cluster = cluster;
    cluster
        .node_mut(2)
        .unwrap()
        .wait_until_up(Duration::from_secs(60))
        .unwrap();
    assert!(answers(port));
}
