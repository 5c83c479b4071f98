//! Driving clients and measuring: the window a run warms up and measures in, what each
//! client saw, and the throughput, latency percentiles, CPU time per fire and load
//! average computed from it; dealing instances to clients and joining them.

use std::time::{Duration, Instant};

use crate::cli::Config;
use crate::{BoxError, Res};

/// When a run warms up, measures, and stops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) measure_from: Instant,
    pub(crate) until: Instant,
    pub(crate) seconds: f64,
    pub(crate) cpu_at_start: Option<Duration>,
}

impl Window {
    pub(crate) fn new(cfg: &Config) -> Window {
        let measure_from = Instant::now() + Duration::from_secs_f64(cfg.warmup);
        Window {
            measure_from,
            until: measure_from + Duration::from_secs_f64(cfg.seconds),
            seconds: cfg.seconds,
            cpu_at_start: process_cpu(),
        }
    }
}

/// What one client saw in the measured window.
#[derive(Debug, Default)]
pub(crate) struct ClientLog {
    /// Latencies of operations started inside the window.
    pub(crate) latencies: Vec<Duration>,
    /// Fires applied over the whole run (warm-up included).
    pub(crate) applied: u64,
    /// Fires that gave up after the retry policy was exhausted (hot row).
    pub(crate) gave_up: u64,
    /// Compare-and-set races lost (hot row, counted mode).
    pub(crate) retries: u64,
    /// Versions of the applied transitions (hot row).
    pub(crate) versions: Vec<u64>,
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) tps: f64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) samples: usize,
    /// Fires applied over the whole run, warm-up included.
    pub(crate) fires: u64,
    /// The 1-minute load average at the end of the run: the machine is shared.
    pub(crate) load: Option<f64>,
    /// CPU time of this process (every thread: clients, sqlx, SQLite itself) per
    /// applied fire, over the whole run.
    pub(crate) cpu_per_fire: Option<Duration>,
}

/// The statistics of a run over `window` from its clients' `logs`.
pub(crate) fn stats(window: &Window, logs: &[ClientLog]) -> Stats {
    let mut all: Vec<Duration> = logs
        .iter()
        .flat_map(|l| l.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    Stats {
        tps: all.len() as f64 / window.seconds,
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        samples: all.len(),
        fires: logs.iter().map(|l| l.applied).sum(),
        load: load_average(),
        cpu_per_fire: {
            let fires: u64 = logs.iter().map(|l| l.applied).sum();
            match (window.cpu_at_start, process_cpu()) {
                (Some(start), Some(end)) if fires > 0 => {
                    Some(end.saturating_sub(start) / u32::try_from(fires).unwrap_or(u32::MAX))
                }
                _ => None,
            }
        },
    }
}

/// User + system CPU time of this process so far (Linux, clock ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The 1-minute load average (Linux), if readable.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Instance ids of a run, dealt round-robin to `clients`.
pub(crate) fn deal(instances: usize, clients: usize) -> (Vec<String>, Vec<Vec<String>>) {
    let n = instances.max(clients);
    let ids: Vec<String> = (0..n).map(|i| format!("order-{i:06}")).collect();
    let mut per_client = vec![Vec::new(); clients];
    for (i, id) in ids.iter().enumerate() {
        per_client[i % clients].push(id.clone());
    }
    (ids, per_client)
}

/// Waits for every client (so none still holds the database), then reports the first
/// failure, if any.
pub(crate) async fn join(
    handles: Vec<tokio::task::JoinHandle<Res<ClientLog>>>,
) -> Res<Vec<ClientLog>> {
    let mut logs = Vec::with_capacity(handles.len());
    let mut failure: Option<BoxError> = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(log)) => logs.push(log),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(e.into())),
        }
    }
    failure.map_or(Ok(logs), Err)
}
