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

/// What a piece of work cost: CPU and context switches.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Cost {
    /// User + system CPU, seconds.
    pub cpu_secs: f64,
    /// Voluntary context switches (the thread waited: I/O, a lock, a
    /// wake-up from another thread).
    pub voluntary: u64,
    /// Involuntary ones (preempted).
    pub involuntary: u64,
}

impl Cost {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Cost) -> Cost {
        Cost {
            cpu_secs: (self.cpu_secs - earlier.cpu_secs).max(0.0),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    /// Context switches of both kinds per event.
    pub fn switches_per_event(&self, events: u64) -> f64 {
        crate::stats::count_f64(self.voluntary + self.involuntary)
            / crate::stats::count_f64(events.max(1))
    }
}

/// getrusage of this process (`children`: of its waited children).
pub fn rusage(children: bool) -> anyhow::Result<Cost> {
    use nix::sys::resource::{getrusage, UsageWho};
    let who = if children {
        UsageWho::RUSAGE_CHILDREN
    } else {
        UsageWho::RUSAGE_SELF
    };
    let u = getrusage(who).context("getrusage")?;
    let secs = |t: nix::sys::time::TimeVal| {
        crate::stats::count_f64(u64::try_from(t.tv_sec()).unwrap_or(0))
            + crate::stats::count_f64(u64::try_from(t.tv_usec()).unwrap_or(0)) / 1e6
    };
    Ok(Cost {
        cpu_secs: secs(u.user_time()) + secs(u.system_time()),
        voluntary: u64::try_from(u.voluntary_context_switches()).unwrap_or(0),
        involuntary: u64::try_from(u.involuntary_context_switches()).unwrap_or(0),
    })
}

/// Context switches of every thread of `pid` (voluntary, involuntary),
/// summed over /proc/<pid>/task/*/status (/proc/<pid>/status counts the
/// main thread only).
pub fn switches(pid: u32) -> anyhow::Result<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of {pid}"))?
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("voluntary_ctxt_switches:");
        total.1 += field("nonvoluntary_ctxt_switches:");
    }
    Ok(total)
}

/// CPU seconds of every process of a PostgreSQL cluster (the postmaster
/// and its children: backends, walsenders, background workers), by pid.
pub fn cluster_cpu(
    data_dir: &std::path::Path,
) -> anyhow::Result<std::collections::HashMap<u32, f64>> {
    let pidfile = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?;
    let postmaster: u32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow!("no pid in {}", pidfile.display()))?;
    let tck = clock_ticks_per_sec();
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if pid == postmaster || parent(&stat) == Some(postmaster) {
            if let Some(ticks) = cpu_ticks(&stat) {
                out.insert(pid, crate::stats::count_f64(ticks) / tck);
            }
        }
    }
    Ok(out)
}

/// CPU seconds the cluster spent between two [`cluster_cpu`] snapshots
/// (processes that ended in between are not counted).
pub fn cluster_cpu_since(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// CPU seconds of each local RabbitMQ VM (every live `beam.smp` process,
/// by PID), or None if there is none on this machine. Compare two with
/// [`cluster_cpu_since`]: per PID, so that a VM that ended in between (the
/// bench's private cluster, say) cannot make the figure negative.
pub fn broker_cpu() -> Option<std::collections::HashMap<u32, f64>> {
    let tck = clock_ticks_per_sec();
    let mut total: Option<std::collections::HashMap<u32, f64>> = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if stat.contains("(beam.smp)") && !zombie {
            if let (Some(ticks), Ok(pid)) = (cpu_ticks(&stat), pid.parse::<u32>()) {
                total
                    .get_or_insert_with(Default::default)
                    .insert(pid, crate::stats::count_f64(ticks) / tck);
            }
        }
    }
    total
}

/// Busy and total CPU ticks of the whole machine, all cores (the first
/// line of /proc/stat; idle and iowait count as not busy).
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().unwrap_or_default();
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Ok((total.saturating_sub(idle), total))
}

/// The parent pid (field 4) of a /proc/<pid>/stat line.
fn parent(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
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
        assert_eq!(parent(stat), Some(1));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\trelay\nVmPeak:\t  99999 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(12_345));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
    }

    #[test]
    fn cluster_cpu_counts_what_each_process_spent_since() {
        let before = std::collections::HashMap::from([(1, 1.0), (2, 5.0)]);
        let after = std::collections::HashMap::from([(1, 1.5), (2, 5.0), (3, 0.25)]);
        assert_eq!(cluster_cpu_since(&before, &after), 0.75);
    }

    #[test]
    fn reads_its_own_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.peak_rss_kib > 0);
        assert!(u.cpu_secs >= 0.0);
    }
}
