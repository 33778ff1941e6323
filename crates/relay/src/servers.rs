//! Every server of a multi-host `pg_url` (`postgres://a:5432,b:5432/db`),
//! seen one by one: its version, whether it is the primary or a standby,
//! and its copy of the slot. `check` judges each (a standby without a
//! synced copy of the slot loses it at a failover) and `status` shows them.
//! Reading only; the relay itself streams from whichever is the primary.

use walstream::TargetSessionAttrs;

use crate::catalog::{self, SlotInfo};
use crate::config::Config;
use crate::pg;

/// One server as its own session saw it.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// `host:port`.
    pub target: String,
    /// What it answered, or why it could not be asked.
    pub seen: Result<Seen, String>,
}

/// What a reachable server said.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `server_version_num`.
    pub version_num: i32,
    /// A standby.
    pub in_recovery: bool,
    /// Its row for the relay's slot (on a standby: the synced copy).
    pub slot: Option<SlotInfo>,
}

impl Seen {
    /// The standby's copy of the slot is one a promoted standby can
    /// stream from: synced, not temporary, not invalidated.
    pub fn slot_ready(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| {
            s.synced == Some(true) && !s.temporary && s.invalidation_reason.is_none()
        })
    }
}

/// Looks at each server of `pg_url` (none when it names one server).
pub async fn look(config: &Config) -> Vec<ServerView> {
    let Some(pg) = config.pg.as_ref() else {
        return Vec::new();
    };
    if pg.targets().len() < 2 {
        return Vec::new();
    }
    let mut views = Vec::new();
    for index in 0..pg.targets().len() {
        let mut one = pg.for_target(index);
        one.set_target_session_attrs(TargetSessionAttrs::Any);
        let target = pg
            .targets()
            .get(index)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let seen = match pg::connect_control(&one, "outbox-relay check").await {
            Err(e) => Err(e.to_string()),
            Ok(client) => see(&client, &config.slot).await,
        };
        views.push(ServerView { target, seen });
    }
    views
}

async fn see(client: &tokio_postgres::Client, slot: &str) -> Result<Seen, String> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, pg_is_in_recovery()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let slot = catalog::slot_info(client, slot)
        .await
        .map_err(|e| e.server_message())?;
    Ok(Seen {
        version_num: row.get(0),
        in_recovery: row.get(1),
        slot,
    })
}
