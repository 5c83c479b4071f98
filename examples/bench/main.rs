//! Durable-store benchmark: `Store::fire` through fsm against the same SQL issued by a
//! minimal hand-written sqlx loop, per backend and client count, plus a hot-row run.
//!
//! ```text
//! cargo run --release --example bench --features postgres,mysql -- \
//!     --backend sqlite|postgres|mysql --clients 1,8,32 [--seconds N] [--url URL]
//! ```
//!
//! * **fsm**: each client fires `Annotate(note)` with a fresh idempotency key at
//!   instances only it uses (no contention): `store.fire(id, Command::new(..).with_key(k))`.
//! * **baseline**: the same statements, binds and payload sizes, written by hand: the
//!   store's `LEFT JOIN` read, then its write (PostgreSQL: the one CTE statement;
//!   SQLite/MySQL: `BEGIN`, compare-and-set `UPDATE`, history `INSERT`, outbox `INSERT`,
//!   `COMMIT`). No fsm code runs in the loop. At start-up the bench checks that every
//!   statement it issues appears verbatim in the store's source files (one list per
//!   backend, in `baseline.rs`), and that the strings it builds by hand are
//!   byte-identical to what fsm serializes.
//! * **hot row**: 32 clients fire at one instance with distinct keys, fsm only, (a) with
//!   the store's default retry policy, (b) with `RetryPolicy::NONE` and the same default
//!   policy applied by the client, which counts every lost compare-and-set exactly, and
//!   (c) in `Concurrency::Pessimistic`. Each checks that no update was lost and that the
//!   history is gapless.
//!
//! The table also gives the bench process's CPU time per fire; `--help` lists the
//! experiments (`--ping`, `--one-checkout`, `--pessimistic`, `--pool`, `--only`).
//!
//! Every measurement gets a fresh database (SQLite: a temporary file; PostgreSQL: a new
//! schema on the connections' `search_path`; MySQL: a new database), migrated with
//! `store.migrate()`, seeded with instances in state `Paid` at version 0 (a self-loop
//! there arms no timer), warmed up, measured, and dropped. A client cycles through its
//! own instances so that contexts (which `Annotate` appends to) stay small.
//!
//! * **dispatcher** (`--dispatch`): the outbox filled through fsm, then drained by 1 and
//!   4 concurrent `Dispatcher`s with a no-op handler; effects per second.
//!
//! Method and results: `BENCHMARKS.md`.
//!
//! The modules, by what they measure:
//!
//! | module | what |
//! | --- | --- |
//! | `cli` | the flags and their defaults, parsed into a `Config` |
//! | `baseline` | what both sides write, the JSON built by hand, the start-up checks |
//! | `db` | one run's database, as each backend provides it |
//! | `sqlite`, `postgres`, `mysql` | each backend's database and its baseline transition |
//! | `measure` | a run's window, what its clients saw, throughput, latency, CPU time |
//! | `throughput` | the uncontended fsm-vs-baseline pairs |
//! | `hot_row` | many clients at one instance: retries, lost updates, gapless history |
//! | `dispatch` | the outbox drained by concurrent dispatchers |
//! | `group` | fsm without and with group commit (`--group-commit`) |
//! | `limit` | fsm against pgbench / C SQLite on the same statements (`--limit`) |
//! | `intake` | `Intake::submit` against direct fires, and the workers' drain |
//! | `report` | the tables printed at the end |

// Built without any backend, the bench only prints which feature it lacks.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

mod baseline;
mod cli;
mod db;
mod dispatch;
mod group;
mod hot_row;
mod intake;
mod latency;
mod limit;
mod measure;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod report;
#[cfg(feature = "sqlite")]
mod sqlite;
mod throughput;

use std::error::Error as StdError;
use std::process::ExitCode;

use cli::{Config, Kind, USAGE, parse_args};
use db::Db;
use hot_row::HotMode;

type BoxError = Box<dyn StdError + Send + Sync>;
type Res<T> = Result<T, BoxError>;

/// The machine type every row is stored under.
const MACHINE: &str = "Order";
/// The state instances are seeded in; `Annotate` loops on it.
const STATE: &str = "Paid";

/// Every run `cfg` asks for on backend `D`, then the tables.
async fn bench<D: Db>(cfg: &Config) -> Res<()> {
    baseline::check_hand_built_json()?;
    D::check(cfg)?;
    let mut run = 0;
    let pairs = if cfg.pairs {
        throughput::run_pairs::<D>(cfg, &mut run).await?
    } else {
        Vec::new()
    };
    let mut hot = Vec::new();
    if cfg.hot {
        for mode in [HotMode::StorePolicy, HotMode::Counted, HotMode::Pessimistic] {
            run += 1;
            hot.push(hot_row::run_hot::<D>(cfg, run, mode).await?);
        }
    }
    report::report(cfg, &pairs, &hot);
    if cfg.dispatch {
        let mut rows = Vec::new();
        for workers in [1, 4] {
            run += 1;
            rows.push(dispatch::run_dispatch::<D>(cfg, run, workers).await?);
        }
        report::report_dispatch(cfg, &rows);
    }
    if cfg.group_commit {
        let rows = group::run_grouped::<D>(cfg, &mut run).await?;
        report::report_grouped(cfg, &rows);
    }
    if cfg.limit {
        let rows = limit::run_limits::<D>(cfg, &mut run).await?;
        report::report_limits(cfg, &rows);
    }
    if cfg.intake {
        intake::run_intake::<D>(cfg, &mut run).await?;
    }
    if cfg.latency {
        run += 1;
        let row = latency::run_latency::<D>(cfg, run, cfg.rate).await?;
        report::report_latency(cfg, &[row]);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(cfg) => cfg,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("bench: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Res<()> = runtime.block_on(async {
        match cfg.kind {
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => bench::<sqlite::SqliteDb>(&cfg).await,
            #[cfg(feature = "postgres")]
            Kind::Postgres => bench::<postgres::PgDb>(&cfg).await,
            #[cfg(feature = "mysql")]
            Kind::Mysql => bench::<mysql::MySqlDb>(&cfg).await,
            #[allow(unreachable_patterns)]
            other => Err(format!(
                "backend {} is not compiled in: add --features {}",
                other.name(),
                other.name()
            )
            .into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
