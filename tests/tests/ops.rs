//! The operator commands against a real PostgreSQL and RabbitMQ, run as the
//! real binary: `check` passes on a ready setup and fails with the right
//! line for each missing prerequisite; `setup` is idempotent; `status`
//! reports the slot; `config` shows sources and never a password.

use e2e::{amqp, PgCluster, RelayProcess};

/// Runs `outbox-relay <args>` to completion; returns (success, output).
fn relay(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    RelayProcess::run_to_end(args, env)
}

fn ready_cluster() -> PgCluster {
    PgCluster::with_outbox().expect("a cluster with the outbox table")
}

fn line<'a>(output: &'a str, start: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{output}"))
}

#[test]
fn check_passes_when_every_prerequisite_is_met() {
    let pg = ready_cluster();
    pg.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        .unwrap();
    pg.reload().unwrap();
    let url = pg.url();
    let amqp = amqp::amqp_url();
    let (ok, out) = relay(
        &["check"],
        &[("RELAY_PG_URL", &url), ("RELAY_AMQP_URL", &amqp)],
    );
    assert!(ok, "{out}");
    for name in [
        "postgres",
        "server",
        "wal_retention",
        "wal_level",
        "slots",
        "wal_senders",
        "role",
        "table",
        "columns",
        "publication",
        "slot",
        "emit_message",
        "rabbitmq",
        "exchange",
        "dead_letter",
    ] {
        assert!(
            line(&out, &format!("ok    {name} ")).len() > 6,
            "{name} did not pass:\n{out}"
        );
    }
    // PostgreSQL 15 has no failover slots: said, not failed.
    assert!(
        line(&out, "warn  failover ").contains("no failover slots"),
        "{out}"
    );
    assert!(out.contains("all 17 checks passed"), "{out}");
}

#[test]
fn check_fails_with_the_fix_when_wal_level_is_replica() {
    let pg = PgCluster::builder()
        .setting("wal_level", "replica")
        .start()
        .unwrap();
    pg.psql(e2e::OUTBOX_SQL).unwrap();
    let (ok, out) = relay(
        &["check"],
        &[
            ("RELAY_PG_URL", &pg.url()),
            ("RELAY_AMQP_URL", &amqp::amqp_url()),
        ],
    );
    assert!(!ok, "{out}");
    let l = line(&out, "FAIL  wal_level");
    assert!(l.contains("wal_level is 'replica'"), "{l}");
    assert!(l.contains("set wal_level = logical"), "{l}");
}

#[test]
fn check_fails_with_the_fix_when_the_role_lacks_replication() {
    let pg = ready_cluster();
    pg.psql("CREATE ROLE app LOGIN; GRANT SELECT ON outbox TO app")
        .unwrap();
    let (ok, out) = relay(
        &["check"],
        &[
            ("RELAY_PG_URL", &pg.url_for("app", None, "postgres")),
            ("RELAY_AMQP_URL", &amqp::amqp_url()),
        ],
    );
    assert!(!ok, "{out}");
    let l = line(&out, "FAIL  role");
    assert!(l.contains("lacks the REPLICATION attribute"), "{l}");
    assert!(l.contains("ALTER ROLE \"app\" WITH REPLICATION"), "{l}");
    line(&out, "ok    table");
    // Nor can it create the publication: it does not own the table.
    let l = line(&out, "FAIL  publication");
    assert!(
        l.contains("have the table's owner run: CREATE PUBLICATION"),
        "{l}"
    );
}

#[test]
fn check_fails_with_the_fix_when_the_table_is_missing() {
    let pg = PgCluster::start().unwrap();
    let (ok, out) = relay(
        &["check"],
        &[
            ("RELAY_PG_URL", &pg.url()),
            ("RELAY_AMQP_URL", &amqp::amqp_url()),
        ],
    );
    assert!(!ok, "{out}");
    let l = line(&out, "FAIL  table");
    assert!(l.contains("public.outbox does not exist"), "{l}");
    assert!(l.contains("sql/outbox.sql"), "{l}");
}

