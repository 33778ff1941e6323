//! `RabbitNode`: a private RabbitMQ node for the tests that kill, restart,
//! stop or alarm a broker, which must never touch the shared broker on
//! 127.0.0.1:5672.
//!
//! Each node runs `rabbitmq-server` from /usr/lib/rabbitmq/bin directly
//! (the /usr/sbin wrapper would send its output into the shared broker's
//! log files) as the `rabbitmq` OS user with that user's HOME, so that it
//! shares the Erlang cookie and `rabbitmqctl -n <node>` reaches it. It has
//! its own node name, AMQP port, Erlang distribution port, config,
//! plugins and env files, database, logs and PID file, all under a
//! temporary directory; management is off. `cluster_partition_handling`
//! is `pause_minority`, for clusters.
//!
//! A node can be SIGKILLed (its BEAM process, by the PID it wrote) and
//! started again on the same data and ports, or stopped and started
//! cleanly (`stop_app` / `start_app`). It is killed and its directory
//! removed on drop, also when the test panics. Every wait has a timeout.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// The server script run directly (not the /usr/sbin wrapper).
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
/// The control tool.
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
/// How long a node may take to boot (about 8 s here when idle).
const BOOT: Duration = Duration::from_secs(90);

/// The `rabbitmq` OS user: uid, gid and HOME (its Erlang cookie).
#[derive(Debug, Clone)]
struct RabbitUser {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl RabbitUser {
    fn find() -> Result<RabbitUser, KitError> {
        let user = nix::unistd::User::from_name("rabbitmq")
            .ok()
            .flatten()
            .ok_or_else(|| KitError::Command {
                command: "looking up the rabbitmq OS user".into(),
                status: "missing".into(),
                output: "install rabbitmq-server (it creates the user and its Erlang cookie)"
                    .into(),
            })?;
        Ok(RabbitUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        })
    }

    /// A command run as the user, with its HOME, from `/`.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        if nix::unistd::geteuid().is_root() {
            cmd.uid(self.uid).gid(self.gid);
        }
        cmd.current_dir("/")
            .env("HOME", &self.home)
            .env("LC_ALL", "C.UTF-8");
        cmd
    }

    fn chown(&self, path: &Path) -> Result<(), KitError> {
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(|e| KitError::io("chown", path, e))?;
        }
        Ok(())
    }
}

/// A private RabbitMQ node; killed and removed on drop.
#[derive(Debug)]
pub struct RabbitNode {
    user: RabbitUser,
    /// `kit-<pid>-<n>@localhost`.
    name: String,
    dir: tempfile::TempDir,
    amqp_port: u16,
    dist_port: u16,
    /// The `rabbitmq-server` process (its script, then the BEAM).
    child: Option<std::process::Child>,
}

impl RabbitNode {
    /// Starts a node and waits until it accepts AMQP connections.
    pub fn start() -> Result<RabbitNode, KitError> {
        let mut node = RabbitNode::create()?;
        node.spawn()?;
        node.wait_until_booted(BOOT)?;
        Ok(node)
    }

    /// Creates a node's files without starting it (several nodes boot in
    /// parallel: [`spawn`](Self::spawn) each, then wait for each).
    pub fn create() -> Result<RabbitNode, KitError> {
        let user = RabbitUser::find()?;
        let dir = tempfile::Builder::new()
            .prefix("rabbitnode-")
            .tempdir()
            .map_err(|e| KitError::io("creating a temporary directory in", "/tmp", e))?;
        user.chown(dir.path())?;
        let name = crate::unique_ident("kit").replace('_', "-") + "@localhost";
        let node = RabbitNode {
            user,
            name,
            dir,
            amqp_port: crate::pg::free_port()?,
            dist_port: crate::pg::free_port()?,
            child: None,
        };
        let mut conf = String::new();
        let _ = writeln!(conf, "listeners.tcp.default = 127.0.0.1:{}", node.amqp_port);
        let _ = writeln!(conf, "loopback_users = none");
        let _ = writeln!(conf, "cluster_partition_handling = pause_minority");
        let _ = writeln!(conf, "log.file.level = warning");
        node.write("rabbitmq.conf", &conf)?;
        node.write("enabled_plugins", "[].\n")?;
        node.write("rabbitmq-env.conf", "")?;
        Ok(node)
    }

