//! The connect, authentication and streaming tests again on PostgreSQL 14,
//! 16, 17 and 18 (the rest of the suite runs on the default version,
//! Debian's 15). The servers come from scripts/install-postgres.sh or
//! Debian; see the test kit's `pg` module.

use super::{auth, slots, streaming};

macro_rules! on_version {
    ($module:ident, $major:literal) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn trust_authentication_connects() {
                auth::trust_authentication_connects_on(Some($major)).await;
            }

            #[tokio::test]
            async fn md5_authentication_connects() {
                auth::md5_authentication_connects_on(Some($major)).await;
            }

            #[tokio::test]
            async fn scram_sha_256_authentication_connects_and_streams() {
                auth::scram_sha_256_authentication_connects_and_streams_on(Some($major)).await;
            }

            #[tokio::test]
            async fn a_wrong_password_is_not_retryable_and_never_shown() {
                auth::a_wrong_password_is_not_retryable_and_never_shown_on(Some($major)).await;
            }

            #[tokio::test]
            async fn unix_socket_connections_work() {
                auth::unix_socket_connections_work_on(Some($major)).await;
            }

            #[tokio::test]
            async fn committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives() {
                streaming::committed_transactions_arrive_as_xlogdata_and_idle_time_as_keepalives_on(Some($major)).await;
            }

            #[tokio::test]
            async fn acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back() {
                streaming::acked_lsn_becomes_the_slots_confirmed_flush_lsn_and_never_goes_back_on(Some($major)).await;
            }

            #[tokio::test]
            async fn resume_after_reconnect_starts_exactly_after_the_last_acked_transaction() {
                streaming::resume_after_reconnect_starts_exactly_after_the_last_acked_transaction_on(Some($major)).await;
            }

            #[tokio::test]
            async fn an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream() {
                streaming::an_idle_consumer_acking_keepalives_releases_wal_it_does_not_stream_on(Some($major)).await;
            }

            #[tokio::test]
            async fn shutdown_sends_the_last_ack_and_frees_the_slot() {
                streaming::shutdown_sends_the_last_ack_and_frees_the_slot_on(Some($major)).await;
            }

            #[tokio::test]
            async fn an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap() {
                slots::an_exported_snapshot_and_the_stream_meet_without_gap_or_overlap_on(Some($major)).await;
            }

            #[tokio::test]
            async fn start_refuses_missing_foreign_and_busy_slots() {
                slots::start_refuses_missing_foreign_and_busy_slots_on(Some($major)).await;
            }
        }
    };
}

on_version!(pg14, 14);
on_version!(pg16, 16);
on_version!(pg17, 17);
on_version!(pg18, 18);
