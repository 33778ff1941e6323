//! No password reaches the relay's output: `config`, `check` and `run`
//! (JSON logs) are run as a user runs them, at RELAY_LOG=trace and with
//! the RELAY_LOG values that ask lapin for its frame traces, with generated
//! passwords (quotes, backslashes, spaces and `,/?#@%:` among letters) in
//! every form of RELAY_PG_URL (libpq keywords quoted and bare, URL raw and
//! percent-encoded) and RELAY_AMQP_URL (raw, percent-encoded, a list of
//! URLs), pointed at servers that refuse them: a private cluster where the
//! password is wrong (or not asked for, so that `run` goes on to the
//! broker), the shared RabbitMQ with an unknown user (the login frame
//! carries the password), and ports where nothing listens.
//!
//! The output is searched for every telltale of the password
//! ([`e2e::secrets::telltales`]): as written, percent-encoded, in its libpq
//! escapes, JSON- or Debug-escaped once or twice, and as the bytes lapin
//! prints for its login frame.

use std::time::{Duration, Instant};

use e2e::secrets::{libpq_bare, libpq_quoted, percent_encoded, telltales};
use e2e::{amqp, PgCluster, RelayProcess};
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use e2e::OUTBOX_SQL;

/// How long a `run` that keeps retrying is left to log before it is killed.
const RUN_FOR: Duration = Duration::from_secs(3);

/// A role that exists, with a password that is never generated.
const ROLE: &str = "relay_secrets";

/// 10 to 20 characters: letters with the ones that break naive parsers.
fn password() -> impl Strategy<Value = String> {
    "[a-zA-Z '\"\\\\,/?#@%:]{10,20}".prop_filter("recognisable", |p| {
        p.chars().filter(|c| c.is_ascii_alphabetic()).count() >= 4
    })
}

/// Where the settings point.
struct Servers {
    pg: PgCluster,
    /// Ports where nothing listens.
    dead_pg: u16,
    dead_amqp: u16,
}

