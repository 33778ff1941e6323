//! Several servers in one connection string (`host=a,b port=5432,5433`,
//! `postgres://a:5432,b:5433/db`): each is tried in turn and the first that
//! answers and suits `target_session_attrs` is used, as libpq does. This is
//! how a client follows a failover: after the primary dies, the next
//! connection finds the promoted standby, and passes over servers still in
//! recovery when it asks for `primary` or `read-write`.
//!
//! A connection string with one server and `any` connects exactly as
//! before: no extra query, the server's own error.

use std::future::Future;

use crate::config::{ReplicationConfig, TargetSessionAttrs};
use crate::error::Error;

/// What decides whether a server suits `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// `pg_is_in_recovery()`: a standby.
    pub in_recovery: bool,
    /// `transaction_read_only` of a new session.
    pub read_only: bool,
}

/// The query both kinds of connection answer it with (the replication
/// connection in the simple query protocol).
pub(crate) const STATE_QUERY: &str =
    "SELECT pg_catalog.pg_is_in_recovery()::text, pg_catalog.current_setting('transaction_read_only')";

/// Reads the answer to [`STATE_QUERY`].
pub(crate) fn parse_state(in_recovery: Option<&str>, read_only: Option<&str>) -> ServerState {
    let on = |v: Option<&str>| matches!(v, Some("true" | "on" | "t"));
    ServerState {
        in_recovery: on(in_recovery),
        read_only: on(read_only),
    }
}

/// A connection of one kind, opened to one server.
pub(crate) trait Session: Sized {
    /// Opens it to the single server of `config`.
    fn open(config: &ReplicationConfig) -> impl Future<Output = Result<Self, Error>> + Send;
    /// Reads the server's state.
    fn state(&mut self) -> impl Future<Output = Result<ServerState, Error>> + Send;
    /// Closes a connection to a server that was passed over.
    fn discard(self) -> impl Future<Output = ()> + Send;
}

