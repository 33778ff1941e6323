//! Every real-server test again on PostgreSQL 14, 16, 17 and 18 (the
//! default run is on Debian's 15), and what only 16 and later produce:
//! protocol version 4's Stream Abort with the abort's LSN and time
//! (`streaming = parallel`). PostgreSQL 14's pgoutput has no two-phase
//! decoding (protocol 3 came with 15), so its set leaves those two out.

use std::time::SystemTime;

use pgoutput::LogicalMessage;

use super::streaming::{big_table, ROWS};
use super::{assert_between, changes, columns, messages, relations, streaming, two_phase, Server};

/// A subtransaction that streams and is rolled back inside a transaction
/// that commits, read with protocol 4 and `streaming = parallel`: its
/// Stream Abort carries the abort's LSN (inside the WAL the slot read) and
/// time (while the test ran). (A whole transaction rolled back is not
/// streamed at all by 18 when it is read after the fact.)
async fn protocol_4_stream_abort_carries_the_abort_lsn_and_time(version: u32) {
    let s = Server::start_on(Some(version)).await;
    big_table(&s).await;
    let (slot, publication) = s.slot(false).await;
    let before = SystemTime::now();
    s.exec(&format!(
        "BEGIN; \
         INSERT INTO big VALUES (0, 'before'); \
         SAVEPOINT s; \
         INSERT INTO big SELECT g, repeat('r', 100) FROM generate_series(1, {ROWS}) g; \
         ROLLBACK TO SAVEPOINT s; \
         COMMIT"
    ))
    .await;
    let after = SystemTime::now();
    let changes = s
        .peek(&slot, &publication, 4, &[("streaming", "parallel")])
        .await;
    let aborts: Vec<pgoutput::StreamAbort> = changes
        .iter()
        .filter_map(|c| match c.msg {
            LogicalMessage::StreamAbort(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(aborts.len(), 1, "{}", super::summary(&changes));
    let abort = aborts[0];
    assert_ne!(abort.subxid, abort.xid);
    let info = abort
        .abort
        .expect("protocol 4 with parallel streaming sends the abort LSN");
    let first = changes.first().expect("changes").lsn;
    let last = changes.last().expect("changes").lsn;
    assert!(
        info.lsn >= first && info.lsn <= last,
        "abort LSN {} outside {first}..{last}",
        info.lsn
    );
    assert_between(info.ts, before, after);
}

macro_rules! on_version {
    ($module:ident, $major:literal, two_phase: $two_phase:tt, proto4: $proto4:tt) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged() {
                changes::an_update_that_leaves_a_toasted_value_alone_reports_it_unchanged_on(Some($major)).await;
            }

            #[tokio::test]
            async fn replica_identity_full_sends_the_whole_old_row() {
                changes::replica_identity_full_sends_the_whole_old_row_on(Some($major)).await;
            }

            #[tokio::test]
            async fn changing_a_key_sends_the_old_key_under_default_and_index_identity() {
                changes::changing_a_key_sends_the_old_key_under_default_and_index_identity_on(Some($major)).await;
            }

            #[tokio::test]
            async fn truncate_names_its_tables_and_options() {
                changes::truncate_names_its_tables_and_options_on(Some($major)).await;
            }

            #[tokio::test]
            async fn every_common_column_type_decodes_in_text_and_binary_for_every_protocol() {
                columns::every_common_column_type_decodes_in_text_and_binary_for_protocols_1_to_3_on(Some($major)).await;
            }

            #[tokio::test]
            async fn logical_decoding_messages_keep_their_flag_lsn_prefix_and_content() {
                messages::logical_decoding_messages_keep_their_flag_lsn_prefix_and_content_on(Some($major)).await;
            }

            #[tokio::test]
            async fn a_transaction_replayed_from_an_origin_carries_an_origin_message() {
                messages::a_transaction_replayed_from_an_origin_carries_an_origin_message_on(Some($major)).await;
            }

            #[tokio::test]
            async fn columns_of_non_built_in_types_are_described_by_type_messages() {
                messages::columns_of_non_built_in_types_are_described_by_type_messages_on(Some($major)).await;
            }

            #[tokio::test]
            async fn the_relation_cache_follows_alter_table_between_inserts() {
                relations::the_relation_cache_follows_alter_table_between_inserts_on(Some($major)).await;
            }

            #[tokio::test]
            async fn a_large_transaction_streams_in_blocks_and_ends_with_stream_commit() {
                streaming::a_large_transaction_streams_in_blocks_and_ends_with_stream_commit_on(Some($major)).await;
            }

            #[tokio::test]
            async fn rolled_back_streamed_work_ends_with_stream_abort() {
                streaming::rolled_back_streamed_work_ends_with_stream_abort_on(Some($major)).await;
            }

            on_version!(@two_phase $two_phase, $major);
            on_version!(@proto4 $proto4, $major);
        }
    };
    (@two_phase true, $major:literal) => {
        #[tokio::test]
        async fn prepared_transactions_decode_with_their_gid_and_outcome() {
            two_phase::prepared_transactions_decode_with_their_gid_and_outcome_on(Some($major)).await;
        }

        #[tokio::test]
        async fn a_large_prepared_transaction_streams_and_ends_with_stream_prepare() {
            two_phase::a_large_prepared_transaction_streams_and_ends_with_stream_prepare_on(Some($major)).await;
        }
    };
    (@two_phase false, $major:literal) => {};
    (@proto4 true, $major:literal) => {
        #[tokio::test]
        async fn protocol_4_stream_abort_carries_the_abort_lsn_and_time() {
            super::protocol_4_stream_abort_carries_the_abort_lsn_and_time($major).await;
        }
    };
    (@proto4 false, $major:literal) => {};
}

on_version!(pg14, 14, two_phase: false, proto4: false);
on_version!(pg16, 16, two_phase: true, proto4: true);
on_version!(pg17, 17, two_phase: true, proto4: true);
on_version!(pg18, 18, two_phase: true, proto4: true);
