//! `--group-commit`: per client count, fsm as shipped, then the same store with
//! `GroupCommit::new()`, the same seconds each; the batch sizes come from the
//! `fsm_group_commit_size` histogram, read through a debugging metrics recorder.

use std::sync::OnceLock;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use crate::Res;
use crate::cli::{Config, Side};
use crate::db::Db;
use crate::measure::Stats;
use crate::throughput::run_pair_side;

/// One client count: unbatched and batched runs, and the batches seen.
pub(crate) struct GroupRow {
    pub(crate) clients: usize,
    pub(crate) alone: Stats,
    pub(crate) grouped: Stats,
    /// Batch sizes: count, mean, p50, max.
    pub(crate) batches: (usize, f64, f64, f64),
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // The bench installs no other recorder.
        let _ = recorder.install();
        snapshotter
    })
}

/// The batch sizes recorded since the last call (the snapshot drains histograms).
fn batch_sizes() -> Vec<f64> {
    let mut sizes = Vec::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        if key.key().name() == fsm_core::observe::GROUP_COMMIT_SIZE
            && let DebugValue::Histogram(values) = value
        {
            sizes.extend(values.into_iter().map(|v| v.into_inner()));
        }
    }
    sizes
}

/// Every client count of `cfg`: alone, then grouped.
pub(crate) async fn run_grouped<D: Db>(cfg: &Config, run: &mut usize) -> Res<Vec<GroupRow>> {
    batch_sizes();
    let mut rows = Vec::new();
    for &clients in &cfg.clients {
        *run += 1;
        let alone_cfg = Config {
            grouped: Some(false),
            ..cfg.clone()
        };
        let alone = run_pair_side::<D>(&alone_cfg, *run, clients, Side::Fsm).await?;
        batch_sizes();
        *run += 1;
        let grouped_cfg = Config {
            grouped: Some(true),
            ..cfg.clone()
        };
        let grouped = run_pair_side::<D>(&grouped_cfg, *run, clients, Side::Fsm).await?;
        let mut sizes = batch_sizes();
        sizes.sort_by(f64::total_cmp);
        let batches = match sizes.len() {
            0 => (0, 0.0, 0.0, 0.0),
            n => (
                n,
                sizes.iter().sum::<f64>() / n as f64,
                sizes[n / 2],
                sizes[n - 1],
            ),
        };
        eprintln!(
            "  {} clients={clients} alone {:>8.0} tx/s p99 {:.1} ms  grouped {:>8.0} tx/s p99 {:.1} ms  ({:.1}x, {} batches, mean {:.1})",
            cfg.kind.name(),
            alone.tps,
            crate::report::ms(alone.p99),
            grouped.tps,
            crate::report::ms(grouped.p99),
            grouped.tps / alone.tps,
            batches.0,
            batches.1
        );
        rows.push(GroupRow {
            clients,
            alone,
            grouped,
            batches,
        });
    }
    Ok(rows)
}
