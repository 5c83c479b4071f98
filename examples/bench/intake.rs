//! The buffered intake (`--intake-only`): on one fresh database, `clients` clients fire
//! keyed `Annotate`s directly (`Store::fire`, without group commit unless `--grouped`),
//! then the same clients submit keyed `Annotate`s to an `Intake` with no worker running
//! (`Intake::submit`, which returns once the command is durable), then 2 `IntakeWorker`s
//! drain the backlog for at most `--seconds`; fires/s, submits/s, their ratio, and
//! applied/s.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::testing::{Note, Order, OrderEvent};
use fsm_core::{Command, RetryPolicy, Store};
use fsm_sqlx::{Concurrency, Dialect, SqlStore};

use crate::Res;
use crate::baseline::{key_of, note_of};
use crate::cli::Config;
use crate::db::{Db, closing};
use crate::measure::{ClientLog, Stats, Window, deal, join, load_average, stats};
use crate::report::ms;

/// Workers draining the backlog.
const DRAIN_WORKERS: usize = 2;

/// One `--intake-only` run per client count.
pub(crate) async fn run_intake<D: Db>(cfg: &Config, run: &mut usize) -> Res<()> {
    for &clients in &cfg.clients {
        *run += 1;
        let db =
            Arc::new(D::open(cfg, *run, Concurrency::default(), RetryPolicy::default()).await?);
        let store: &dyn Any = &**db.store();
        let result = on_sql_store(cfg, &*db, store, clients).await;
        closing(db, result).await?;
    }
    Ok(())
}

/// [`measure`] on the run's store as the `SqlStore` it is (the bench's `Db` names it only
/// as a `DurableStore`).
async fn on_sql_store<D: Db>(cfg: &Config, db: &D, store: &dyn Any, clients: usize) -> Res<()> {
    #[cfg(feature = "sqlite")]
    if let Some(store) = store.downcast_ref::<fsm_sqlx::SqliteStore>() {
        return measure(cfg, db, store.clone(), clients).await;
    }
    #[cfg(feature = "postgres")]
    if let Some(store) = store.downcast_ref::<fsm_sqlx::PgStore>() {
        return measure(cfg, db, store.clone(), clients).await;
    }
    #[cfg(feature = "mysql")]
    if let Some(store) = store.downcast_ref::<fsm_sqlx::MySqlStore>() {
        return measure(cfg, db, store.clone(), clients).await;
    }
    let _ = (cfg, db, clients);
    Err("the intake bench needs an fsm_sqlx::SqlStore".into())
}

/// Direct fires, then submits, then the drain, on `db`.
async fn measure<D: Db, X: Dialect>(
    cfg: &Config,
    db: &D,
    store: SqlStore<X>,
    clients: usize,
) -> Res<()> {
    let (ids, per_client) = deal(cfg.instances, clients);
    db.seed(&ids).await?;
    let per_client = Arc::new(per_client);
    let intake = store.intake::<Order>();

    // The comparison is with the unbatched fire (issue 11): a grouped store buffers too.
    let fire = drive(cfg, clients, &per_client, {
        let direct = Config {
            grouped: cfg.grouped.or(Some(false)),
            ..cfg.clone()
        };
        let store = crate::db::grouping(&direct, store.clone());
        move |client, seq, id| {
            let store = store.clone();
            async move {
                let command = Command::new(OrderEvent::Annotate(Note(note_of(seq))))
                    .with_key(key_of(client, seq));
                store.fire::<Order>(&id, command).await?;
                Ok(())
            }
        }
    })
    .await?;
    report_line(cfg, clients, "direct fire", &fire);

    let submit = drive(cfg, clients, &per_client, {
        let intake = intake.clone();
        move |client, seq, id| {
            let intake = intake.clone();
            async move {
                let command = Command::new(OrderEvent::Annotate(Note(note_of(seq))))
                    .with_key(format!("intake-{}", key_of(client, seq)));
                if !intake.submit(&id, command).await?.is_new() {
                    return Err("unexpected recorded submission".into());
                }
                Ok(())
            }
        }
    })
    .await?;
    report_line(cfg, clients, "submit", &submit);

    // The backlog, drained by workers for at most --seconds.
    let backlog = intake.pending().await?;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(cfg.seconds);
    let workers: Vec<_> = (0..DRAIN_WORKERS)
        .map(|_| {
            let worker = intake.worker();
            tokio::spawn(async move {
                let mut applied = 0usize;
                while Instant::now() < until {
                    let report = worker.run_once().await?;
                    applied += report.applied;
                    if report.claimed == 0 {
                        break;
                    }
                }
                Ok::<usize, crate::BoxError>(applied)
            })
        })
        .collect();
    let mut applied = 0;
    for worker in workers {
        applied += worker.await??;
    }
    let elapsed = started.elapsed();
    let left = intake.pending().await?;
    if applied as u64 + left != backlog {
        return Err(format!("{backlog} pending, {applied} applied, {left} left").into());
    }
    println!(
        "{} clients={clients}: direct fire {:>8.0}/s  submit {:>8.0}/s  = {:.1}x  |  drain \
         ({DRAIN_WORKERS} workers) {:>7.0} applied/s ({applied} of {backlog} in {:.1} s)  load {:.1}",
        cfg.kind.name(),
        fire.tps,
        submit.tps,
        submit.tps / fire.tps,
        applied as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        load_average().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// `clients` clients running `op(client, seq, instance)` in a loop over the window.
async fn drive<F, Fut>(
    cfg: &Config,
    clients: usize,
    per_client: &Arc<Vec<Vec<String>>>,
    op: F,
) -> Res<Stats>
where
    F: Fn(usize, u64, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res<()>> + Send,
{
    let window = Window::new(cfg);
    let handles = (0..clients)
        .map(|client| {
            let (op, per_client) = (op.clone(), Arc::clone(per_client));
            tokio::spawn(async move {
                let mine = &per_client[client];
                let mut log = ClientLog::default();
                for seq in 0u64.. {
                    let started = Instant::now();
                    if started >= window.until {
                        break;
                    }
                    let id = mine[(seq % mine.len() as u64) as usize].clone();
                    op(client, seq, id).await?;
                    log.applied += 1;
                    if started >= window.measure_from {
                        log.latencies.push(started.elapsed());
                    }
                }
                Ok(log)
            })
        })
        .collect();
    Ok(stats(&window, &join(handles).await?))
}

fn report_line(cfg: &Config, clients: usize, what: &str, s: &Stats) {
    eprintln!(
        "  {} clients={clients} {what:<12} {:>8.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} measured, load {:.1})",
        cfg.kind.name(),
        s.tps,
        ms(s.p50),
        ms(s.p99),
        s.samples,
        s.load.unwrap_or(f64::NAN)
    );
}
