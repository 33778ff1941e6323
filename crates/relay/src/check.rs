//! `outbox-relay check`: the preflight. It reads every fact `run` depends
//! on (PostgreSQL's catalog, the broker) without changing anything, has
//! `crate::prereq` judge them, and prints one line each: pass, warn, or
//! fail with the fix. `run` judges the same facts the same way before it
//! starts.

use crate::config::Config;
use crate::prereq::{self, Line, POSTGRES_LINES};
use crate::{pg, probe, servers, sink};

/// Every line of the preflight.
pub async fn preflight(config: &Config) -> Vec<Line> {
    let mut lines = postgres_lines(config).await;
    lines.extend(broker_lines(config).await);
    lines
}

/// PostgreSQL's lines: the connection, then the judged catalog.
pub async fn postgres_lines(config: &Config) -> Vec<Line> {
    let skip_rest = |mut lines: Vec<Line>, why: &str| {
        lines.extend(POSTGRES_LINES.iter().map(|n| Line::skipped(n, why)));
        lines
    };
    let pg = match config.pg() {
        Ok(pg) => pg,
        Err(e) => {
            let line = Line::fail("postgres", e.to_string(), "set pg_url");
            return skip_rest(vec![line], "pg_url is not set");
        }
    };
    let client = match pg::connect_control(pg, "outbox-relay check").await {
        Ok(client) => client,
        Err(e) => {
            let (problem, fix) = prereq::connection_failure(config, &e);
            let line = Line::fail("postgres", problem, fix);
            return skip_rest(
                vec![line],
                "no session with postgres (see the postgres line)",
            );
        }
    };
    let facts = match probe::postgres(&client, config).await {
        Ok(facts) => facts,
        Err(e) => {
            let line = Line::fail(
                "postgres",
                format!("reading the catalog: {}", e.server_message()),
                "see the error",
            );
            return skip_rest(vec![line], "the catalog could not be read");
        }
    };
    let mut lines = vec![
        Line::pass(
            "postgres",
            format!(
                "connected to database {} as {} (PostgreSQL {})",
                facts.database,
                facts.role.name,
                prereq::version_text(facts.server.version_num)
            ),
        ),
        prereq::judge_tls(config),
    ];
    lines.extend(prereq::judge_postgres(config, &facts));
    lines.extend(
        servers::look(config)
            .await
            .iter()
            .map(|view| prereq::judge_server_view(config, view)),
    );
    lines
}

/// The broker's lines.
pub async fn broker_lines(config: &Config) -> Vec<Line> {
    let sink_config = match sink::amqp::sink_config(config) {
        Ok(c) => c,
        Err(problem) => {
            return vec![
                Line::fail("rabbitmq", problem, "fix amqp_url / amqp_ca_file"),
                Line::skipped("exchange", "rabbitmq is not configured"),
                Line::skipped("dead_letter", "rabbitmq is not configured"),
            ]
        }
    };
    let facts = probe::broker(config, &sink_config).await;
    prereq::judge_broker(config, &facts)
}
