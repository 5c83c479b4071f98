//! The hot-row runs: `--hot-clients` clients fire at one instance with distinct keys,
//! fsm only, with the store's retry policy, with retries counted by the client, and
//! pessimistically; each checks that no update was lost and that the history is
//! gapless.

use std::sync::Arc;
use std::time::Instant;

use fsm_core::testing::{Note, Order, OrderEvent};
use fsm_core::{Command, Error, Outcome, RetryPolicy, Store};
use fsm_sqlx::Concurrency;

use crate::baseline::{key_of, note_of};
use crate::cli::Config;
use crate::db::{Db, closing};
use crate::measure::{ClientLog, Stats, Window, join, stats};
use crate::report::ms;
use crate::{MACHINE, Res};

/// How the hot row's writers meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HotMode {
    /// The store as shipped: its default concurrency mode and retry policy.
    StorePolicy,
    /// `RetryPolicy::NONE` in the store, the default policy applied by the client.
    Counted,
    /// `Concurrency::Pessimistic`: the row is locked while deciding, writers queue.
    Pessimistic,
}

/// One hot-row run: throughput, and whether every update landed in order.
pub(crate) struct HotRow {
    pub(crate) mode: HotMode,
    pub(crate) clients: usize,
    pub(crate) stats: Stats,
    pub(crate) applied: u64,
    pub(crate) gave_up: u64,
    pub(crate) retries: Option<u64>,
    pub(crate) final_version: u64,
    pub(crate) lost: i64,
    pub(crate) gapless: bool,
    pub(crate) context_bytes: usize,
}

/// One hot-row run in `mode` on a fresh database.
pub(crate) async fn run_hot<D: Db>(cfg: &Config, run: usize, mode: HotMode) -> Res<HotRow> {
    let (concurrency, store_policy) = match mode {
        HotMode::StorePolicy => (Concurrency::default(), RetryPolicy::default()),
        HotMode::Counted => (Concurrency::Optimistic, RetryPolicy::NONE),
        HotMode::Pessimistic => (Concurrency::Pessimistic, RetryPolicy::default()),
    };
    let db = Arc::new(D::open(cfg, run, concurrency, store_policy).await?);
    let result = hot_on(cfg, &db, mode).await;
    let row = closing(db, result).await?;
    eprintln!(
        "  {} hot row {:?}: {:.0} tx/s, p50 {:.3} ms, p99 {:.3} ms, applied {}, gave up {}, retries {:?}, lost {}, gapless {}, load {:.1}",
        cfg.kind.name(),
        row.mode,
        row.stats.tps,
        ms(row.stats.p50),
        ms(row.stats.p99),
        row.applied,
        row.gave_up,
        row.retries,
        row.lost,
        row.gapless,
        row.stats.load.unwrap_or(f64::NAN)
    );
    Ok(row)
}

/// `cfg.hot_clients` clients at one instance of `db`, then the checks of what is stored.
async fn hot_on<D: Db>(cfg: &Config, db: &Arc<D>, mode: HotMode) -> Res<HotRow> {
    const ID: &str = "hot-order";
    db.seed(&[ID.to_owned()]).await?;
    let window = Window::new(cfg);
    let handles = (0..cfg.hot_clients)
        .map(|client| {
            let db = Arc::clone(db);
            tokio::spawn(async move {
                let policy = RetryPolicy::default();
                let mut log = ClientLog::default();
                for seq in 0u64.. {
                    let started = Instant::now();
                    if started >= window.until {
                        break;
                    }
                    let key = key_of(client, seq);
                    let note = note_of(seq);
                    let mut attempt = 1;
                    let outcome = loop {
                        let command = Command::new(OrderEvent::Annotate(Note(note.clone())))
                            .with_key(key.clone());
                        match db.store().fire::<Order>(ID, command).await {
                            Err(Error::Conflict { version, .. }) if mode == HotMode::Counted => {
                                log.retries += 1;
                                match policy.pause(attempt, MACHINE, ID, version).await {
                                    Ok(()) => attempt += 1,
                                    Err(e) => break Err(e),
                                }
                            }
                            other => break other,
                        }
                    };
                    match outcome {
                        Ok(Outcome::Applied(t)) => {
                            log.applied += 1;
                            log.versions.push(t.version);
                            if started >= window.measure_from {
                                log.latencies.push(started.elapsed());
                            }
                        }
                        Ok(Outcome::Duplicate(_)) => return Err("unexpected duplicate".into()),
                        Err(Error::Conflict { .. }) => log.gave_up += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(log)
            })
        })
        .collect();
    let logs = join(handles).await?;
    let applied: u64 = logs.iter().map(|l| l.applied).sum();
    let gave_up: u64 = logs.iter().map(|l| l.gave_up).sum();
    let retries: u64 = logs.iter().map(|l| l.retries).sum();
    let stored = db.store().load::<Order>(ID).await?;
    let history = db.store().history::<Order>(ID).await?;
    let mut versions: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.versions.iter().copied())
        .collect();
    versions.sort_unstable();
    let expected: Vec<u64> = (1..=stored.version).collect();
    let gapless = history
        .iter()
        .map(|t| t.version)
        .eq(expected.iter().copied())
        && versions == expected
        && history.len() as u64 == applied;
    let row = HotRow {
        mode,
        clients: cfg.hot_clients,
        stats: stats(&window, &logs),
        applied,
        gave_up,
        retries: (mode == HotMode::Counted).then_some(retries),
        final_version: stored.version,
        lost: applied as i64 - stored.version as i64,
        gapless,
        context_bytes: serde_json::to_string(&stored.context)?.len(),
    };
    Ok(row)
}
