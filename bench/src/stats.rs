//! What a run measures: deliveries, publish-to-deliver latency (HDR histograms), and the server's
//! RSS and CPU sampled from `/proc/<pid>`.
//!
//! Every publication carries its send time in its payload as a marker `~t<micros>~` (micros since
//! [`Stats::start`], so publisher and receivers, being one process, share the clock). The marker
//! is plain text inside a JSON string, so it survives every peer's envelope unchanged: Aviary's
//! `data`, Pusher's string-encoded `data`, Socket.IO's event arguments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Histogram shards: receivers record into `shard % SHARDS`, so concurrent receivers on
/// different worker threads rarely meet on the same lock.
const SHARDS: usize = 32;

/// Highest latency the histograms track (60 s, in microseconds); larger values are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Shared counters of one scenario run.
pub struct Stats {
    start: Instant,
    delivered: AtomicU64,
    /// Frames received that carried no marker (replies, pings, presence): not deliveries.
    other_frames: AtomicU64,
    /// Connections that failed or were closed by the server before the run ended.
    pub dropped: AtomicU64,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Stats {
    pub fn new() -> Arc<Stats> {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds")))
            .collect();
        Arc::new(Stats {
            start: Instant::now(),
            delivered: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shards,
        })
    }

    /// Microseconds since this run started: the clock publications are stamped with.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// A payload of at least `size` bytes carrying the current time.
    pub fn payload(&self, size: usize) -> String {
        let mut p = format!("~t{}~", self.now_us());
        while p.len() < size {
            p.push('x');
        }
        p
    }

    /// Counts a received text frame: a delivery (and a latency sample) if it carries a marker.
    pub fn on_frame(&self, shard: usize, text: &str) {
        match parse_marker(text) {
            Some(sent) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                let latency = self.now_us().saturating_sub(sent).clamp(1, MAX_LATENCY_US);
                self.shards[shard % SHARDS].lock().saturating_record(latency);
            }
            None => {
                self.other_frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records one latency sample measured elsewhere (request round trips).
    pub fn record_latency(&self, shard: usize, micros: u64) {
        self.shards[shard % SHARDS].lock().saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// All shards merged.
    pub fn histogram(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds");
        for shard in &self.shards {
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*shard.lock());
        }
        all
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        Percentiles::of(&self.histogram())
    }
}

/// The send time in a payload, if the frame carries one.
pub fn parse_marker(text: &str) -> Option<u64> {
    let at = text.find("~t")?;
    let digits = &text[at + 2..];
    let end = digits.find('~')?;
    digits[..end].parse().ok()
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Some(Percentiles {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }

    /// `(label, value)` pairs in chart order.
    pub fn points(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50_ms),
            ("p90", self.p90_ms),
            ("p99", self.p99_ms),
            ("p99.9", self.p999_ms),
            ("max", self.max_ms),
        ]
    }
}

/// One sample of the server processes and of the delivery rate.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t_s: f64,
    /// Resident memory of all server processes, KiB.
    pub rss_kib: u64,
    /// CPU used by all server processes since the previous sample, percent of one core.
    pub cpu_pct: f64,
    /// Deliveries per second since the previous sample.
    pub deliveries_per_s: f64,
    /// CPU used by the bench process itself (the clients), percent of one core.
    pub client_cpu_pct: f64,
}

/// Resident set size of a process, KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process (and its reaped children), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // The command name (field 2) may contain spaces; fields are counted after its `)`.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: state is index 0, so utime (field 14) is index 11 and stime (15) index 12.
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn total_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|p| rss_kib(*p)).sum()
}

pub fn total_cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum()
}

/// Samples the server processes every `every` until `stop`; returns the samples.
pub async fn sample(pids: Vec<u32>, stats: Arc<Stats>, every: Duration, stop: CancellationToken) -> Vec<Sample> {
    let hz = ticks_per_s();
    let began = Instant::now();
    let mut samples = Vec::new();
    let mut last_at = Instant::now();
    let me = std::process::id();
    let mut last_cpu = total_cpu_ticks(&pids);
    let mut last_own = cpu_ticks(me);
    let mut last_delivered = stats.delivered();
    let mut tick = tokio::time::interval(every);
    // A starved runtime must not fire catch-up ticks back to back: tiny intervals would turn
    // one 10 ms CPU tick into absurd percentages.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-6);
        let cpu = total_cpu_ticks(&pids);
        let own = cpu_ticks(me);
        let delivered = stats.delivered();
        samples.push(Sample {
            client_cpu_pct: (own.saturating_sub(last_own) as f64 / hz) / dt * 100.0,
            t_s: now.duration_since(began).as_secs_f64(),
            rss_kib: total_rss_kib(&pids),
            cpu_pct: (cpu.saturating_sub(last_cpu) as f64 / hz) / dt * 100.0,
            deliveries_per_s: delivered.saturating_sub(last_delivered) as f64 / dt,
        });
        last_at = now;
        last_cpu = cpu;
        last_own = own;
        last_delivered = delivered;
    }
    samples
}

/// CPU of `pids` between two readings, percent of one core.
pub struct CpuWindow {
    at: Instant,
    ticks: u64,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> CpuWindow {
        CpuWindow { at: Instant::now(), ticks: total_cpu_ticks(pids) }
    }

    pub fn percent(&self, pids: &[u32]) -> f64 {
        let dt = self.at.elapsed().as_secs_f64().max(1e-6);
        (total_cpu_ticks(pids).saturating_sub(self.ticks) as f64 / ticks_per_s()) / dt * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips_through_any_envelope() {
        let stats = Stats::new();
        let p = stats.payload(64);
        assert!(p.len() >= 64);
        let sent = parse_marker(&p).expect("marker");
        let pusher = format!(r#"{{"event":"m","channel":"c","data":"{p}"}}"#);
        assert_eq!(parse_marker(&pusher), Some(sent));
        let socketio = format!(r#"42["message","{p}"]"#);
        assert_eq!(parse_marker(&socketio), Some(sent));
        assert_eq!(parse_marker(r#"{"type":"ok","id":1}"#), None);
    }

    #[test]
    fn frames_without_marker_are_not_deliveries() {
        let stats = Stats::new();
        stats.on_frame(0, r#"{"type":"ok"}"#);
        stats.on_frame(1, &stats.payload(10));
        assert_eq!(stats.delivered(), 1);
        assert_eq!(stats.histogram().len(), 1);
    }
}
