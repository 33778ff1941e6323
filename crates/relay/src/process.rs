//! The relay's own process figures, read from /proc at each scrape and
//! exported under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), so that standard dashboards and alerts
//! find them.
//!
//! Parsing is pure ([`ProcessStats::parse`]); [`ProcessCollector`] reads
//! the files. On a system without /proc the collector exports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in /proc (USER_HZ: 100 in Linux's user ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors, if one is set.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the UNIX epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Parses /proc/self/stat, /proc/self/status, /proc/self/limits, the
    /// count of /proc/self/fd and /proc/stat.
    pub fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        open_fds: u64,
        system_stat: &str,
    ) -> Option<ProcessStats> {
        // The command may hold spaces and parentheses: fields start after
        // the last ')'. Counted from there: state is 0, utime 11, stime 12,
        // starttime 19, vsize 20.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
        let ticks = field(11)?.checked_add(field(12)?)?;
        let boot: u64 = system_stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())?;
        let resident_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok());
        Some(ProcessStats {
            cpu_seconds: count(ticks) / TICKS_PER_SEC,
            resident_bytes: resident_kib.saturating_mul(1024),
            virtual_bytes: field(20)?,
            open_fds,
            max_fds,
            start_time_seconds: count(boot) + count(field(19)?) / TICKS_PER_SEC,
        })
    }

    /// Reads the running process.
    pub fn read() -> Option<ProcessStats> {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        ProcessStats::parse(
            &read("/proc/self/stat")?,
            &read("/proc/self/status")?,
            &read("/proc/self/limits").unwrap_or_default(),
            u64::try_from(open_fds).unwrap_or(u64::MAX),
            &read("/proc/stat")?,
        )
    }
}

/// A count as a float (exact below 2^53, far beyond any figure here).
fn count(n: u64) -> f64 {
    let high = u32::try_from(n >> 32).unwrap_or(u32::MAX);
    let low = u32::try_from(n & 0xffff_ffff).unwrap_or(u32::MAX);
    f64::from(high) * 4_294_967_296.0 + f64::from(low)
}

/// Exports [`ProcessStats`] at each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(count(p.resident_bytes)),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(count(p.virtual_bytes)),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                Some(count(p.open_fds)),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds.map(count),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                Some(p.start_time_seconds),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_files_of_a_process_whose_name_has_spaces_and_parens() {
        let stat = "4242 (outbox (re) lay) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 50 0 0 20 0 9 0 123456 987654321 2000 18446744073709551615";
        let status = "Name:\touthbox\nVmPeak:\t  100 kB\nVmRSS:\t   25600 kB\nThreads:\t9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let system = "cpu  1 2 3\nbtime 1764500000\nprocesses 5\n";
        let p = ProcessStats::parse(stat, status, limits, 17, system).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 25600 * 1024);
        assert_eq!(p.virtual_bytes, 987_654_321);
        assert_eq!(p.open_fds, 17);
        assert_eq!(p.max_fds, Some(1024));
        assert_eq!(p.start_time_seconds, 1_764_500_000.0 + 1234.56);
    }

    #[test]
    fn an_unlimited_fd_limit_is_no_limit_and_garbage_is_none() {
        let stat = "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 100 4096 1";
        let limits = "Max open files            unlimited            unlimited            files\n";
        let p = ProcessStats::parse(stat, "", limits, 3, "btime 10\n").unwrap();
        assert_eq!(p.max_fds, None);
        assert_eq!(p.resident_bytes, 0);
        assert!(ProcessStats::parse("garbage", "", "", 0, "btime 10\n").is_none());
        assert!(ProcessStats::parse(stat, "", "", 0, "").is_none());
    }

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().expect("/proc on Linux");
        assert!(p.resident_bytes > 0);
        assert!(p.open_fds > 0);
        assert!(p.start_time_seconds > 1_600_000_000.0);
    }
}
