//! Dispatcher latency: effects committed at a steady rate while one `Dispatcher::run`
//! (default options) hands them to a handler; how long each waited from its commit to
//! its handler's start.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsm_core::testing::{Note, Order, OrderEffect, OrderEvent};
use fsm_core::{Command, RetryPolicy, Store};
use fsm_sqlx::Concurrency;
use tokio_util::sync::CancellationToken;

use crate::Res;
use crate::baseline::{ensure, key_of, note_of};
use crate::cli::Config;
use crate::db::Db;
use crate::measure::{deal, load_average};

/// Clients sharing the rate, each firing at its own instances.
const CLIENTS: usize = 8;

/// One latency measurement.
pub(crate) struct LatencyRow {
    pub(crate) rate: u32,
    pub(crate) effects: usize,
    /// Percentiles (50, 99, max) from the fire's return, after its commit: a lower
    /// bound (a handler that started before the fire returned counts 0).
    pub(crate) after_commit: [Duration; 3],
    /// The same from the fire's start, before its commit: an upper bound.
    pub(crate) from_fire: [Duration; 3],
    pub(crate) load: Option<f64>,
}

/// Fires keyed `Annotate`s (one `Noted` effect each) at `rate` per second for
/// `cfg.seconds`, from 8 clients, while a dispatcher with default options runs; then
/// waits for the last effect and reports the wait of each.
pub(crate) async fn run_latency<D: Db>(cfg: &Config, run: usize, rate: u32) -> Res<LatencyRow> {
    let db = D::open(cfg, run, Concurrency::default(), RetryPolicy::default()).await?;
    let store = Arc::clone(db.store());
    let (ids, per_client) = deal(cfg.instances.min(512), CLIENTS);
    db.seed(&ids).await?;

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let shutdown = CancellationToken::new();
    // A remote dispatcher hears of commits only through the database (or its poll).
    let remote = match cfg.remote_dispatcher {
        true => Some(db.second_store(cfg).await?),
        false => None,
    };
    let dispatcher =
        fsm_sqlx::Dispatcher::new(remote.clone().unwrap_or_else(|| D::Store::clone(&store)));
    let handler = {
        let started = Arc::clone(&started);
        move |d: fsm_sqlx::Delivery<OrderEffect>| {
            let now = Instant::now();
            started.lock().expect("lock").insert(d.id.to_string(), now);
            std::future::ready(Ok::<(), fsm_core::BoxError>(()))
        }
    };
    let dispatching = tokio::spawn(dispatcher.run::<Order, _, _>(handler, shutdown.clone()));

    let fires_each = (f64::from(rate) * cfg.seconds / CLIENTS as f64) as u64;
    let period = Duration::from_secs_f64(CLIENTS as f64 / f64::from(rate));
    let firing: Vec<_> = per_client
        .into_iter()
        .enumerate()
        .map(|(client, mine)| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut fired = Vec::with_capacity(fires_each as usize);
                for n in 0..fires_each {
                    ticks.tick().await;
                    let id = &mine[n as usize % mine.len()];
                    let note = OrderEvent::Annotate(Note(note_of(n)));
                    let before = Instant::now();
                    let outcome = store
                        .fire(id, Command::new(note).with_key(key_of(client, n)))
                        .await?;
                    let after = Instant::now();
                    let effect = format!("Order/{id}/{}/0", outcome.transition().version);
                    fired.push((effect, before, after));
                }
                Ok::<_, Box<dyn StdError + Send + Sync>>(fired)
            })
        })
        .collect();
    let mut fired = Vec::new();
    for task in firing {
        fired.extend(task.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while started.lock().expect("lock").len() < fired.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    dispatching.await??;
    let started = started.lock().expect("lock").clone();
    ensure(
        started.len() >= fired.len(),
        "the dispatcher handled every effect within 30 s",
    )?;
    let mut after_commit = Vec::with_capacity(fired.len());
    let mut from_fire = Vec::with_capacity(fired.len());
    for (effect, before, after) in &fired {
        let start = started[effect];
        after_commit.push(start.saturating_duration_since(*after));
        from_fire.push(start.saturating_duration_since(*before));
    }
    let load = load_average();
    if let Some(remote) = remote {
        D::close_second(remote).await;
    }
    db.close().await?;
    Ok(LatencyRow {
        rate,
        effects: fired.len(),
        after_commit: percentiles(after_commit),
        from_fire: percentiles(from_fire),
        load,
    })
}

/// p50, p99 and the maximum.
fn percentiles(mut waits: Vec<Duration>) -> [Duration; 3] {
    waits.sort_unstable();
    let at = |p: f64| waits[((waits.len() - 1) as f64 * p).round() as usize];
    [at(0.50), at(0.99), at(1.0)]
}