#[test]
fn check_fails_with_the_fix_when_rabbitmq_is_down() {
    let pg = ready_cluster();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:secretpw@127.0.0.1:{port}/%2f");
    let (ok, out) = relay(
        &["check"],
        &[("RELAY_PG_URL", &pg.url()), ("RELAY_AMQP_URL", &url)],
    );
    assert!(!ok, "{out}");
    let l = line(&out, "FAIL  rabbitmq");
    assert!(l.contains("cannot connect"), "{l}");
    assert!(l.contains("check amqp_url"), "{l}");
    assert!(!out.contains("secretpw"), "the password leaked:\n{out}");
    line(&out, "skip  exchange");
}

#[test]
fn setup_creates_publication_and_slot_once_and_status_reports_them() {
    let pg = ready_cluster();
    let env = [("RELAY_PG_URL", pg.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (ok, out) = relay(&["setup"], &env);
    assert!(ok, "{out}");
    assert!(out.contains("created publication outbox_relay"), "{out}");
    assert!(out.contains("created slot outbox_relay"), "{out}");
    let (ok, again) = relay(&["setup"], &env);
    assert!(ok, "{again}");
    assert!(again.contains("publication outbox_relay exists"), "{again}");
    assert!(again.contains("slot outbox_relay exists"), "{again}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots")
            .unwrap(),
        "1"
    );

    // 100 rows written after the slot: status shows the lag.
    pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         SELECT 'order', g::text, 'created', '{}' FROM generate_series(1, 100) g",
    )
    .unwrap();
    let (ok, json) = relay(&["status", "--json"], &env);
    assert!(ok, "{json}");
    let start = json.find('{').expect("json output");
    let v: serde_json::Value = serde_json::from_str(&json[start..]).expect(&json);
    assert_eq!(v["slot"], "outbox_relay");
    assert_eq!(v["active"], false);
    assert!(v["lag_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["retained_wal_bytes"].as_u64().unwrap() >= v["lag_bytes"].as_u64().unwrap());
    let (ok, text) = relay(&["status"], &env);
    assert!(ok, "{text}");
    assert!(line(&text, "lag").contains("bytes"), "{text}");
}

#[test]
fn setup_print_sql_changes_nothing_and_grants_only_what_is_needed() {
    let (ok, out) = relay(&["setup", "--print-sql", "--role", "relay_ro"], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("CREATE ROLE \"relay_ro\" WITH LOGIN REPLICATION"),
        "{out}"
    );
    assert!(
        out.contains("GRANT SELECT ON \"public\".\"outbox\" TO \"relay_ro\""),
        "{out}"
    );
    assert!(out.contains("CREATE PUBLICATION \"outbox_relay\""), "{out}");
    // The printed SQL runs as is on a fresh server (but for the database
    // name), statement by statement as `psql -f` runs it.
    let pg = ready_cluster();
    let sql = out;
    for statement in sql
        .split(";\n")
        .filter(|s| s.contains(|c: char| c.is_ascii_uppercase()))
    {
        pg.psql(statement).expect("printed SQL runs");
    }
    assert_eq!(
        pg.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'relay_ro'")
            .unwrap(),
        "t"
    );
}

#[test]
fn config_shows_each_source_and_never_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "slot = \"from_file\"\nwindow_messages = 64\n").unwrap();
    let (ok, out) = relay(
        &["config", "--config", file.to_str().unwrap()],
        &[
            ("RELAY_PG_URL", "postgres://relay:hunter2@db:5432/app"),
            ("RELAY_WINDOW_MESSAGES", "128"),
        ],
    );
    assert!(ok, "{out}");
    assert!(!out.contains("hunter2"), "password printed:\n{out}");
    assert!(line(&out, "pg_url").contains("relay:***@db"), "{out}");
    assert!(
        line(&out, "pg_url").contains("(env, RELAY_PG_URL)"),
        "{out}"
    );
    assert!(line(&out, "slot ").contains("from_file"), "{out}");
    assert!(line(&out, "slot ").contains("(file,"), "{out}");
    assert!(line(&out, "window_messages").contains("128"), "{out}");
    assert!(line(&out, "table").contains("(default,"), "{out}");
}

