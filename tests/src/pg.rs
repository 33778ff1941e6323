//! `PgCluster`: a private PostgreSQL cluster for one test.
//!
//! Each cluster lives in its own temporary directory (data, socket, log) on
//! its own 127.0.0.1 port, with `wal_level = logical` and room for slots and
//! walsenders. PostgreSQL refuses to run as root; when the tests run as root
//! the kit runs initdb, pg_ctl and postgres as the `postgres` OS user.
//!
//! initdb is slow on two cores, so the kit runs it once per PostgreSQL
//! version into a cached template (in the system temp directory, created
//! atomically) and copies that template for every cluster.
//!
//! A cluster is stopped (immediately) and its directory removed on drop, also
//! when the test panics. Every command has a timeout: the kit never hangs.
//!
//! Versions: the default is the newest Debian PostgreSQL on the machine (or
//! `RELAY_TEST_PG_BINDIR`); [`PgClusterBuilder::version`] picks a major
//! version, found in `RELAY_TEST_PG<major>_BINDIR`, then Debian's
//! /usr/lib/postgresql/<major>/bin, then the pinned builds that
//! scripts/install-postgres.sh puts in its cache. A test never fetches one.
//!
//! [`PgCluster::standby`] makes a physical standby of a running cluster
//! (from a copy of its data directory taken at a clean stop), for failover
//! tests: streaming from a physical slot, hot_standby_feedback, and on 17+
//! the logical slots synced (sync_replication_slots).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::KitError;

/// How long pg_ctl waits for a start or stop before giving up.
const PG_CTL_WAIT_SECS: u32 = 60;

/// The PostgreSQL server binaries and the OS user to run them as.
#[derive(Debug, Clone)]
struct Install {
    bindir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when the kit runs as root.
    run_as: Option<(u32, u32)>,
    /// `postgres --version`, e.g. "postgres (PostgreSQL) 15.19".
    version: String,
}

impl Install {
    fn find(bindir: Option<&Path>) -> Result<Install, KitError> {
        let bindir = match bindir {
            Some(dir) => checked_bindir(dir, "the bindir a test gave")?,
            None => find_bindir()?,
        };
        let run_as = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(KitError::NoPostgresUser)?;
            Some((user.uid.as_raw(), user.gid.as_raw()))
        } else {
            None
        };
        let out = run(Command::new(bindir.join("postgres")).arg("--version"))?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Install {
            bindir,
            run_as,
            version,
        })
    }

    /// A command for one of the server binaries, run as the right OS user.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        self.apply_user(&mut cmd);
        cmd
    }

    fn apply_user(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            // The child may not be able to enter the test's working directory.
            cmd.current_dir("/");
        }
        cmd.env("LC_ALL", "C").env_remove("PGDATA");
    }

    /// Hand a path the kit created to the user that runs the server.
    fn chown(&self, path: &Path) -> Result<(), KitError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| KitError::io("chown", path, e))?;
        }
        Ok(())
    }
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

fn checked_bindir(dir: &Path, what: &str) -> Result<PathBuf, KitError> {
    if has_server(dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(KitError::NoPostgres {
            searched: format!("{what} ({})", dir.display()),
        })
    }
}

/// The major versions the compatibility set runs on besides the default.
pub const COMPAT_VERSIONS: [u32; 4] = [14, 16, 17, 18];

/// Where scripts/install-postgres.sh keeps the pinned builds (the same rule
/// as the script's).
pub fn pinned_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTBOX_RELAY_PG_ROOT") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/cache/outbox-relay/postgresql");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("outbox-relay/postgresql")
}

/// The server binaries of one major version.
fn find_version(major: u32) -> Result<PathBuf, KitError> {
    let var = format!("RELAY_TEST_PG{major}_BINDIR");
    if let Some(dir) = std::env::var_os(&var) {
        return checked_bindir(Path::new(&dir), &var);
    }
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if has_server(&debian) {
        return Ok(debian);
    }
    let pinned = pinned_root().join(major.to_string()).join("bin");
    if has_server(&pinned) {
        return Ok(pinned);
    }
    Err(KitError::NoPostgres {
        searched: format!(
            "PostgreSQL {major} in {var}, {} and {} (run scripts/install-postgres.sh to install \
             the pinned builds of 14, 16, 17 and 18)",
            debian.display(),
            pinned.display()
        ),
    })
}

