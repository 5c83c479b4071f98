//! The outbox dispatcher: effects written through fsm, then drained by concurrent
//! `Dispatcher`s with a no-op handler; effects per second.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::testing::{Note, Order, OrderEffect, OrderEvent};
use fsm_core::{Command, RetryPolicy, Store};
use fsm_sqlx::Concurrency;

use crate::Res;
use crate::baseline::{ensure, key_of, note_of};
use crate::cli::Config;
use crate::db::Db;
use crate::measure::{deal, load_average};

/// One dispatcher measurement: the outbox drained by `workers` concurrent dispatchers.
pub(crate) struct DispatchRow {
    pub(crate) workers: usize,
    pub(crate) effects: usize,
    pub(crate) handled: usize,
    pub(crate) elapsed: Duration,
    pub(crate) load: Option<f64>,
}

/// Fills the outbox through fsm (8 clients firing keyed `Annotate`s at their own
/// instances, one `Noted` effect each), then times `workers` dispatchers draining it
/// with a no-op handler: claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL), hand
/// over, mark done.
pub(crate) async fn run_dispatch<D: Db>(
    cfg: &Config,
    run: usize,
    workers: usize,
) -> Res<DispatchRow> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let db = D::open(cfg, run, Concurrency::Optimistic, RetryPolicy::default()).await?;
    let store = Arc::clone(db.store());
    let (ids, per_client) = deal(cfg.instances.min(512), 8);
    db.seed(&ids).await?;
    let per = cfg.dispatch_effects.div_ceil(8);
    let fills: Vec<_> = per_client
        .into_iter()
        .enumerate()
        .map(|(client, mine)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in 0..per as u64 {
                    let id = &mine[n as usize % mine.len()];
                    let note = OrderEvent::Annotate(Note(note_of(n)));
                    store
                        .fire(id, Command::new(note).with_key(key_of(client, n)))
                        .await?;
                }
                Ok::<(), Box<dyn StdError + Send + Sync>>(())
            })
        })
        .collect();
    for fill in fills {
        fill.await??;
    }
    let effects = per * 8;
    let handled = Arc::new(AtomicUsize::new(0));
    let options = fsm_sqlx::DispatchOptions {
        batch: 32,
        ..fsm_sqlx::DispatchOptions::default()
    };
    let start = Instant::now();
    let drains: Vec<_> = (0..workers)
        .map(|_| {
            let dispatcher =
                fsm_sqlx::Dispatcher::new(D::Store::clone(&store)).with_options(options);
            let handled = Arc::clone(&handled);
            tokio::spawn(async move {
                let handler = |_: fsm_sqlx::Delivery<OrderEffect>| {
                    handled.fetch_add(1, Ordering::Relaxed);
                    std::future::ready(Ok::<(), fsm_core::BoxError>(()))
                };
                while dispatcher
                    .dispatch_once::<Order, _, _>(&handler)
                    .await?
                    .claimed
                    > 0
                {}
                Ok::<(), Box<dyn StdError + Send + Sync>>(())
            })
        })
        .collect();
    for drain in drains {
        drain.await??;
    }
    let elapsed = start.elapsed();
    let handled = handled.load(Ordering::Relaxed);
    ensure(handled >= effects, "the dispatchers handled every effect")?;
    let load = load_average();
    db.close().await?;
    Ok(DispatchRow {
        workers,
        effects,
        handled,
        elapsed,
        load,
    })
}