/// Opens a connection to the first suitable server; returns it with the
/// settings of that server alone (for a second connection to the same one).
///
/// When none suits: the error of a server that refused for good (a
/// password, pg_hba.conf, a certificate) if every server did, since no
/// retry helps; otherwise [`Error::NoSuitableServer`], retryable, naming
/// each server and why it was passed over (a primary restarting or a
/// standby being promoted answers later).
pub(crate) async fn open_suitable<S: Session + Send>(
    config: &ReplicationConfig,
) -> Result<(S, ReplicationConfig), Error> {
    let attrs = config.target_session_attrs();
    let count = config.targets().len();
    if count == 1 && attrs == TargetSessionAttrs::Any {
        return S::open(config).await.map(|s| (s, config.clone()));
    }
    let passes: &[TargetSessionAttrs] = if attrs == TargetSessionAttrs::PreferStandby {
        &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
    } else {
        std::slice::from_ref(&attrs)
    };
    let mut passed_over: Vec<String> = Vec::new();
    let mut refusal: Option<Error> = None;
    let mut all_refused = true;
    for pass in passes {
        for index in 0..count {
            let one = config.for_target(index);
            let target = one.target();
            let mut session = match S::open(&one).await {
                Ok(session) => session,
                Err(e) => {
                    if e.is_retryable() {
                        tracing::debug!(%target, error = %e, "server passed over");
                        all_refused = false;
                    } else {
                        // Worth seeing even when another server answers.
                        tracing::warn!(%target, error = %e, "server refused the connection; passed over");
                    }
                    passed_over.push(format!("{target}: {e}"));
                    if !e.is_retryable() && refusal.is_none() {
                        refusal = Some(e);
                    }
                    continue;
                }
            };
            if *pass == TargetSessionAttrs::Any {
                return Ok((session, one));
            }
            all_refused = false;
            match session.state().await {
                Ok(state) if pass.accepts(state.in_recovery, state.read_only) => {
                    return Ok((session, one));
                }
                Ok(state) => {
                    let what = match (state.in_recovery, state.read_only) {
                        (true, _) => "a standby (in recovery)",
                        (false, true) => "a read-only primary",
                        (false, false) => "a primary",
                    };
                    tracing::debug!(%target, what, "server passed over");
                    passed_over.push(format!("{target} is {what}"));
                }
                Err(e) => passed_over.push(format!("{target}: {e}")),
            }
            session.discard().await;
        }
    }
    match refusal {
        Some(e) if all_refused => Err(e),
        _ => Err(Error::NoSuitableServer {
            attrs: attrs.to_string(),
            tried: passed_over.join("; "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// How each fake server answers, by port.
    static SERVERS: Mutex<Vec<(u16, Answer)>> = Mutex::new(Vec::new());

    #[derive(Debug, Clone, Copy)]
    enum Answer {
        Down,
        WrongPassword,
        Primary,
        Standby,
    }

    #[derive(Debug)]
    struct Fake(Answer);

    impl Session for Fake {
        async fn open(config: &ReplicationConfig) -> Result<Fake, Error> {
            let port = config.port();
            let answer = SERVERS
                .lock()
                .map(|s| s.iter().find(|(p, _)| *p == port).map(|(_, a)| *a))
                .ok()
                .flatten()
                .unwrap_or(Answer::Down);
            match answer {
                Answer::Down => Err(Error::Connect {
                    target: config.target(),
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                }),
                Answer::WrongPassword => Err(Error::Auth {
                    user: "u".into(),
                    reason: "password authentication failed".into(),
                }),
                other => Ok(Fake(other)),
            }
        }

        async fn state(&mut self) -> Result<ServerState, Error> {
            let standby = matches!(self.0, Answer::Standby);
            Ok(ServerState {
                in_recovery: standby,
                read_only: standby,
            })
        }

        async fn discard(self) {}
    }

    fn pick(servers: &[(u16, Answer)], attrs: &str) -> Result<u16, Error> {
        *SERVERS.lock().unwrap() = servers.to_vec();
        let ports: Vec<String> = servers.iter().map(|(p, _)| p.to_string()).collect();
        let hosts = vec!["h"; servers.len()].join(",");
        let config = ReplicationConfig::parse_with_env(
            &format!(
                "host={hosts} port={} user=u target_session_attrs={attrs}",
                ports.join(",")
            ),
            |_| None,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(open_suitable::<Fake>(&config))
            .map(|(_, one)| one.port())
    }

    #[test]
    fn servers_are_judged_in_turn_and_only_a_refusal_everywhere_is_final() {
        use Answer::*;
        // The tests share the fake servers: one test, in order.
        assert_eq!(
            pick(&[(1, Down), (2, Standby), (3, Primary)], "primary").unwrap(),
            3
        );
        assert_eq!(pick(&[(1, Primary), (2, Standby)], "standby").unwrap(), 2);
        assert_eq!(
            pick(&[(1, Primary), (2, Standby)], "prefer-standby").unwrap(),
            2
        );
        assert_eq!(pick(&[(1, Primary)], "prefer-standby").unwrap(), 1);
        assert_eq!(pick(&[(1, Standby), (2, Primary)], "any").unwrap(), 1);
        // A refusal on one server while another is down or a standby: the
        // primary may be back soon, so retryable.
        for other in [Down, Standby] {
            let e = pick(&[(1, WrongPassword), (2, other)], "primary").unwrap_err();
            assert!(matches!(e, Error::NoSuitableServer { .. }), "{e}");
            assert!(e.is_retryable());
            assert!(
                e.to_string().contains("password authentication failed"),
                "{e}"
            );
        }
        // Refused by every server: final, with the server's words.
        let e = pick(&[(1, WrongPassword), (2, WrongPassword)], "primary").unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e}");
        assert!(!e.is_retryable());
        // Nothing but standbys when the primary is asked for.
        let e = pick(&[(1, Standby), (2, Down)], "read-write").unwrap_err();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("h:1 is a standby"), "{e}");
    }
}