fn find_bindir() -> Result<PathBuf, KitError> {
    if let Some(dir) = std::env::var_os("RELAY_TEST_PG_BINDIR") {
        return checked_bindir(Path::new(&dir), "RELAY_TEST_PG_BINDIR");
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    // The newest version under /usr/lib/postgresql/<ver>/bin.
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(KitError::NoPostgres {
            searched: "/usr/lib/postgresql/<version>/bin".into(),
        })
}

/// Run a command to completion; a non-zero exit is an error carrying its
/// output.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, KitError> {
    let described = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| KitError::io("running", PathBuf::from(&described), e))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(KitError::Command {
            command: described,
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        })
    }
}

/// The initdb'd template for this PostgreSQL version, created once and
/// shared by every cluster (and every test process) on this machine.
fn template(install: &Install) -> Result<PathBuf, KitError> {
    let tag: String = install
        .version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let cache = std::env::temp_dir().join("outbox-relay-testkit");
    let template = cache.join(format!("template-{tag}"));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    std::fs::create_dir_all(&cache).map_err(|e| KitError::io("creating", &cache, e))?;
    // initdb into a private directory, then rename: atomic, so concurrent
    // test processes never see a half-made template.
    let staging = tempfile::Builder::new()
        .prefix("initdb-")
        .tempdir_in(&cache)
        .map_err(|e| KitError::io("creating a directory in", &cache, e))?;
    install.chown(staging.path())?;
    let data = staging.path().join("data");
    run(install
        .command("initdb")
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync")
        .arg("--no-instructions"))?;
    match std::fs::rename(&data, &template) {
        Ok(()) => Ok(template),
        // Another process won the race: use its template.
        Err(_) if template.join("PG_VERSION").is_file() => Ok(template),
        Err(e) => Err(KitError::io("renaming a fresh template to", &template, e)),
    }
}

/// A fresh directory for a cluster, owned by the server's user.
fn new_dir(install: &Install) -> Result<tempfile::TempDir, KitError> {
    let dir = tempfile::Builder::new()
        .prefix("pgcluster-")
        .tempdir()
        .map_err(|e| KitError::io("creating a temporary directory in", "/tmp", e))?;
    install.chown(dir.path())?;
    Ok(dir)
}

/// `cp -a` of a data directory, as the server's user.
fn copy_data(install: &Install, from: &Path, to: &Path) -> Result<(), KitError> {
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(from).arg(to);
    install.apply_user(&mut cp);
    run(&mut cp).map(|_| ())
}

/// 17 of "postgres (PostgreSQL) 17.10"; 0 if unreadable.
fn major_of(version: &str) -> u32 {
    version
        .rsplit(' ')
        .next()
        .and_then(|v| v.split(['.', 'b', 'r']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// A port nothing listens on now, never handed out before in this
/// process. A server binds its port seconds after it was chosen (a
/// RabbitMQ node boots for about 8 s), and the kernel may offer the same
/// free port to the next caller meanwhile: two servers of parallel tests
/// then raced for one port, and a test waiting for its node reached the
/// other test's.
pub(crate) fn free_port() -> Result<u16, KitError> {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| KitError::io("binding a free port on", "127.0.0.1:0", e))?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| KitError::io("reading the address of", "127.0.0.1:0", e))?;
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.insert(port) {
            return Ok(port);
        }
    }
    Err(KitError::Command {
        command: "choosing a free port on 127.0.0.1".into(),
        status: "every port offered had been handed out before".into(),
        output: String::new(),
    })
}

/// Settings for a cluster before it starts.
#[derive(Debug, Clone, Default)]
pub struct PgClusterBuilder {
    settings: Vec<(String, String)>,
    hba: Option<Vec<String>>,
    bindir: Option<PathBuf>,
    version: Option<u32>,
}

impl PgClusterBuilder {
    /// Adds or overrides a postgresql.conf setting, e.g.
    /// `.setting("wal_sender_timeout", "2s")`. The value is written as is:
    /// quote strings yourself (`"'on'"` is not needed for booleans).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the default pg_hba.conf (trust for everything on the socket
    /// and 127.0.0.1) with these lines.
    pub fn hba(mut self, lines: &[&str]) -> Self {
        self.hba = Some(lines.iter().map(|l| l.to_string()).collect());
        self
    }