#[test]
fn the_readme_documents_every_setting_and_ci_runs_its_test_command() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (ok, config) = relay(&["config"], &[]);
    assert!(ok, "{config}");
    for key in config
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    {
        let env = format!("RELAY_{}", key.to_uppercase());
        assert!(
            readme.contains(&format!("| `{key}` | `{env}` |")),
            "the README's settings table lacks {key} / {env}"
        );
    }
    // The first lines hold the two commands; CI runs the test command.
    let head: String = readme.lines().take(6).collect::<Vec<_>>().join("\n");
    assert!(head.contains("scripts/demo.sh"), "{head}");
    assert!(head.contains("cargo test --workspace"), "{head}");
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert_eq!(
        ci.lines().last().map(str::trim),
        Some("cargo test --workspace")
    );
}

#[test]
fn the_shipped_sql_scripts_run_as_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pg = ready_cluster();
    let setup = std::fs::read_to_string(root.join("sql/setup.sql")).unwrap();
    // Statement by statement, as psql -f runs them (a slot cannot be
    // created in a transaction that wrote).
    for statement in setup.split(";\n").filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    }) {
        pg.psql(statement).expect("sql/setup.sql runs");
    }
    assert_eq!(
        pg.psql("SELECT rolreplication FROM pg_roles WHERE rolname = 'outbox_relay'")
            .unwrap(),
        "t"
    );
    assert_eq!(
        pg.psql("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'outbox_relay'")
            .unwrap(),
        "pgoutput"
    );
    // The periodic cleanup deletes old rows only.
    pg.psql(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
         SELECT 'order', g::text, 'created', '{}', now() - interval '30 days'
         FROM generate_series(1, 25000) g;
         INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
         VALUES ('order', 'new', 'created', '{}');",
    )
    .unwrap();
    let cleanup = std::fs::read_to_string(root.join("sql/cleanup.sql")).unwrap();
    pg.psql(&cleanup).expect("sql/cleanup.sql runs");
    assert_eq!(pg.psql("SELECT count(*) FROM outbox").unwrap(), "1");
}

