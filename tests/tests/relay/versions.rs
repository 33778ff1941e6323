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

/// The relay stops (SIGTERM: everything confirmed is acknowledged), then
/// PostgreSQL shuts down cleanly and starts again, and a new relay resumes
/// from the slot as the server kept it. Nothing is lost; the duplicates
/// are what the server forgot of the acknowledged position (PostgreSQL 17
/// writes a logical slot's confirmed_flush at a clean shutdown; 16 and
/// earlier only when something else made the slot dirty). Three rounds
/// under load; prints the figure the README quotes.
async fn clean_restart_duplicates(major: u32) {
    use super::fixture::{collect_all, committed_count, verify, Load};
    use nix::sys::signal::Signal;
    use std::time::Duration;

    let mut f = Fixture::on_version(major).await;
    let mut consumer = f.consumer().await;
    let mut relay = f.start_relay(&[]);
    let load = Load::start(&f.pg.url(), 2, 10, Duration::from_millis(5), u64::MAX);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.signal(Signal::SIGTERM).unwrap();
        let status = relay.wait(Duration::from_secs(20)).unwrap();
        assert!(status.success(), "{}", relay.output());
        f.pg.restart().unwrap();
        relay = f.start_relay(&[]);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = load.stop().await;
    let got = collect_all(&mut consumer, &written, Duration::from_secs(120)).await;
    let verdict = verify(&got, &written);
    println!(
        "clean restarts on PostgreSQL {major}: {} duplicates over 3 restarts ({verdict:?} of {} \
         committed)",
        verdict.duplicates,
        committed_count(&written)
    );
    relay.kill().unwrap();
}

#[tokio::test]
async fn postgres_15_clean_restarts_lose_nothing_and_count_their_duplicates() {
    clean_restart_duplicates(15).await;
}

#[tokio::test]
async fn postgres_17_clean_restarts_lose_nothing_and_count_their_duplicates() {
    clean_restart_duplicates(17).await;
}
