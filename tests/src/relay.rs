//! `RelayProcess`: the real `outbox-relay` binary, run as a user runs it.
//!
//! Cargo sets `CARGO_BIN_EXE_*` only for the tests of the binary's own
//! package, so the kit builds the binary itself, once per test process, with
//! escargot (`cargo build -p outbox-relay --bin outbox-relay`, same profile
//! and target directory as the tests: usually a no-op). Set
//! `RELAY_TEST_BIN=/path/to/outbox-relay` to test a binary built elsewhere
//! (a release build, a container's binary).
//!
//! The process's stdout and stderr are collected line by line; tests can
//! wait for a line or read them all, and when a test panics while a relay is
//! alive, its whole output is printed into the test's output.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::KitError;

/// The path of the `outbox-relay` binary, built on first use.
pub fn relay_binary() -> Result<PathBuf, KitError> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("RELAY_TEST_BIN") {
            return Ok(PathBuf::from(path));
        }
        let build = escargot::CargoBuild::new()
            .package("outbox-relay")
            .bin("outbox-relay")
            .manifest_path(workspace_manifest());
        let build = if cfg!(debug_assertions) {
            build
        } else {
            build.release()
        };
        build
            .run()
            .map(|run| run.path().to_path_buf())
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(KitError::Build)
}

/// The path of another binary of the workspace (`saga`, say), built on
/// first use in the same profile.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf, KitError> {
    static BINS: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BINS.get_or_init(Default::default);
    let key = format!("{package}/{bin}");
    if let Some(path) = built.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(path.clone());
    }
    let build = escargot::CargoBuild::new()
        .package(package)
        .bin(bin)
        .manifest_path(workspace_manifest());
    let build = if cfg!(debug_assertions) {
        build
    } else {
        build.release()
    };
    let path = build
        .run()
        .map(|run| run.path().to_path_buf())
        .map_err(|e| KitError::Build(e.to_string()))?;
    built
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, path.clone());
    Ok(path)
}

fn workspace_manifest() -> PathBuf {
    // tests/Cargo.toml -> the workspace root's Cargo.toml
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("Cargo.toml"))
        .unwrap_or_else(|| PathBuf::from("Cargo.toml"))
}

#[derive(Debug, Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Output streams that reached their end (the process exited).
    closed: std::sync::atomic::AtomicUsize,
}

/// A running `outbox-relay` process; killed (SIGKILL) on drop if still alive.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    output: Arc<Output>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// How many output streams are collected (2: stdout and stderr).
    streams: usize,
    exited: Option<ExitStatus>,
}

impl RelayProcess {
    /// Starts `outbox-relay <args>` with these extra environment variables
    /// (on top of the test's environment, minus any RELAY_* setting of the
    /// developer's shell, so that tests only see what they set).
    pub fn spawn<I, S>(args: I, env: &[(&str, &str)]) -> Result<RelayProcess, KitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        RelayProcess::spawn_program(&relay_binary()?, args, env)
    }

    /// The same for another program (a workspace binary such as the saga's
    /// services): output collected, SIGKILLed on drop.
    pub fn spawn_program<I, S>(
        bin: &std::path::Path,
        args: I,
        env: &[(&str, &str)],
    ) -> Result<RelayProcess, KitError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let bin = bin.to_path_buf();
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RELAY_")
                && !key.to_string_lossy().starts_with("RELAY_TEST_")
            {
                cmd.env_remove(key);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| KitError::io("starting", bin.clone(), e))?;
        let output = Arc::new(Output::default());
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, output.clone()));
        }
        Ok(RelayProcess {
            child,
            output,
            streams: readers.len(),
            readers,
            exited: None,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line printed so far (stdout and stderr, interleaved as read).
    pub fn lines(&self) -> Vec<String> {
        self.output
            .lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// How many lines printed so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.output
            .lines
            .lock()
            .map(|lines| lines.iter().filter(|l| l.contains(needle)).count())
            .unwrap_or_default()
    }

    /// Everything printed so far, one string.
    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String, KitError> {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .output
            .lines
            .lock()
            .map_err(|_| KitError::Build("relay output lock poisoned".into()))?;
        loop {
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            let exited =
                self.output.closed.load(std::sync::atomic::Ordering::SeqCst) >= self.streams;
            if exited {
                return Err(KitError::Timeout(
                    Duration::ZERO,
                    format!(
                        "a relay line containing {needle:?}: the relay exited; its output:\n{}",
                        lines.join("\n")
                    ),
                ));
            }
            if now >= deadline {
                return Err(KitError::Timeout(
                    timeout,
                    format!(
                        "a relay line containing {needle:?}; output so far:\n{}",
                        lines.join("\n")
                    ),
                ));
            }
            lines = self
                .output
                .grew
                .wait_timeout(lines, deadline - now)
                .map_err(|_| KitError::Build("relay output lock poisoned".into()))?
                .0;
        }
    }

    /// Runs `outbox-relay <args>` to its end (at most a minute) with these
    /// settings; returns whether it succeeded and everything it printed.
    pub fn run_to_end(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let mut process = RelayProcess::spawn(args, env).expect("start outbox-relay");
        let status = process
            .wait(std::time::Duration::from_secs(60))
            .expect("outbox-relay exits within a minute");
        (status.success(), process.output())
    }

    /// Sends a signal (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, signal: Signal) -> Result<(), KitError> {
        let pid = i32::try_from(self.child.id()).unwrap_or(i32::MAX);
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| KitError::io("signalling", format!("pid {pid}"), std::io::Error::from(e)))
    }

    /// SIGKILL, and reap the process.
    pub fn kill(&mut self) -> Result<ExitStatus, KitError> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let _ = self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(10))
    }

    /// Whether the process has exited (reaping it if so).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, KitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                // Let the readers drain what the process printed last.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(KitError::Timeout(
                    timeout,
                    format!("outbox-relay to exit; output so far:\n{}", self.output()),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- outbox-relay (pid {}) output ---\n{}\n--- end of outbox-relay output ---",
                self.child.id(),
                self.output()
            );
        }
    }
}

fn collect<R: std::io::Read + Send + 'static>(
    stream: R,
    output: Arc<Output>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = output.lines.lock() {
                lines.push(line);
            }
            output.grew.notify_all();
        }
        // Take the lock so a waiter cannot miss this between its check and
        // its wait.
        let _guard = output.lines.lock();
        output
            .closed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        output.grew.notify_all();
    })
}
