//! The uncontended fsm-vs-baseline pairs: per client count, each client fires at
//! instances only it uses, through fsm's `Store::fire` on one side and the hand-written
//! loop on the other, in pairs whose order alternates by round; the median of each side
//! and the ratio of every pair.

use std::sync::Arc;
use std::time::Instant;

use fsm_core::testing::{Note, Order, OrderEvent};
use fsm_core::{Command, RetryPolicy, Store};
use fsm_sqlx::Concurrency;

use crate::Res;
use crate::baseline::{key_of, note_of};
use crate::cli::{Config, Side};
use crate::db::{Db, closing};
use crate::measure::{ClientLog, Stats, Window, deal, join, stats};
use crate::report::{ms, us};

/// One uncontended run: `clients` clients, each at its own instances.
pub(crate) async fn run_pair_side<D: Db>(
    cfg: &Config,
    run: usize,
    clients: usize,
    side: Side,
) -> Res<Stats> {
    // The store as shipped (adaptive), unless --pessimistic asks for the experiment.
    let mode = if cfg.pessimistic && side == Side::Fsm {
        Concurrency::Pessimistic
    } else {
        Concurrency::default()
    };
    let db = Arc::new(D::open(cfg, run, mode, RetryPolicy::default()).await?);
    let result = pair_side_on(cfg, &db, clients, side).await;
    closing(db, result).await
}

/// The clients of one uncontended run on `db`, and the check that they left history.
async fn pair_side_on<D: Db>(cfg: &Config, db: &Arc<D>, clients: usize, side: Side) -> Res<Stats> {
    let (ids, per_client) = deal(cfg.instances, clients);
    db.seed(&ids).await?;
    let window = Window::new(cfg);
    let handles = per_client
        .into_iter()
        .enumerate()
        .map(|(client, mine)| {
            let db = Arc::clone(db);
            tokio::spawn(async move {
                let mut log = ClientLog::default();
                for seq in 0u64.. {
                    let started = Instant::now();
                    if started >= window.until {
                        break;
                    }
                    let id = &mine[(seq % mine.len() as u64) as usize];
                    let key = key_of(client, seq);
                    let note = note_of(seq);
                    match side {
                        Side::Fsm => {
                            let command =
                                Command::new(OrderEvent::Annotate(Note(note))).with_key(key);
                            let outcome = db.store().fire::<Order>(id, command).await?;
                            if outcome.is_duplicate() {
                                return Err("unexpected duplicate".into());
                            }
                        }
                        Side::Baseline => db.baseline(id, &key, &note).await?,
                    }
                    log.applied += 1;
                    if started >= window.measure_from {
                        log.latencies.push(started.elapsed());
                    }
                }
                Ok(log)
            })
        })
        .collect();
    let logs = join(handles).await?;
    let applied: u64 = logs.iter().map(|l| l.applied).sum();
    // Both sides leave the same stored trace: one history row per applied fire.
    let history: usize = {
        let mut n = 0;
        for id in ids.iter().take(4) {
            n += db.store().history::<Order>(id).await?.len();
        }
        n
    };
    if applied > 0 && history == 0 {
        return Err("no history was written".into());
    }
    Ok(stats(&window, &logs))
}

/// Median of `xs` by throughput.
fn median(mut xs: Vec<Stats>) -> Stats {
    xs.sort_by(|a, b| a.tps.total_cmp(&b.tps));
    xs[xs.len() / 2]
}

/// One client count's pairs: the median of each side, every pair's ratio.
pub(crate) struct PairRow {
    pub(crate) clients: usize,
    pub(crate) fsm: Stats,
    pub(crate) baseline: Stats,
    pub(crate) ratios: Vec<f64>,
    /// 1-minute load averages at the end of each run.
    pub(crate) loads: Vec<f64>,
}

/// Every client count of `cfg`, `cfg.rounds` pairs each; `run` counts the databases.
pub(crate) async fn run_pairs<D: Db>(cfg: &Config, run: &mut usize) -> Res<Vec<PairRow>> {
    let mut rows = Vec::new();
    for &clients in &cfg.clients {
        let (mut fsm, mut baseline, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut loads = Vec::new();
        for round in 0..cfg.rounds {
            let order = if round % 2 == 0 {
                [Side::Fsm, Side::Baseline]
            } else {
                [Side::Baseline, Side::Fsm]
            };
            let mut pair = [None, None];
            for side in order {
                if cfg.only.is_some_and(|only| only != side) {
                    continue;
                }
                *run += 1;
                let s = run_pair_side::<D>(cfg, *run, clients, side).await?;
                eprintln!(
                    "  {} clients={clients} round={round} {:<8} {:>8.0} tx/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} measured of {} fires, {:.0} us CPU/fire, load {:.1})",
                    cfg.kind.name(),
                    if side == Side::Fsm { "fsm" } else { "baseline" },
                    s.tps,
                    ms(s.p50),
                    ms(s.p99),
                    s.samples,
                    s.fires,
                    us(s.cpu_per_fire),
                    s.load.unwrap_or(f64::NAN)
                );
                loads.extend(s.load);
                pair[usize::from(side == Side::Baseline)] = Some(s);
            }
            if let [Some(f), Some(b)] = pair {
                ratios.push(f.tps / b.tps);
                fsm.push(f);
                baseline.push(b);
            }
        }
        if ratios.is_empty() {
            continue; // --only: one side, no pairs to compare
        }
        rows.push(PairRow {
            clients,
            fsm: median(fsm),
            baseline: median(baseline),
            ratios,
            loads,
        });
    }
    Ok(rows)
}