    /// Uses the server binaries in this directory instead of looking for
    /// them (`RELAY_TEST_PG_BINDIR`, `pg_config --bindir`, the newest
    /// /usr/lib/postgresql/<version>/bin).
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Runs this major version of PostgreSQL (14 to 18) instead of the
    /// default; see the module's doc for where the kit finds it.
    pub fn version(mut self, major: u32) -> Self {
        self.version = Some(major);
        self
    }

    /// `version(major)` when given one, the default otherwise.
    pub fn maybe_version(self, major: Option<u32>) -> Self {
        match major {
            Some(m) => self.version(m),
            None => self,
        }
    }

    /// Creates the cluster and starts it.
    pub fn start(self) -> Result<PgCluster, KitError> {
        PgCluster::create(self)
    }
}

/// A private PostgreSQL cluster, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    install: Install,
    /// Holds data/, sock/ and server.log; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    running: bool,
}

impl PgCluster {
    /// Starts a cluster with the default settings.
    pub fn start() -> Result<PgCluster, KitError> {
        PgClusterBuilder::default().start()
    }

    /// A cluster with the project's outbox table loaded.
    pub fn with_outbox() -> Result<PgCluster, KitError> {
        let pg = PgCluster::start()?;
        pg.psql(crate::OUTBOX_SQL)?;
        Ok(pg)
    }

    /// Settings first, then [`PgClusterBuilder::start`].
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    fn create(builder: PgClusterBuilder) -> Result<PgCluster, KitError> {
        let bindir = match (builder.bindir.as_deref(), builder.version) {
            (Some(dir), _) => Some(dir.to_path_buf()),
            (None, Some(major)) => Some(find_version(major)?),
            (None, None) => None,
        };
        let install = Install::find(bindir.as_deref())?;
        let template = template(&install)?;
        let dir = new_dir(&install)?;
        copy_data(&install, &template, &dir.path().join("data"))?;
        let hba = builder.hba.unwrap_or_else(|| {
            [
                "local all all trust",
                "host all all 127.0.0.1/32 trust",
                "local replication all trust",
                "host replication all 127.0.0.1/32 trust",
            ]
            .iter()
            .map(|l| l.to_string())
            .collect()
        });
        PgCluster::configure_and_start(install, dir, &builder.settings, Some(hba))
    }

    /// Appends the kit's settings (its own socket directory, logical WAL)
    /// and `settings` to the data directory's postgresql.conf, writes
    /// pg_hba.conf when given, and starts the server on a free port.
    fn configure_and_start(
        install: Install,
        dir: tempfile::TempDir,
        settings: &[(String, String)],
        hba: Option<Vec<String>>,
    ) -> Result<PgCluster, KitError> {
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).map_err(|e| KitError::io("creating", &sock, e))?;
        install.chown(&sock)?;

        let mut conf = String::from("\n# written by the outbox-relay test kit\n");
        let defaults = [
            ("listen_addresses", "'127.0.0.1'".to_string()),
            (
                "unix_socket_directories",
                format!("'{}'", sock.to_string_lossy()),
            ),
            ("wal_level", "logical".into()),
            ("max_replication_slots", "20".into()),
            ("max_wal_senders", "20".into()),
            ("max_connections", "60".into()),
            ("fsync", "off".into()),
            ("full_page_writes", "off".into()),
            ("shared_buffers", "32MB".into()),
            ("log_min_messages", "warning".into()),
            ("log_line_prefix", "'%m [%p] %q%a '".into()),
        ];
        for (name, value) in defaults.iter() {
            let _ = writeln!(conf, "{name} = {value}");
        }
        for (name, value) in settings {
            let _ = writeln!(conf, "{name} = {value}");
        }
        append(&data.join("postgresql.conf"), &conf)?;

        let mut cluster = PgCluster {
            install,
            dir,
            port: free_port()?,
            running: false,
        };
        if let Some(hba) = hba {
            cluster.write_file("pg_hba.conf", &(hba.join("\n") + "\n"))?;
        }