    fn write(&self, name: &str, text: &str) -> Result<(), KitError> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).map_err(|e| KitError::io("writing", &path, e))?;
        self.user.chown(&path)
    }

    /// Starts the server process on this node's data and ports (at
    /// creation, or again after a kill).
    pub fn spawn(&mut self) -> Result<(), KitError> {
        let dir = self.dir.path();
        let _ = std::fs::remove_file(dir.join("pid"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stdout"))
            .map_err(|e| KitError::io("opening", dir.join("stdout"), e))?;
        let err = out
            .try_clone()
            .map_err(|e| KitError::io("opening", dir.join("stdout"), e))?;
        let dist = self.dist_port.to_string();
        let mut cmd = self.user.command(SERVER);
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", &dist)
            .env(
                "RABBITMQ_SERVER_START_ARGS",
                format!("-kernel inet_dist_listen_min {dist} -kernel inet_dist_listen_max {dist}"),
            )
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| KitError::io("starting", PathBuf::from(SERVER), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits, after the first boot, until the node accepts AMQP
    /// connections and says itself that the broker runs: at first boot the
    /// port alone could be another server's, had this node failed to bind
    /// it. (A restart on the same ports waits for the port alone, so that
    /// how soon the relay publishes again is measured from that moment.)
    pub fn wait_until_booted(&mut self, timeout: Duration) -> Result<(), KitError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.wait_until_up(deadline.saturating_duration_since(Instant::now()))?;
            let running = self.ctl(&["eval", "rabbit:is_running()."]);
            if running.as_ref().is_ok_and(|out| out.trim() == "true") {
                return Ok(());
            }
            self.still_running(", while its port answered (another server's?)")?;
            if Instant::now() > deadline {
                return Err(KitError::Timeout(
                    timeout,
                    format!(
                        "RabbitMQ node {} to say it runs ({running:?}):\n{}",
                        self.name,
                        self.output()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An error (its exit status, `why` and its output) if the server
    /// process has exited.
    fn still_running(&mut self, why: &str) -> Result<(), KitError> {
        match self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            Some(status) => Err(KitError::Command {
                command: format!("{SERVER} ({})", self.name),
                status: format!("{status}{why}"),
                output: self.output(),
            }),
            None => Ok(()),
        }
    }

    /// Waits until the node accepts AMQP connections.
    pub fn wait_until_up(&mut self, timeout: Duration) -> Result<(), KitError> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() {
                return Ok(());
            }
            self.still_running("")?;
            if Instant::now() > deadline {
                return Err(KitError::Timeout(
                    timeout,
                    format!(
                        "RabbitMQ node {} to accept connections:\n{}",
                        self.name,
                        self.output()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server printed (the last 4 KiB).
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        text.get(start..).unwrap_or(&text).to_string()
    }

    /// The last 6 KiB of the node's log file.
    pub fn log_tail(&self) -> String {
        let mut all = String::new();
        if let Ok(dir) = std::fs::read_dir(self.dir.path().join("log")) {
            for entry in dir.flatten() {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        let start = all.len().saturating_sub(6144);
        all.get(start..).unwrap_or(&all).to_string()
    }

    /// The node's name (`kit-...@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.amqp_port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// The BEAM's OS PID, as the node wrote it.
    pub fn os_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL of the node's BEAM: no shutdown at all. Returns once the
    /// AMQP port no longer answers.
    pub fn kill(&mut self) -> Result<(), KitError> {
        self.kill_now();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() {
            if Instant::now() > deadline {
                return Err(KitError::Timeout(
                    Duration::from_secs(20),
                    format!("the killed node {} to close its port", self.name),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// SIGKILL of the BEAM (by the PID it wrote) and of the server
    /// process, without waiting.
    fn kill_now(&mut self) {
        if let Some(pid) = self.os_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again on the same data and ports, and waits
    /// until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), KitError> {
        self.spawn()?;
        self.wait_until_up(BOOT)
    }

    /// `rabbitmqctl -n <node> <args>`; what it printed.
    pub fn ctl(&self, args: &[&str]) -> Result<String, KitError> {
        let mut cmd = self.user.command(CTL);
        cmd.arg("-n").arg(&self.name).args(args);
        crate::pg::run(&mut cmd).map(|out| String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// A clean stop of the broker application (the Erlang node stays up).
    pub fn stop_app(&self) -> Result<(), KitError> {
        self.ctl(&["stop_app"]).map(|_| ())
    }

    /// Starts the broker application again and waits for the port.
    pub fn start_app(&mut self) -> Result<(), KitError> {
        self.ctl(&["start_app"])?;
        self.wait_until_up(BOOT)
    }

    /// A clean stop of the whole node (`rabbitmqctl stop`): waits until
    /// the server process has exited. [`start_again`](Self::start_again)
    /// boots it on the same data.
    pub fn stop(&mut self) -> Result<(), KitError> {
        // The node may halt before it answers the tool, which then reports
        // a failed distribution: what counts is that the process exits.
        let asked = self.ctl(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(mut child) = self.child.take() {
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(KitError::Timeout(
                        Duration::from_secs(60),
                        format!(
                            "node {} to exit after rabbitmqctl stop: {asked:?}",
                            self.name
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Cuts this node from `peers` (node names) at the Erlang
    /// distribution level, as a network partition would: the node holds a
    /// wrong cookie for each peer, so no connection between them passes the
    /// handshake either way, and the ones it has are dropped; each side
    /// sees the other go down. The CLI tools (the shared cookie) and AMQP
    /// clients are not cut. [`heal`](Self::heal) undoes it.
    pub fn isolate_from(&self, peers: &[&str]) -> Result<(), KitError> {
        let expr = format!(
            "[begin erlang:set_cookie(P, 'kit-partitioned'), erlang:disconnect_node(P) end \
              || P <- [{}]], ok.",
            atoms(peers)
        );
        self.ctl(&["eval", &expr]).map(|_| ())
    }

    /// Ends [`isolate_from`](Self::isolate_from): the shared cookie again
    /// for every peer, and a ping to each.
    pub fn heal(&self, peers: &[&str]) -> Result<(), KitError> {
        let expr = format!(
            "[begin erlang:set_cookie(P, erlang:get_cookie()), net_adm:ping(P) end \
              || P <- [{}]], ok.",
            atoms(peers)
        );
        self.ctl(&["eval", &expr]).map(|_| ())
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // Best effort: the node must not outlive the test.
        self.kill_now();
    }
}

/// Private nodes joined into one cluster (`stop_app`, `join_cluster`,
/// `start_app`): boot in parallel, about as long as one node.
#[derive(Debug)]
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes and joins them to the first. A cluster that
    /// fails to form is thrown away and made once more on new ports and
    /// data (its error printed): forming it is the kit's job, not what a
    /// test proves.
    pub fn start(size: usize) -> Result<RabbitCluster, KitError> {
        match RabbitCluster::try_start(size) {
            Ok(cluster) => Ok(cluster),
            Err(e) => {
                eprintln!("a RabbitMQ cluster failed to form, making it again: {e}");
                RabbitCluster::try_start(size)
            }
        }
    }

    fn try_start(size: usize) -> Result<RabbitCluster, KitError> {
        let mut nodes = (0..size)
            .map(|_| RabbitNode::create())
            .collect::<Result<Vec<_>, _>>()?;
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_until_booted(BOOT)?;
        }
        let first = nodes
            .first()
            .map(|n| n.name().to_string())
            .unwrap_or_default();
        for node in nodes.iter_mut().skip(1) {
            let joined = node
                .ctl(&["stop_app"])
                .and_then(|_| node.ctl(&["join_cluster", &first]))
                .and_then(|_| node.start_app());
            if let Err(e) = joined {
                return Err(KitError::Command {
                    command: format!("joining node {} to {first}", node.name),
                    status: e.to_string(),
                    output: format!("{}\n{}", node.output(), node.log_tail()),
                });
            }
        }
        let cluster = RabbitCluster { nodes };
        cluster.wait_until_whole(BOOT)?;
        Ok(cluster)
    }

    /// Waits until every node of the cluster runs and no partition is
    /// recorded, as the first node sees it.
    pub fn wait_until_whole(&self, timeout: Duration) -> Result<(), KitError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(first) = self.nodes.first() {
                if let Ok(status) = first.ctl(&["cluster_status", "--formatter", "json"]) {
                    let running = running_nodes(&status);
                    let partitioned = status.contains("\"partitions\":{}")
                        || status.contains("\"partitions\":[]");
                    if partitioned && self.nodes.iter().all(|n| running.contains(&n.name)) {
                        return Ok(());
                    }
                    last = status;
                }
            }
            if Instant::now() > deadline {
                return Err(KitError::Timeout(
                    timeout,
                    format!("every node of the cluster to run again: {last}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Cuts node `index` from the others (see
    /// [`RabbitNode::isolate_from`]); under `pause_minority` it pauses.
    pub fn isolate(&self, index: usize) -> Result<(), KitError> {
        let (node, peers) = self.node_and_peers(index)?;
        node.isolate_from(&peers)
    }

    /// Ends the cut of node `index`.
    pub fn heal(&self, index: usize) -> Result<(), KitError> {
        let (node, peers) = self.node_and_peers(index)?;
        node.heal(&peers)
    }

    fn node_and_peers(&self, index: usize) -> Result<(&RabbitNode, Vec<&str>), KitError> {
        let node = self.nodes.get(index).ok_or_else(|| KitError::Command {
            command: format!("cutting node {index}"),
            status: "no such node".into(),
            output: String::new(),
        })?;
        let peers = self
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(RabbitNode::name)
            .collect();
        Ok((node, peers))
    }

    /// Stops every node cleanly, one after the other, then boots them all
    /// again on their data (in parallel: each waits for its peers' tables)
    /// and waits until the cluster is whole.
    pub fn restart(&mut self) -> Result<(), KitError> {
        for node in &mut self.nodes {
            node.stop()?;
        }
        for node in &mut self.nodes {
            node.spawn()?;
        }
        for node in &mut self.nodes {
            node.wait_until_up(BOOT)?;
        }
        self.wait_until_whole(BOOT)
    }

    /// The nodes, the first one the others joined.
    pub fn nodes(&self) -> &[RabbitNode] {
        &self.nodes
    }

    /// One node, to kill, restart or stop.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut RabbitNode> {
        self.nodes.get_mut(index)
    }

    /// Every node's URL, comma-separated (as `amqp_url` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RabbitNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node listening on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port() == port)
    }
}

/// The `running_nodes` of `rabbitmqctl cluster_status --formatter json`.
fn running_nodes(status: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(status)
        .ok()
        .and_then(|v| {
            v.get("running_nodes").and_then(|r| r.as_array()).map(|r| {
                r.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Node names as a list of Erlang atoms.
fn atoms(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",")
}
