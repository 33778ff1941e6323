//! The relay under test: the real `outbox-relay` binary (release build,
//! found or built by the test kit), started with RELAY_* variables, its
//! CPU and memory read from /proc, its commit-to-confirm histogram read
//! from /metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use e2e::RelayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procfs::{self, Usage};

/// Where the relay reads and publishes.
#[derive(Debug, Clone)]
pub struct Target {
    /// RELAY_PG_URL.
    pub pg_url: String,
    /// RELAY_SLOT (created before the backlog).
    pub slot: String,
    /// RELAY_PUBLICATION.
    pub publication: String,
    /// RELAY_EXCHANGE.
    pub exchange: String,
    /// RELAY_DEAD_LETTER_EXCHANGE and _QUEUE.
    pub dead_letter: String,
}

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    process: RelayProcess,
    metrics: Option<SocketAddr>,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Relay {
    /// Spawns `outbox-relay run` for `target`; does not wait.
    pub fn spawn(target: &Target) -> anyhow::Result<Relay> {
        Relay::spawn_with(target, &[])
    }

    /// Spawns `outbox-relay run` for `target` with more settings (which
    /// win); does not wait.
    pub fn spawn_with(target: &Target, extra: &[(&str, &str)]) -> anyhow::Result<Relay> {
        let amqp_url = e2e::amqp::amqp_url();
        let env = [
            ("RELAY_PG_URL", target.pg_url.as_str()),
            ("RELAY_AMQP_URL", amqp_url.as_str()),
            ("RELAY_SLOT", target.slot.as_str()),
            ("RELAY_PUBLICATION", target.publication.as_str()),
            ("RELAY_EXCHANGE", target.exchange.as_str()),
            ("RELAY_DEAD_LETTER_EXCHANGE", target.dead_letter.as_str()),
            ("RELAY_DEAD_LETTER_QUEUE", target.dead_letter.as_str()),
            ("RELAY_METRICS_ADDR", "127.0.0.1:0"),
            ("RELAY_LOG_FORMAT", "json"),
            ("RELAY_LOG", "info"),
        ];
        let mut env: Vec<(&str, &str)> = env.to_vec();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, v));
        }
        let spawned = Instant::now();
        let process = RelayProcess::spawn(["run"], &env).context("starting outbox-relay")?;
        Ok(Relay {
            process,
            metrics: None,
            spawned,
        })
    }

    /// Waits until the relay streams from the slot and learns its metrics
    /// address.
    pub fn wait_streaming(&mut self) -> anyhow::Result<()> {
        self.process
            .wait_for_line("streaming from the slot", Duration::from_secs(60))
            .context("waiting for the relay to stream")?;
        let line = self
            .process
            .wait_for_line("metrics on /metrics", Duration::from_secs(10))
            .context("waiting for the relay's metrics address")?;
        self.metrics = Some(metrics_addr(&line)?);
        Ok(())
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time and peak RSS so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        procfs::usage(self.pid())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.process.try_status().is_none()
    }

    /// The commit-to-confirm histogram as /metrics shows it now.
    pub async fn histogram(&self) -> anyhow::Result<Histogram> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("the relay's metrics address is not known yet"))?;
        let text = http_get(addr, "/metrics").await?;
        Histogram::parse(&text, "outbox_relay_commit_to_confirm_seconds")
    }

    /// A counter or gauge as /metrics shows it now (0 if absent).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let addr = self
            .metrics
            .ok_or_else(|| anyhow!("the relay's metrics address is not known yet"))?;
        let text = http_get(addr, "/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.process
            .signal(nix::sys::signal::Signal::SIGTERM)
            .context("stopping the relay")?;
        let status = self.process.wait(Duration::from_secs(30))?;
        if !status.success() {
            bail!(
                "the relay exited with {status}; its output:\n{}",
                self.process.output()
            );
        }
        Ok(())
    }

    /// Everything the relay printed.
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// The `addr` field of the relay's JSON log line "metrics on /metrics...".
fn metrics_addr(line: &str) -> anyhow::Result<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("the relay's log line is not JSON: {line}"))?;
    let addr = value["fields"]["addr"]
        .as_str()
        .or_else(|| value["addr"].as_str())
        .ok_or_else(|| anyhow!("no addr field in: {line}"))?;
    addr.parse()
        .with_context(|| format!("the relay's metrics address {addr:?}"))
}

