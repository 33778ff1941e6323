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
    let mut hard: Option<Error> = None;
    let mut wrong_kind = false;
    for pass in passes {
        for index in 0..count {
            let one = config.for_target(index);
            let target = one.target();
            let mut session = match S::open(&one).await {
                Ok(session) => session,
                Err(e) => {
                    tracing::debug!(%target, error = %e, "server passed over");
                    passed_over.push(format!("{target}: {e}"));
                    if !e.is_retryable() && hard.is_none() {
                        hard = Some(e);
                    }
                    continue;
                }
            };
            if *pass == TargetSessionAttrs::Any {
                return Ok((session, one));
            }
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
                    wrong_kind = true;
                    passed_over.push(format!("{target} is {what}"));
                }
                Err(e) => {
                    passed_over.push(format!("{target}: {e}"));
                }
            }
            session.discard().await;
        }
    }
    // A server that refused us for good (a wrong password, a refused
    // certificate) says more than "nothing suitable", unless another one
    // was merely of the wrong kind.
    match hard {
        Some(e) if !wrong_kind => Err(e),
        _ => Err(Error::NoSuitableServer {
            attrs: attrs.to_string(),
            tried: passed_over.join("; "),
        }),
    }
}
