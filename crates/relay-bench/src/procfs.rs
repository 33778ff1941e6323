//! What a process cost, read from /proc: CPU time (utime + stime of
//! /proc/<pid>/stat, in clock ticks) and peak resident memory (VmHWM of
//! /proc/<pid>/status). Read while the process is alive: a reaped process
//! has no /proc entry.

use anyhow::{anyhow, Context as _};

/// CPU time and peak memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Usage {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    /// VmHWM: the peak resident set, in KiB.
    pub peak_rss_kib: u64,
}

impl Usage {
    /// Peak RSS in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        crate::stats::count_f64(self.peak_rss_kib) / 1024.0
    }
}

/// Reads the usage of `pid`.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the process exited?)"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat: {stat}"))?;
    let peak_rss_kib =
        vm_hwm_kib(&status).ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))?;
    Ok(Usage {
        cpu_secs: crate::stats::count_f64(ticks) / clock_ticks_per_sec(),
        peak_rss_kib,
    })
}

/// CPU seconds (utime + stime) of thread `tid` of this process.
pub fn thread_cpu_secs(tid: i32) -> anyhow::Result<f64> {
    let path = format!("/proc/self/task/{tid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| anyhow!("cannot parse {path}: {stat}"))?;
    Ok(crate::stats::count_f64(ticks) / clock_ticks_per_sec())
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line. The
/// command name (field 2) is in parentheses and may hold spaces or
/// parentheses itself: fields are counted after the last ')'.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// VmHWM in KiB from /proc/<pid>/status.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_sec() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) => u32::try_from(t).map(f64::from).unwrap_or(100.0),
        // USER_HZ is 100 on every Linux architecture we run on.
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_after_the_command_name() {
        let stat = "4242 (outbox) relay)) S 1 4242 4242 0 -1 4194560 1510 0 0 0 \
                    250 75 0 0 20 0 6 0 123 456 789";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\trelay\nVmPeak:\t  99999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(12_345));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_its_own_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.peak_rss_kib > 0);
        assert!(u.cpu_secs >= 0.0);
    }
}