        // A free port can be taken between our probe and the server's bind:
        // try a few.
        let mut last = None;
        for _ in 0..5 {
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) if cluster.log().contains("could not bind") => {
                    last = Some(e);
                    cluster.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| KitError::Timeout(Duration::ZERO, "a free port".into())))
    }

    /// A physical standby of this cluster, streaming from a physical slot
    /// made for it: the data directory is copied at a clean stop (this
    /// cluster is stopped for that moment and started again on its port),
    /// without the slots, as a base backup would be. The standby runs with
    /// hot_standby_feedback and, on PostgreSQL 17 and later, syncs the
    /// logical slots that were created with `failover` (sync_replication_slots);
    /// this cluster then holds logical decoding back until the standby has
    /// the WAL (synchronized_standby_slots names the standby's slot).
    /// Returns once the standby streams.
    pub fn standby(&mut self) -> Result<PgCluster, KitError> {
        self.standby_with(true, None)
    }

    /// [`standby`](Self::standby), with `hold_decoding` false leaving
    /// synchronized_standby_slots empty on this cluster (17+): logical
    /// decoding then runs ahead of the standby, as on a primary that was
    /// not told to wait for it; and with `via`, the standby reaching this
    /// cluster through that port on 127.0.0.1 (a [`crate::FaultProxy`], to
    /// stall it).
    pub fn standby_with(
        &mut self,
        hold_decoding: bool,
        via: Option<u16>,
    ) -> Result<PgCluster, KitError> {
        let slot = crate::unique_ident("standby");
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ))?;
        if self.major() >= 17 && hold_decoding {
            self.append_conf(&format!("synchronized_standby_slots = '{slot}'\n"))?;
        }
        self.stop()?;
        let dir = new_dir(&self.install)?;
        let data = dir.path().join("data");
        let copied = copy_data(&self.install, &self.data_dir(), &data);
        self.start_again()?;
        copied?;
        // What pg_basebackup leaves out: the slots, the pid file, the log.
        let slots = data.join("pg_replslot");
        for entry in std::fs::read_dir(&slots).map_err(|e| KitError::io("reading", &slots, e))? {
            let path = entry
                .map_err(|e| KitError::io("reading", &slots, e))?
                .path();
            std::fs::remove_dir_all(&path).map_err(|e| KitError::io("removing", &path, e))?;
        }
        for leftover in ["postmaster.pid", "postmaster.opts"] {
            let _ = std::fs::remove_file(data.join(leftover));
        }
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").map_err(|e| KitError::io("writing", &signal, e))?;
        self.install.chown(&signal)?;
        let mut settings = vec![
            (
                "primary_conninfo".to_string(),
                format!(
                    "'host=127.0.0.1 port={} user=postgres dbname=postgres \
                     application_name={slot}'",
                    via.unwrap_or(self.port)
                ),
            ),
            ("primary_slot_name".into(), format!("'{slot}'")),
            ("hot_standby".into(), "on".into()),
            ("hot_standby_feedback".into(), "on".into()),
            ("synchronized_standby_slots".into(), "''".into()),
        ];
        if self.major() < 17 {
            settings.retain(|(name, _)| name != "synchronized_standby_slots");
        } else {
            settings.push(("sync_replication_slots".into(), "on".into()));
        }
        let standby = PgCluster::configure_and_start(self.install.clone(), dir, &settings, None)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let streaming = self.psql(&format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE application_name = '{slot}' AND state = 'streaming'"
            ))?;
            if streaming == "1" {
                return Ok(standby);
            }
            if std::time::Instant::now() > deadline {
                return Err(KitError::Timeout(
                    Duration::from_secs(30),
                    format!("the standby to stream; its log:\n{}", standby.log()),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Promotes a standby to a primary (`pg_ctl promote`, waiting until it
    /// accepts writes).
    pub fn promote(&self) -> Result<(), KitError> {
        self.pg_ctl(&["promote"])
    }

    /// SIGKILL of the postmaster, as a machine that dies: no shutdown, no
    /// checkpoint; its backends exit when they notice. Returns once the
    /// port no longer answers.
    pub fn kill(&mut self) -> Result<(), KitError> {
        if !self.running {
            return Ok(());
        }
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| KitError::io("reading", &pid_file, e))?;
        let pid: i32 = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| {
                KitError::io("parsing", &pid_file, std::io::ErrorKind::InvalidData.into())
            })?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        self.running = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_ok() {
            if std::time::Instant::now() > deadline {
                return Err(KitError::Timeout(
                    Duration::from_secs(20),
                    "the killed server's port to close".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The server's major version (14, 15, ...).
    pub fn major(&self) -> u32 {
        major_of(&self.install.version)
    }

    /// The data directory (PGDATA).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), KitError> {
        let wait = PG_CTL_WAIT_SECS.to_string();
        let result = run(self
            .install
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &wait])
            .args(args));
        result.map(|_| ()).map_err(|e| match e {
            KitError::Command {
                command,
                status,
                output,
            } => KitError::Command {
                command,
                status,
                output: format!("{output}\n--- server log ---\n{}", self.log()),
            },
            other => other,
        })
    }

    fn start_server(&mut self) -> Result<(), KitError> {
        let opts = format!("-p {}", self.port);
        self.pg_ctl(&["-o", &opts, "start"])?;
        self.running = true;
        Ok(())
    }

    /// Starts a stopped cluster on the same data directory and port.
    pub fn start_again(&mut self) -> Result<(), KitError> {
        if !self.running {
            self.start_server()?;
        }
        Ok(())
    }

    /// A clean shutdown (`pg_ctl stop -m fast`): sessions are disconnected,
    /// a shutdown checkpoint is written.
    pub fn stop(&mut self) -> Result<(), KitError> {
        if self.running {
            self.pg_ctl(&["-m", "fast", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    /// A crash (`pg_ctl stop -m immediate`): no checkpoint, crash recovery
    /// at the next start.
    pub fn crash(&mut self) -> Result<(), KitError> {
        if self.running {
            self.pg_ctl(&["-m", "immediate", "stop"])?;
            self.running = false;
        }
        Ok(())
    }

    /// Stop (fast) and start again on the same data directory and port.
    pub fn restart(&mut self) -> Result<(), KitError> {
        self.stop()?;
        self.start_again()
    }

    /// Re-reads pg_hba.conf and postgresql.conf (`pg_ctl reload`).
    pub fn reload(&self) -> Result<(), KitError> {
        self.pg_ctl(&["reload"])
    }

    /// Writes a file into the data directory (pg_hba.conf, a TLS key or
    /// certificate), owned by the server's user with mode 0600.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf, KitError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).map_err(|e| KitError::io("writing", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| KitError::io("setting the mode of", &path, e))?;
        self.install.chown(&path)?;
        Ok(path)
    }

    /// Appends settings to postgresql.conf (they take effect at the next
    /// reload or restart).
    pub fn append_conf(&self, lines: &str) -> Result<(), KitError> {
        append(&self.data_dir().join("postgresql.conf"), lines)
    }

    /// Whether the server is running (as far as the kit knows).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The PostgreSQL server binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.install.bindir
    }

    /// `postgres --version` of the server binaries.
    pub fn version(&self) -> &str {
        &self.install.version
    }

    /// A URL for the superuser `postgres` on database `postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres", None, "postgres")
    }

    /// A URL for a given role, optional password and database.
    pub fn url_for(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        match password {
            Some(p) => format!("postgres://{user}:{p}@127.0.0.1:{}/{dbname}", self.port),
            None => format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port),
        }
    }

    /// A tokio-postgres client as superuser; its connection task is spawned
    /// on the current runtime.
    pub async fn client(&self) -> Result<tokio_postgres::Client, KitError> {
        connect(&self.url()).await
    }

    /// Runs SQL (one or more statements) through `psql`, outside any async
    /// runtime; returns what it printed (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> Result<String, KitError> {
        let psql = self.install.bindir.join("psql");
        let program = if psql.is_file() {
            psql
        } else {
            PathBuf::from("psql")
        };
        let port = self.port.to_string();
        let out = run(Command::new(program)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port, "-U", "postgres", "-d", "postgres", "-c", sql])
            .env_remove("PGPASSWORD"))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Best effort: a failing stop must not turn a test failure into
            // a double panic. The directory goes with `dir`.
            let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
        }
    }
}

fn append(path: &Path, text: &str) -> Result<(), KitError> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| KitError::io("opening", path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| KitError::io("appending to", path, e))
}

/// Connects a tokio-postgres client and spawns its connection task on the
/// current runtime.
pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client, KitError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes
        // away; tests observe that through the client.
        let _ = connection.await;
    });
    Ok(client)
}
