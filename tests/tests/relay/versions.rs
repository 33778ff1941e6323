//! The relay's core guarantees on every supported PostgreSQL version
//! besides the default one (which runs the whole suite): no loss under
//! SIGKILL, idle WAL acknowledged, takeover of a slot at its position, and
//! the SIGTERM drain. The servers come from scripts/install-postgres.sh (or
//! Debian); see the test kit's `pg` module.

use super::fixture::Fixture;
use super::guarantees::{idle_wal_acked, sigkill_under_load, sigterm_drain, takeover_at_position};

macro_rules! on_version {
    ($module:ident, $major:literal) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn repeated_sigkill_under_load_loses_nothing() {
                sigkill_under_load(Fixture::on_version($major).await).await;
            }

            #[tokio::test]
            async fn idle_outbox_does_not_pin_wal() {
                idle_wal_acked(Fixture::on_version($major).await).await;
            }

            #[tokio::test]
            async fn takeover_of_a_slot_created_elsewhere_starts_exactly_at_its_position() {
                takeover_at_position(Fixture::on_version($major).await).await;
            }

            #[tokio::test]
            async fn sigterm_drains_exits_zero_and_loses_nothing() {
                sigterm_drain(Fixture::on_version($major).await).await;
            }
        }
    };
}

on_version!(pg14, 14);
on_version!(pg16, 16);
on_version!(pg17, 17);
on_version!(pg18, 18);