impl Servers {
    fn start() -> Servers {
        // Trust for `postgres` (so `run` gets past Postgres to the broker
        // whatever the password), SCRAM for everyone else.
        let pg = PgCluster::builder()
            .hba(&[
                "local all all trust",
                "host all postgres 127.0.0.1/32 trust",
                "host replication postgres 127.0.0.1/32 trust",
                "host all all 127.0.0.1/32 scram-sha-256",
                "host replication all 127.0.0.1/32 scram-sha-256",
            ])
            .start()
            .expect("start cluster");
        pg.psql(OUTBOX_SQL).expect("load sql/outbox.sql");
        pg.psql(&format!(
            "CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD 'not-generated-1'"
        ))
        .expect("create role");
        Servers {
            pg,
            dead_pg: free_port(),
            dead_amqp: free_port(),
        }
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Settings to try, named for the failure message.
struct Scenario {
    name: &'static str,
    pg_url: String,
    amqp_url: String,
    /// RELAY_LOG: trace, and the ways to ask lapin for its frame traces.
    relay_log: &'static str,
}

impl Scenario {
    fn new(name: &'static str, pg_url: String, amqp_url: String) -> Scenario {
        Scenario {
            name,
            pg_url,
            amqp_url,
            relay_log: "trace",
        }
    }
}

fn scenarios(s: &Servers, p: &str) -> Vec<Scenario> {
    let (port, dead_pg, dead_amqp) = (s.pg.port(), s.dead_pg, s.dead_amqp);
    let broker = amqp::amqp_addr();
    let (enc, q, b) = (percent_encoded(p), libpq_quoted(p), libpq_bare(p));
    // Postgres lets `postgres` in without asking for the password: `run`
    // goes on to the broker, whose login frame carries the password.
    let trusted =
        format!("host=127.0.0.1 port={port} user=postgres password = {q} dbname=postgres");
    let login = format!("amqp://relay-secrets:{enc}@{broker}/%2f");
    let mut scenarios: Vec<Scenario> = [
        "trace",
        "lapin=5,trace",
        "lapin,info",
        "[relay]=trace,info",
        "trace,lapin::io_loop=trace,lapin::channels=trace",
    ]
    .into_iter()
    .map(|relay_log| Scenario {
        relay_log,
        ..Scenario::new(
            "keywords quoted, no password asked; amqp encoded, unknown user",
            trusted.clone(),
            login.clone(),
        )
    })
    .collect();
    scenarios.extend([
        Scenario::new(
            "url encoded, no password asked; amqp raw, unknown user",
            format!("postgres://postgres:{enc}@127.0.0.1:{port}/postgres"),
            format!("amqp://relay-secrets:{p}@{broker}/%2f"),
        ),
        Scenario::new(
            "keywords bare, no password asked; amqp list (dead, unknown user, tls)",
            format!("host=127.0.0.1 port={port} user=postgres password={b} dbname=postgres"),
            format!(
                "amqp://relay-secrets:{enc}@127.0.0.1:{dead_amqp}/%2f, \
                 amqp://relay-secrets:{p}@{broker}/%2f,amqps://relay-secrets:{enc}@{broker}/%2f"
            ),
        ),
        Scenario::new(
            "keywords repeated, wrong password; amqp encoded, dead port",
            format!(
                "password={b} host=127.0.0.1 port={port} user={ROLE} password={q} dbname=postgres"
            ),
            format!("amqp://relay-secrets:{enc}@127.0.0.1:{dead_amqp}/%2f"),
        ),
        Scenario::new(
            "url encoded, wrong password; amqp raw, dead port",
            format!("postgresql://{ROLE}:{enc}@127.0.0.1:{port}/postgres"),
            format!("amqp://relay-secrets:{p}@127.0.0.1:{dead_amqp}/%2f"),
        ),
        Scenario::new(
            "url raw, wrong password; amqp encoded, dead port",
            format!("postgres://{ROLE}:{p}@127.0.0.1:{port}/postgres"),
            format!("amqp://relay-secrets:{enc}@127.0.0.1:{dead_amqp}/%2f"),
        ),
        Scenario::new(
            "url encoded, dead port; amqp list (unknown user, dead)",
            format!("postgres://{ROLE}:{enc}@127.0.0.1:{dead_pg}/postgres"),
            format!(
                "amqp://relay-secrets:{p}@{broker}/%2f,\
                 amqp://relay-secrets:{enc}@127.0.0.1:{dead_amqp}/%2f"
            ),
        ),
    ]);
    scenarios
}

/// A relay process of one scenario and command.
struct Started {
    what: String,
    relay: RelayProcess,
}

/// Starts `config`, `check` and `run` for every scenario at once.
fn start_all(scenarios: &[Scenario]) -> Vec<Started> {
    let mut started = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let slot = format!("secrets_{i}");
        let env = [
            ("RELAY_PG_URL", s.pg_url.as_str()),
            ("RELAY_AMQP_URL", s.amqp_url.as_str()),
            ("RELAY_LOG", s.relay_log),
            ("RELAY_SLOT", slot.as_str()),
            ("RELAY_PUBLICATION", slot.as_str()),
            ("RELAY_METRICS_ADDR", "127.0.0.1:0"),
            ("RELAY_BACKOFF_INITIAL_MS", "100"),
            ("RELAY_BACKOFF_MAX_MS", "500"),
        ];
        for args in [
            &["config"][..],
            &["check"][..],
            &["--log-format", "json", "run", "--no-standby"][..],
        ] {
            started.push(Started {
                what: format!(
                    "{} under {:?}, RELAY_LOG={}",
                    args.join(" "),
                    s.name,
                    s.relay_log
                ),
                relay: RelayProcess::spawn(args, &env).expect("start outbox-relay"),
            });
        }
    }
    started
}

/// Waits for every process to exit, killing those still retrying after
/// [`RUN_FOR`]; returns (what, output) of each.
fn finish_all(started: Vec<Started>) -> Vec<(String, String)> {
    let deadline = Instant::now() + RUN_FOR;
    started
        .into_iter()
        .map(|mut s| {
            let left = deadline.saturating_duration_since(Instant::now());
            if s.relay.wait(left).is_err() {
                let _ = s.relay.kill();
            }
            (s.what, s.relay.output())
        })
        .collect()
}

#[test]
fn no_password_reaches_config_check_or_run_output() {
    let servers = Servers::start();
    let config = Config {
        cases: 8,
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    };
    let leaks = |p: &str| -> Result<(), TestCaseError> {
        let scenarios = scenarios(&servers, p);
        let outputs = finish_all(start_all(&scenarios));
        let telltales = telltales(p);
        let leaks: Vec<String> = outputs
            .iter()
            .filter_map(|(what, output)| {
                let shown: Vec<&String> =
                    telltales.iter().filter(|t| output.contains(*t)).collect();
                (!shown.is_empty()).then(|| format!("{what}: shows {shown:?} in:\n{output}"))
            })
            .collect();
        if leaks.is_empty() {
            Ok(())
        } else {
            Err(TestCaseError::fail(leaks.join("\n\n")))
        }
    };
    for p in FOUND {
        if let Err(e) = leaks(p) {
            panic!("a password found before leaked again: {e}");
        }
    }
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&password(), |p| leaks(&p)) {
        panic!("a password leaked: {e}");
    }
}

/// Passwords that once leaked, tried on every run before the generated
/// ones. Raw in an amqp:// URL, the `/` of the first ended the host early
/// for lapin's parser, which read the rest of the password as the vhost
/// (and the relay showed the vhost, percent-encoded).
const FOUND: &[&str] = &[r"\,\iO,': % %O/g"];
