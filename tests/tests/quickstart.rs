//! The README's Quick start works when pasted: its blocks, extracted from
//! the README (not copied here), run against a fresh private PostgreSQL
//! cluster and the shared RabbitMQ, and the consumer prints the event.
//!
//! One line is not run: `cargo build --release` (minutes on two cores);
//! the binaries this test suite built stand in, at the paths the next
//! line puts on PATH (`target/release` under a working directory that
//! also holds the repository's `sql/` and `examples/`). The servers'
//! addresses come in through the variables the blocks read (PGHOST,
//! PGPORT, PGUSER, RELAY_AMQP_URL), as the README says they may.

use std::path::Path;

/// The body of the first fenced block of `lang` after `heading`.
fn block_after(readme: &str, heading: &str, lang: &str, nth: usize) -> String {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    let fence = format!("```{lang}\n");
    let mut rest = &readme[start..];
    for _ in 0..nth {
        let at = rest.find(&fence).expect("fence") + fence.len();
        rest = &rest[at..];
    }
    let at = rest
        .find(&fence)
        .unwrap_or_else(|| panic!("no ```{lang} block after {heading:?}"))
        + fence.len();
    let body = &rest[at..];
    body[..body.find("```").expect("closing fence")].to_string()
}

#[test]
fn the_readme_quick_start_runs_as_written_and_the_consumer_prints_the_event() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let heading = "## Quick start (without Docker)";
    let shell = block_after(&readme, heading, "sh", 0);
    let sql = block_after(&readme, heading, "sql", 0);
    assert!(shell.contains("outbox-relay run &"), "{shell}");
    assert!(sql.contains("INSERT INTO outbox"), "{sql}");

    let pg = e2e::PgCluster::start().expect("a fresh cluster");
    // The working directory: the repository's sql/ and examples/, and the
    // binaries where `cargo build --release` would put them.
    let work = tempfile::tempdir().unwrap();
    let relay = e2e::relay_binary().expect("the relay binary");
    let consume = relay.parent().unwrap().join("examples/consume");
    assert!(
        consume.exists(),
        "{} missing: `cargo test` builds the examples (or cargo build -p outbox-relay --examples)",
        consume.display()
    );
    let release = work.path().join("target/release/examples");
    std::fs::create_dir_all(&release).unwrap();
    let link = |from: &Path, to: &Path| std::os::unix::fs::symlink(from, to).unwrap();
    link(&relay, &work.path().join("target/release/outbox-relay"));
    link(&consume, &release.join("consume"));
    link(&root.join("sql"), &work.path().join("sql"));
    link(&root.join("examples"), &work.path().join("examples"));

    let shell: String = shell
        .lines()
        .filter(|l| !l.trim_start().starts_with("cargo build"))
        .map(|l| format!("{l}\n"))
        .collect();
    // The script's output goes to a file it can read: the SQL waits for the
    // consumer's `ready` (a person pasting the blocks waits by reading), and
    // whatever happens, the background jobs end with the script (an
    // orphaned relay would hold the output open).
    let log = work.path().join("quickstart.log");
    let log_path = log.display().to_string();
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{shell}\n\
         consumer=$(jobs -p | head -n 1)\n\
         relay=$(jobs -p | tail -n 1)\n\
         for _ in $(seq 1 600); do grep -q '^ready' '{log_path}' && break; sleep 0.1; done\n\
         psql -v ON_ERROR_STOP=1 -d shop <<'SQL'\n{sql}SQL\n\
         wait \"$consumer\"\n\
         kill -TERM \"$relay\"\n\
         wait \"$relay\"\n\
         echo quick-start-done\n"
    );
    let log_file = std::fs::File::create(&log).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdout(log_file)
        .current_dir(work.path())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg.port().to_string())
        .env("PGUSER", "postgres")
        .env(
            "PATH",
            format!(
                "{}:{}",
                pg.bindir().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("RELAY_AMQP_URL", e2e::amqp::amqp_url())
        // The default 127.0.0.1:9187 may be taken on a shared machine.
        .env("RELAY_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let stdout = std::fs::read_to_string(&log).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);

    // The exchange and dead-letter names are the defaults, on the shared
    // broker: remove them.
    e2e::amqp::delete_blocking(&["outbox", "outbox.dead-letter"], &["outbox.dead-letter"]);

    assert!(
        out.status.success() && stdout.contains("quick-start-done"),
        "the Quick start failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    assert!(stdout.contains("created slot outbox_relay"), "{stdout}");
    assert!(stdout.contains("ready: queue"), "{stdout}");
    assert!(
        stdout.contains("received routing_key=order.created"),
        "{stdout}\n{stderr}"
    );
    assert!(stdout.contains("type=created"), "{stdout}");
    assert!(stdout.contains("aggregate_id=42"), "{stdout}");
    assert!(
        stdout.contains("body {\"order_id\": 42, \"total_cents\": 1999}"),
        "{stdout}"
    );
}