/// A minimal HTTP/1.1 GET (the bench needs nothing more).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .context("GET /metrics timed out")?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("a malformed HTTP response from {addr}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_string())
}

/// A Prometheus histogram: cumulative counts per upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound in seconds, cumulative count), ascending; +Inf last.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Reads histogram `name` from OpenMetrics text.
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Histogram> {
        let mut h = Histogram::default();
        let bucket = format!("{name}_bucket{{le=\"");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, value) = rest
                    .split_once("\"}")
                    .ok_or_else(|| anyhow!("a malformed bucket line: {line}"))?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse()?
                };
                let count = value.split_whitespace().next().unwrap_or("0").parse()?;
                h.buckets.push((le, count));
            } else if let Some(rest) = line.strip_prefix(&format!("{name}_count ")) {
                h.count = rest.trim().parse()?;
            } else if let Some(rest) = line.strip_prefix(&format!("{name}_sum ")) {
                h.sum = rest.trim().parse()?;
            }
        }
        if h.buckets.is_empty() {
            bail!("no {name} histogram in the relay's /metrics");
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(h)
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|b| b.0 == le)
                        .map_or(0, |b| b.1);
                    (le, c.saturating_sub(before))
                })
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum - earlier.sum,
        }
    }

    /// The upper bound of the bucket holding quantile `q` (parts per
    /// 10,000), in milliseconds; None with no observations.
    pub fn quantile_ms(&self, per_10k: u64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (self.count * per_10k).div_ceil(10_000).max(1);
        self.buckets
            .iter()
            .find(|b| b.1 >= rank)
            .map(|b| b.0 * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE outbox_relay_commit_to_confirm_seconds histogram
outbox_relay_commit_to_confirm_seconds_sum 1.5
outbox_relay_commit_to_confirm_seconds_count 100
outbox_relay_commit_to_confirm_seconds_bucket{le=\"0.0005\"} 0
outbox_relay_commit_to_confirm_seconds_bucket{le=\"0.001\"} 10
outbox_relay_commit_to_confirm_seconds_bucket{le=\"0.002\"} 60
outbox_relay_commit_to_confirm_seconds_bucket{le=\"0.004\"} 99
outbox_relay_commit_to_confirm_seconds_bucket{le=\"+Inf\"} 100
outbox_relay_events_published_total 100
";

    #[test]
    fn reads_the_histogram_and_its_quantiles() {
        let h = Histogram::parse(TEXT, "outbox_relay_commit_to_confirm_seconds").unwrap();
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets.len(), 5);
        assert_eq!(h.quantile_ms(5_000), Some(2.0));
        assert_eq!(h.quantile_ms(9_900), Some(4.0));
        assert_eq!(h.quantile_ms(10_000), Some(f64::INFINITY));
    }

    #[test]
    fn a_difference_counts_only_the_new_observations() {
        let later = Histogram::parse(TEXT, "outbox_relay_commit_to_confirm_seconds").unwrap();
        let earlier = Histogram {
            buckets: vec![(0.001, 10), (0.002, 10), (f64::INFINITY, 10)],
            count: 10,
            sum: 0.01,
        };
        let d = later.since(&earlier);
        assert_eq!(d.count, 90);
        assert_eq!(d.quantile_ms(5_000), Some(2.0));
        assert!(Histogram::default().quantile_ms(5_000).is_none());
    }

    #[test]
    fn finds_the_metrics_address_in_a_json_log_line() {
        let line = r#"{"timestamp":"x","level":"INFO","fields":{"message":"metrics on /metrics, health on /healthz and /readyz","addr":"127.0.0.1:41234"},"target":"outbox_relay"}"#;
        assert_eq!(metrics_addr(line).unwrap().port(), 41234);
    }
}
