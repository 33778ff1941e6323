//! The kit runs the real `outbox-relay` binary and captures its output.

use std::time::Duration;

use e2e::RelayProcess;

#[test]
fn the_real_binary_runs_and_its_output_is_captured() {
    let mut relay = RelayProcess::spawn(["--help"], &[]).expect("build and start outbox-relay");
    let status = relay.wait(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{}", relay.output());
    let line = relay
        .wait_for_line("Usage: outbox-relay", Duration::from_secs(1))
        .unwrap();
    assert!(line.starts_with("Usage"));
    assert!(relay.output().contains("run"), "{}", relay.output());
}

#[test]
fn waiting_for_a_line_that_never_comes_times_out_with_the_output_so_far() {
    let mut relay = RelayProcess::spawn(["--version"], &[]).unwrap();
    assert!(relay.wait(Duration::from_secs(30)).unwrap().success());
    let err = relay
        .wait_for_line("no such line", Duration::from_millis(200))
        .expect_err("the line never comes");
    let msg = err.to_string();
    assert!(msg.contains("timed out"), "{msg}");
    assert!(msg.contains("outbox-relay 0."), "{msg}");
}