/// Runs a whole SQL script as `psql -f` runs it (statement by statement,
/// stopping at the first error).
fn psql_file(pg: &PgCluster, script: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sql");
    std::fs::write(&path, script).unwrap();
    let psql = pg.bindir().join("psql");
    let program = if psql.is_file() { psql } else { "psql".into() };
    let out = std::process::Command::new(program)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args([
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn setup_print_sql_prints_only_the_statements_it_means_whatever_the_names() {
    let pg = PgCluster::start().unwrap();
    // Names built to break out of their quotes.
    let schema = "we\"ird; DROP TABLE sentinel; --";
    let table = "out$$box'); DROP TABLE sentinel; --";
    let publication = "pub'; DROP TABLE sentinel; --";
    let role = "r\"; DROP ROLE postgres; --";
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    pg.psql(&format!(
        "CREATE TABLE sentinel (x int);
         CREATE SCHEMA {s};
         CREATE TABLE {s}.{t} (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text,
                               event_type text, payload jsonb, created_at timestamptz);",
        s = q(schema),
        t = q(table)
    ))
    .unwrap();
    let table_setting = format!("{}.{}", q(schema), q(table));
    let env = [
        ("RELAY_TABLE", table_setting.as_str()),
        ("RELAY_PUBLICATION", publication),
        ("RELAY_SLOT", "hostile_slot"),
    ];
    let (ok, sql) = relay(&["setup", "--print-sql", "--role", role], &env);
    assert!(ok, "{sql}");
    psql_file(&pg, &sql).unwrap_or_else(|e| panic!("the printed SQL failed: {e}\n{sql}"));
    // Exactly the objects it named, and nothing dropped.
    assert_eq!(pg.psql("SELECT count(*) FROM sentinel").unwrap(), "0");
    assert_eq!(
        pg.psql(&format!(
            "SELECT rolreplication FROM pg_roles WHERE rolname = '{}'",
            role.replace('\'', "''")
        ))
        .unwrap(),
        "t"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT count(*) FROM pg_publication_tables WHERE pubname = '{}'
               AND schemaname = '{}' AND tablename = '{}'",
            publication.replace('\'', "''"),
            schema.replace('\'', "''"),
            table.replace('\'', "''")
        ))
        .unwrap(),
        "1"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'hostile_slot'")
            .unwrap(),
        "1"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'")
            .unwrap(),
        "1"
    );
    // A name with a control character is refused before any SQL is printed.
    for (var, value) in [
        ("RELAY_PUBLICATION", "pub\nDROP TABLE sentinel;"),
        ("RELAY_TABLE", "\"a\nb\".outbox"),
    ] {
        let (ok, out) = relay(&["setup", "--print-sql"], &[(var, value)]);
        assert!(!ok, "{out}");
        assert!(out.contains("control character"), "{out}");
        assert!(!out.contains("CREATE"), "{out}");
    }
    let (ok, out) = relay(&["setup", "--print-sql", "--role", "r\nx"], &[]);
    assert!(!ok && out.contains("control character"), "{out}");
}

#[test]
fn check_warns_while_any_role_may_emit_events_and_print_sql_offers_the_revoke() {
    let pg = ready_cluster();
    let amqp = amqp::amqp_url();
    let env = [
        ("RELAY_PG_URL", pg.url()),
        ("RELAY_AMQP_URL", amqp),
        ("RELAY_MESSAGE_PREFIX", "outbox".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = relay(&["check"], &env);
    assert!(ok, "{out}");
    let l = line(&out, "warn  emit_message");
    assert!(
        l.contains("any role may call pg_logical_emit_message"),
        "{l}"
    );
    let (ok, sql) = relay(&["setup", "--print-sql"], &env);
    assert!(ok, "{sql}");
    let revokes: Vec<&str> = sql
        .lines()
        .filter_map(|l| l.strip_prefix("-- "))
        .filter(|l| l.starts_with("DO $$") && l.contains("REVOKE EXECUTE"))
        .collect();
    assert_eq!(revokes.len(), 1, "{sql}");
    for statement in revokes {
        pg.psql(statement).unwrap();
    }
    let (ok, out) = relay(&["check"], &env);
    assert!(ok, "{out}");
    line(&out, "ok    emit_message");
}

#[test]
fn setup_and_check_give_the_same_fix_when_the_role_may_not_connect_or_replicate() {
    let pg = ready_cluster();
    pg.psql(
        "CREATE ROLE weak LOGIN; CREATE ROLE locked_out LOGIN REPLICATION;
         REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
         GRANT CONNECT ON DATABASE postgres TO weak",
    )
    .unwrap();
    let fix = |out: &str| -> String {
        out.lines()
            .find_map(|l| l.split_once("fix: ").map(|(_, f)| f.to_string()))
            .unwrap_or_else(|| panic!("no fix in:\n{out}"))
    };
    // No CONNECT on the database: the same fix from check and setup.
    let url = pg.url_for("locked_out", None, "postgres");
    let env = [("RELAY_PG_URL", url.as_str())];
    let (ok, check) = relay(&["check"], &env);
    assert!(!ok);
    let (ok, setup) = relay(&["setup"], &env);
    assert!(!ok);
    assert!(
        fix(&check).contains("GRANT CONNECT ON DATABASE \"postgres\" TO \"locked_out\""),
        "{check}"
    );
    assert_eq!(fix(&check), fix(&setup), "check:\n{check}\nsetup:\n{setup}");
    assert!(!setup.contains("db error: db error"), "{setup}");
    // Connected, but no REPLICATION: setup refuses with check's line.
    let url = pg.url_for("weak", None, "postgres");
    let env = [("RELAY_PG_URL", url.as_str())];
    let (ok, setup) = relay(&["setup"], &env);
    assert!(!ok);
    assert!(
        setup.contains("FAIL  role") && setup.contains("ALTER ROLE \"weak\" WITH REPLICATION"),
        "{setup}"
    );
}
