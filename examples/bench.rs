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
//!   statement it issues appears verbatim in `fsm-sqlx/src/<backend>.rs`, and that the
//!   strings it builds by hand are byte-identical to what fsm serializes.
//! * **hot row**: 32 clients fire at one instance with distinct keys, fsm only, (a) with
//!   the store's default retry policy, (b) with `RetryPolicy::NONE` and the same default
//!   policy applied by the client, which counts every lost compare-and-set exactly, and
//!   (c) in `Concurrency::Pessimistic`. Each checks that no update was lost and that the
//!   history is gapless.
//!
//! The table also gives the bench process's CPU time per fire; `--help` lists the
//! experiments (`--no-ping`, `--one-checkout`, `--pessimistic`, `--pool`, `--only`).
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

// Built without any backend, the bench only prints which feature it lacks.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports)
)]

use std::error::Error as StdError;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent};
use fsm_core::{Command, Error, Outcome, RetryPolicy, StateMachine, Store, Trigger};
use fsm_sqlx::Concurrency;

type BoxError = Box<dyn StdError + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const USAGE: &str = "\
usage: bench --backend sqlite|postgres|mysql [options]

  --backend B        sqlite, postgres or mysql (required)
  --clients LIST     comma-separated client counts             [1,8,32]
  --seconds N        measured seconds per run                  [5]
  --warmup N         warm-up seconds per run                   [1]
  --url URL          server URL; default FSM_POSTGRES_URL / FSM_MYSQL_URL, else
                     postgres://postgres@127.0.0.1:5432/test, mysql://root@127.0.0.1:3306/test
                     (sqlite: a temporary file, --url ignored)
  --instances N      instances seeded per run, split between clients  [4096]
  --pool N           connections per pool              [8, as the stores' connect/open]
  --no-ping          pools skip sqlx's default ping (`test_before_acquire`) on
                     every acquire; the stores' own pools ping
  --rounds N         fsm/baseline pairs per client count, order alternating;
                     the median of each side is reported       [1]
  --hot-clients N    clients of the hot-row run                [32]
  --pessimistic      uncontended fsm runs use Concurrency::Pessimistic (the baseline
                     keeps the optimistic statements: an experiment, not a pair)
  --one-checkout     the baseline reads and writes on one pool checkout instead of
                     the store's two (an experiment: one acquire and release less)
  --only fsm|baseline  uncontended runs of one side only, no table (for `perf stat`)
  --no-hot           skip the hot-row runs
  --hot-only         only the hot-row runs
  --dispatch         also time the outbox dispatcher draining N effects with 1 and 4
                     workers (no-op handler)
  --dispatch-only    only the dispatcher runs
  --dispatch-effects N  effects written (through fsm) before each drain  [8000]";

/// The machine type every row is stored under.
const MACHINE: &str = "Order";
/// The state instances are seeded in; `Annotate` loops on it.
const STATE: &str = "Paid";
/// What the baseline binds as the event's fingerprint: 32 bytes, like fsm's SHA-256.
const FINGERPRINT: [u8; 32] = [0x5a; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    kind: Kind,
    clients: Vec<usize>,
    seconds: f64,
    warmup: f64,
    url: Option<String>,
    instances: usize,
    pool: Option<u32>,
    ping: bool,
    pessimistic: bool,
    only: Option<Side>,
    one_checkout: bool,
    rounds: usize,
    hot_clients: usize,
    pairs: bool,
    hot: bool,
    dispatch: bool,
    dispatch_effects: usize,
}

fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut cfg = Config {
        kind: Kind::Sqlite,
        clients: vec![1, 8, 32],
        seconds: 5.0,
        warmup: 1.0,
        url: None,
        instances: 4096,
        pool: None,
        ping: true,
        pessimistic: false,
        only: None,
        one_checkout: false,
        rounds: 1,
        hot_clients: 32,
        pairs: true,
        hot: true,
        dispatch: false,
        dispatch_effects: 8000,
    };
    let mut kind = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--backend" => {
                kind = Some(match value()?.as_str() {
                    "sqlite" => Kind::Sqlite,
                    "postgres" | "postgresql" | "pg" => Kind::Postgres,
                    "mysql" | "mariadb" => Kind::Mysql,
                    other => return Err(format!("unknown backend {other:?}")),
                })
            }
            "--clients" => {
                cfg.clients = value()?
                    .split(',')
                    .map(|c| positive::<usize>("--clients", c))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => cfg.seconds = positive_f64("--seconds", &value()?)?,
            "--warmup" => {
                let v = value()?;
                cfg.warmup = v
                    .parse::<f64>()
                    .ok()
                    .filter(|w| *w >= 0.0 && w.is_finite())
                    .ok_or_else(|| format!("--warmup: {v:?} is not a number >= 0"))?;
            }
            "--url" => cfg.url = Some(value()?),
            "--instances" => cfg.instances = positive("--instances", &value()?)?,
            "--pool" => cfg.pool = Some(positive("--pool", &value()?)?),
            "--no-ping" => cfg.ping = false,
            "--pessimistic" => cfg.pessimistic = true,
            "--one-checkout" => cfg.one_checkout = true,
            "--only" => {
                cfg.only = Some(match value()?.as_str() {
                    "fsm" => Side::Fsm,
                    "baseline" => Side::Baseline,
                    other => return Err(format!("--only: {other:?} is neither fsm nor baseline")),
                })
            }
            "--rounds" => cfg.rounds = positive("--rounds", &value()?)?,
            "--hot-clients" => cfg.hot_clients = positive("--hot-clients", &value()?)?,
            "--no-hot" => cfg.hot = false,
            "--hot-only" => cfg.pairs = false,
            "--dispatch" => cfg.dispatch = true,
            "--dispatch-only" => {
                cfg.dispatch = true;
                cfg.pairs = false;
                cfg.hot = false;
            }
            "--dispatch-effects" => {
                cfg.dispatch_effects = positive("--dispatch-effects", &value()?)?
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    cfg.kind = kind.ok_or("--backend is required")?;
    if !cfg.pairs && !cfg.hot && !cfg.dispatch {
        return Err("--no-hot and --hot-only leave nothing to run".into());
    }
    Ok(cfg)
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| format!("{flag}: {v:?} is not a positive integer"))
}

fn positive_f64(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0 && n.is_finite())
        .ok_or_else(|| format!("{flag}: {v:?} is not a positive number"))
}

// ---------------------------------------------------------------------------------------
// What both sides write, built by hand for the baseline.

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The idempotency key of a client's `seq`-th fire (unique per run).
fn key_of(client: usize, seq: u64) -> String {
    format!("req-{client:03}-{seq:010}")
}

/// The note of a client's `seq`-th fire: 8 characters, so contexts grow by 11 bytes.
fn note_of(seq: u64) -> String {
    format!("n{:07}", seq % 10_000_000)
}

/// `serde_json` of `Trigger::Event(OrderEvent::Annotate(Note(note)))`.
fn payload_json(note: &str) -> String {
    format!(r#"{{"event":{{"Annotate":"{note}"}}}}"#)
}

/// `serde_json` of `OrderEffect::Noted(note)`.
fn effect_json(note: &str) -> String {
    format!(r#"{{"Noted":"{note}"}}"#)
}

/// The stored context with `note` appended to `notes`: what the `annotate` action does,
/// done on the JSON text (the notes array closes the object).
fn context_with(context: &str, note: &str) -> Res<String> {
    let body = context
        .strip_suffix("]}")
        .ok_or("context does not end with the notes array")?;
    let mut out = String::with_capacity(context.len() + note.len() + 3);
    out.push_str(body);
    if !body.ends_with('[') {
        out.push(',');
    }
    out.push('"');
    out.push_str(note);
    out.push_str("\"]}");
    Ok(out)
}

/// The context instances are seeded with, its fingerprint (as `create` stores it).
fn seed_context() -> Res<(String, Vec<u8>)> {
    let context = OrderData {
        total_cents: 500,
        paid_cents: 500,
        notes: Vec::new(),
    };
    let fingerprint = fsm_core::command::fingerprint(&context)?;
    Ok((serde_json::to_string(&context)?, fingerprint.0.to_vec()))
}

/// The hand-built strings are byte-identical to fsm's serialization.
fn check_hand_built_json() -> Res<()> {
    let note = note_of(42);
    let trigger: Trigger<OrderEvent> = Trigger::Event(OrderEvent::Annotate(Note(note.clone())));
    ensure(
        serde_json::to_string(&trigger)? == payload_json(&note),
        "payload",
    )?;
    ensure(
        serde_json::to_string(&OrderEffect::Noted(note.clone()))? == effect_json(&note),
        "effect",
    )?;
    let mut context = OrderData {
        total_cents: 500,
        paid_cents: 500,
        notes: Vec::new(),
    };
    let mut text = serde_json::to_string(&context)?;
    for i in 0..3 {
        let note = note_of(i);
        text = context_with(&text, &note)?;
        context.notes.push(note);
        ensure(serde_json::to_string(&context)? == text, "context")?;
    }
    ensure(
        <Order as StateMachine>::DEFINITION.name == MACHINE,
        "machine name",
    )?;
    let name = <Order as StateMachine>::event_name(&OrderEvent::Annotate(Note(note)));
    ensure(name == "Annotate", "event name")
}

fn ensure(ok: bool, what: &str) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("hand-built {what} differs from fsm's").into())
    }
}

/// Every statement the baseline issues appears verbatim in the store's source, so the
/// two sides cannot drift apart silently.
fn check_statements(file: &str, statements: &[&str]) -> Res<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fsm-sqlx/src")
        .join(file);
    let source = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {} to check the SQL: {e}", path.display()))?;
    for statement in statements {
        if !source.contains(statement) {
            return Err(format!(
                "the baseline's statement is not in {} any more, update examples/bench.rs:\n{statement}",
                path.display()
            )
            .into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Backends: a fresh database per run, the fsm store on it, and the baseline loop.

/// One run's database.
trait Db: Sized + Send + Sync + 'static {
    type Store: fsm_sqlx::DurableStore;

    /// The statements the baseline issues and the store's source file.
    fn check(cfg: &Config) -> Res<()>;

    /// A fresh, migrated database whose store runs in `mode` and retries with `retry`.
    fn open(
        cfg: &Config,
        run: usize,
        mode: Concurrency,
        retry: RetryPolicy,
    ) -> impl Future<Output = Res<Self>> + Send;

    fn store(&self) -> &Arc<Self::Store>;

    /// Inserts instances `ids` in state `Paid` at version 0.
    fn seed(&self, ids: &[String]) -> impl Future<Output = Res<()>> + Send;

    /// One transition by hand: the store's read and write statements.
    fn baseline(&self, id: &str, key: &str, note: &str) -> impl Future<Output = Res<()>> + Send;

    /// Drops the database.
    fn close(self) -> impl Future<Output = Res<()>> + Send;
}

/// What the baseline's read returns, decoded as the store decodes it.
struct Read {
    state: String,
    version: i64,
    context: String,
}

/// What the baseline writes for one transition.
struct Planned {
    version: i64,
    context: String,
    payload: String,
    effects: Vec<String>,
    at: i64,
}

fn plan(read: &Read, note: &str) -> Res<Planned> {
    if read.state != STATE {
        return Err(format!("unexpected state {}", read.state).into());
    }
    Ok(Planned {
        version: read.version + 1,
        context: context_with(&read.context, note)?,
        payload: payload_json(note),
        effects: vec![effect_json(note)],
        at: now_ms(),
    })
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use super::*;
    use fsm_sqlx::SqliteStore;
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    use sqlx::{Connection, Row, SqlitePool};

    // Copied from fsm-sqlx/src/sqlite.rs; `check` proves they are still there.
    const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = ?3
WHERE m.machine_type = ?1 AND m.machine_id = ?2";
    const CAS: &str = "\
UPDATE fsm_machines SET state = ?1, version = ?2, context = ?3, updated_at = ?4
WHERE machine_type = ?5 AND machine_id = ?6 AND version = ?7";
    const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
    const OUTBOX: &str = "\
INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    const BEGIN: &str = "BEGIN IMMEDIATE";
    const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?6)";

    pub(super) struct SqliteDb {
        store: Arc<SqliteStore>,
        pool: SqlitePool,
        path: PathBuf,
        one_checkout: bool,
    }

    impl Db for SqliteDb {
        type Store = SqliteStore;

        fn check(_: &Config) -> Res<()> {
            check_statements(
                "sqlite.rs",
                &[READ, CAS, RECORD, OUTBOX, "\"BEGIN IMMEDIATE\""],
            )
        }

        async fn open(
            cfg: &Config,
            run: usize,
            mode: Concurrency,
            retry: RetryPolicy,
        ) -> Res<Self> {
            let path =
                std::env::temp_dir().join(format!("fsm-bench-{}-{run}.db", std::process::id()));
            remove_files(&path);
            let store = if cfg.pool.is_none() && cfg.ping {
                // As an application would: WAL, synchronous = NORMAL, 8 connections.
                SqliteStore::open(&path).await?
            } else {
                // `SqliteStore::open`'s options, with another pool size or no ping.
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                let pool = SqlitePoolOptions::new()
                    .max_connections(cfg.pool.unwrap_or(8))
                    .test_before_acquire(cfg.ping)
                    .connect_with(options)
                    .await?;
                SqliteStore::from_pool(pool)
            };
            let store = store.with_retry(retry).with_concurrency(mode);
            store.migrate().await?;
            let pool = store.pool().clone();
            Ok(SqliteDb {
                store: Arc::new(store),
                pool,
                path,
                one_checkout: cfg.one_checkout,
            })
        }

        fn store(&self) -> &Arc<SqliteStore> {
            &self.store
        }

        async fn seed(&self, ids: &[String]) -> Res<()> {
            let (context, init) = seed_context()?;
            let mut tx = self.pool.begin().await?;
            for id in ids {
                sqlx::query(SEED)
                    .bind(MACHINE)
                    .bind(id)
                    .bind(STATE)
                    .bind(&context)
                    .bind(&init)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn baseline(&self, id: &str, key: &str, note: &str) -> Res<()> {
            let mut conn = self.pool.acquire().await?;
            let row = sqlx::query(READ)
                .bind(MACHINE)
                .bind(id)
                .bind(Some(key))
                .fetch_optional(&mut *conn)
                .await?
                .ok_or("instance not found")?;
            let read = Read {
                state: row.try_get(0)?,
                version: row.try_get(1)?,
                context: row.try_get(2)?,
            };
            let _init: Vec<u8> = row.try_get(3)?;
            if row.try_get::<Option<i64>, _>(4)?.is_some() {
                return Err("key already recorded".into());
            }
            let w = plan(&read, note)?;
            // Like the store: one pool checkout for the read, another for the write.
            if !self.one_checkout {
                drop(conn);
                conn = self.pool.acquire().await?;
            }
            let mut tx = Connection::begin_with(&mut *conn, BEGIN).await?;
            let updated = sqlx::query(CAS)
                .bind(STATE)
                .bind(w.version)
                .bind(&w.context)
                .bind(w.at)
                .bind(MACHINE)
                .bind(id)
                .bind(read.version)
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() != 1 {
                return Err("compare-and-set missed".into());
            }
            sqlx::query(RECORD)
                .bind(MACHINE)
                .bind(id)
                .bind(w.version)
                .bind(STATE)
                .bind("Annotate")
                .bind(&w.payload)
                .bind(STATE)
                .bind(Some(key))
                .bind(Some(&FINGERPRINT[..]))
                .bind(w.at)
                .execute(&mut *tx)
                .await?;
            for (seq, effect) in (0i64..).zip(&w.effects) {
                sqlx::query(OUTBOX)
                    .bind(MACHINE)
                    .bind(id)
                    .bind(w.version)
                    .bind(seq)
                    .bind(effect)
                    .bind(w.at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn close(self) -> Res<()> {
            drop(self.store);
            self.pool.close().await;
            remove_files(&self.path);
            Ok(())
        }
    }

    fn remove_files(path: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            let _ = std::fs::remove_file(name);
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::str::FromStr;

    use super::*;
    use fsm_sqlx::PgStore;
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{PgPool, Row};

    // Copied from fsm-sqlx/src/postgres.rs; `check` proves they are still there.
    const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = $3
WHERE m.machine_type = $1 AND m.machine_id = $2";
    const WRITE: &str = "\
WITH updated AS (
    UPDATE fsm_machines SET state = $4, version = $5, context = $6, updated_at = $7
    WHERE machine_type = $1 AND machine_id = $2 AND version = $3
    RETURNING machine_type, machine_id, version, state, updated_at
), recorded AS (
    INSERT INTO fsm_transitions
      (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
    SELECT machine_type, machine_id, version, $8, $9, $10, state, $11, $12, updated_at
    FROM updated
), queued AS (
    INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at)
    SELECT u.machine_type, u.machine_id, u.version, e.seq - 1, e.effect, u.updated_at
    FROM updated u, unnest($13::text[]) WITH ORDINALITY AS e(effect, seq)
), armed AS (
    INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at)
    SELECT u.machine_type, u.machine_id, u.version, t.edge, t.due_at
    FROM updated u, unnest($14::int4[], $15::int8[]) AS t(edge, due_at)
)
SELECT count(*) FROM updated";
    const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
SELECT $1, id, $3, 0, $4, $5, $6, $6 FROM unnest($2::text[]) AS s(id)";

    pub(super) fn url(cfg: &Config) -> String {
        cfg.url
            .clone()
            .or_else(|| std::env::var("FSM_POSTGRES_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    pub(super) struct PgDb {
        store: Arc<PgStore>,
        pool: PgPool,
        admin: PgPool,
        schema: String,
        one_checkout: bool,
    }

    impl Db for PgDb {
        type Store = PgStore;

        fn check(_: &Config) -> Res<()> {
            check_statements("postgres.rs", &[READ, WRITE])
        }

        async fn open(
            cfg: &Config,
            run: usize,
            mode: Concurrency,
            retry: RetryPolicy,
        ) -> Res<Self> {
            let options = PgConnectOptions::from_str(&url(cfg))?;
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            // Generated from numbers only: nothing from outside is spliced in.
            let schema = format!("fsm_bench_{}_{run}", std::process::id());
            sqlx::raw_sql(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .execute(&admin)
            .await?;
            let pool = PgPoolOptions::new()
                .max_connections(cfg.pool.unwrap_or(8))
                .test_before_acquire(cfg.ping)
                .connect_with(options.options([("search_path", schema.as_str())]))
                .await?;
            let store = PgStore::from_pool(pool.clone())
                .with_retry(retry)
                .with_concurrency(mode);
            store.migrate().await?;
            Ok(PgDb {
                store: Arc::new(store),
                pool,
                admin,
                schema,
                one_checkout: cfg.one_checkout,
            })
        }

        fn store(&self) -> &Arc<PgStore> {
            &self.store
        }

        async fn seed(&self, ids: &[String]) -> Res<()> {
            let (context, init) = seed_context()?;
            sqlx::query(SEED)
                .bind(MACHINE)
                .bind(ids)
                .bind(STATE)
                .bind(&context)
                .bind(&init)
                .bind(now_ms())
                .execute(&self.pool)
                .await?;
            sqlx::raw_sql("ANALYZE").execute(&self.pool).await?;
            Ok(())
        }

        async fn baseline(&self, id: &str, key: &str, note: &str) -> Res<()> {
            let mut conn = self.pool.acquire().await?;
            let row = sqlx::query(READ)
                .bind(MACHINE)
                .bind(id)
                .bind(Some(key))
                .fetch_optional(&mut *conn)
                .await?
                .ok_or("instance not found")?;
            let read = Read {
                state: row.try_get(0)?,
                version: row.try_get(1)?,
                context: row.try_get(2)?,
            };
            let _init: Vec<u8> = row.try_get(3)?;
            if row.try_get::<Option<i64>, _>(4)?.is_some() {
                return Err("key already recorded".into());
            }
            let w = plan(&read, note)?;
            // Like the store: one pool checkout for the read, another for the write.
            if !self.one_checkout {
                drop(conn);
                conn = self.pool.acquire().await?;
            }
            let updated: i64 = sqlx::query(WRITE)
                .bind(MACHINE)
                .bind(id)
                .bind(read.version)
                .bind(STATE)
                .bind(w.version)
                .bind(&w.context)
                .bind(w.at)
                .bind(STATE)
                .bind("Annotate")
                .bind(&w.payload)
                .bind(Some(key))
                .bind(Some(&FINGERPRINT[..]))
                .bind(&w.effects)
                // No timer to arm: `Paid` has no `after(..)` edge.
                .bind(Vec::<i32>::new())
                .bind(Vec::<i64>::new())
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            if updated != 1 {
                return Err("compare-and-set missed".into());
            }
            Ok(())
        }

        async fn close(self) -> Res<()> {
            drop(self.store);
            self.pool.close().await;
            sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
                .execute(&self.admin)
                .await?;
            self.admin.close().await;
            Ok(())
        }
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use std::str::FromStr;

    use super::*;
    use fsm_sqlx::MySqlStore;
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sqlx::{Connection, MySqlPool, Row};

    // Copied from fsm-sqlx/src/mysql.rs; `check` proves they are still there. The
    // store builds the outbox INSERT from OUTBOX_HEAD and one OUTBOX_ROW per effect.
    const READ: &str = "\
SELECT m.state, m.version, m.context, m.init_fingerprint,
       t.version, t.from_state, t.payload, t.to_state, t.idem_key, t.fingerprint, t.at
FROM fsm_machines m
LEFT JOIN fsm_transitions t
  ON t.machine_type = m.machine_type AND t.machine_id = m.machine_id AND t.idem_key = ?
WHERE m.machine_type = ? AND m.machine_id = ?";
    const CAS: &str = "\
UPDATE fsm_machines SET state = ?, version = ?, context = ?, updated_at = ?
WHERE machine_type = ? AND machine_id = ? AND version = ?";
    const RECORD: &str = "\
INSERT INTO fsm_transitions
  (machine_type, machine_id, version, from_state, event, payload, to_state, idem_key, fingerprint, at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    const OUTBOX_HEAD: &str = "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, available_at) VALUES ";
    const OUTBOX_ROW: &str = "(?, ?, ?, ?, ?, ?)";
    const SEED: &str = "\
INSERT INTO fsm_machines
  (machine_type, machine_id, state, version, context, init_fingerprint, created_at, updated_at)
VALUES (?, ?, ?, 0, ?, ?, ?, ?)";

    pub(super) fn url(cfg: &Config) -> String {
        cfg.url
            .clone()
            .or_else(|| std::env::var("FSM_MYSQL_URL").ok())
            .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".to_owned())
    }

    pub(super) struct MySqlDb {
        store: Arc<MySqlStore>,
        pool: MySqlPool,
        admin: MySqlPool,
        database: String,
        outbox: String,
        one_checkout: bool,
    }

    impl Db for MySqlDb {
        type Store = MySqlStore;

        fn check(_: &Config) -> Res<()> {
            check_statements(
                "mysql.rs",
                &[
                    READ,
                    CAS,
                    RECORD,
                    OUTBOX_HEAD,
                    OUTBOX_ROW,
                    "self.pool.begin()",
                ],
            )
        }

        async fn open(
            cfg: &Config,
            run: usize,
            mode: Concurrency,
            retry: RetryPolicy,
        ) -> Res<Self> {
            let options = MySqlConnectOptions::from_str(&url(cfg))?;
            let admin = MySqlPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await?;
            // Generated from numbers only: nothing from outside is spliced in.
            let database = format!("fsm_bench_{}_{run}", std::process::id());
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database}"))
                .execute(&admin)
                .await?;
            sqlx::raw_sql(&format!("CREATE DATABASE {database}"))
                .execute(&admin)
                .await?;
            let pool = MySqlPoolOptions::new()
                .max_connections(cfg.pool.unwrap_or(8))
                .test_before_acquire(cfg.ping)
                .connect_with(options.database(&database))
                .await?;
            let store = MySqlStore::from_pool(pool.clone())
                .with_retry(retry)
                .with_concurrency(mode);
            store.migrate().await?;
            Ok(MySqlDb {
                store: Arc::new(store),
                pool,
                admin,
                database,
                // What the store's `outbox_insert(1)` builds for one effect.
                outbox: format!("{OUTBOX_HEAD}{OUTBOX_ROW}"),
                one_checkout: cfg.one_checkout,
            })
        }

        fn store(&self) -> &Arc<MySqlStore> {
            &self.store
        }

        async fn seed(&self, ids: &[String]) -> Res<()> {
            let (context, init) = seed_context()?;
            let mut tx = self.pool.begin().await?;
            for id in ids {
                let now = now_ms();
                sqlx::query(SEED)
                    .bind(MACHINE)
                    .bind(id)
                    .bind(STATE)
                    .bind(&context)
                    .bind(&init)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            sqlx::raw_sql("ANALYZE TABLE fsm_machines, fsm_transitions, fsm_outbox")
                .execute(&self.pool)
                .await?;
            Ok(())
        }

        async fn baseline(&self, id: &str, key: &str, note: &str) -> Res<()> {
            let mut conn = self.pool.acquire().await?;
            let row = sqlx::query(READ)
                .bind(Some(key))
                .bind(MACHINE)
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or("instance not found")?;
            let read = Read {
                state: row.try_get(0)?,
                version: row.try_get(1)?,
                context: row.try_get(2)?,
            };
            let _init: Vec<u8> = row.try_get(3)?;
            if row.try_get::<Option<i64>, _>(4)?.is_some() {
                return Err("key already recorded".into());
            }
            let w = plan(&read, note)?;
            // Like the store: one pool checkout for the read, another for the write.
            if !self.one_checkout {
                drop(conn);
                conn = self.pool.acquire().await?;
            }
            let mut tx = Connection::begin(&mut *conn).await?;
            let updated = sqlx::query(CAS)
                .bind(STATE)
                .bind(w.version)
                .bind(&w.context)
                .bind(w.at)
                .bind(MACHINE)
                .bind(id)
                .bind(read.version)
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() != 1 {
                return Err("compare-and-set missed".into());
            }
            sqlx::query(RECORD)
                .bind(MACHINE)
                .bind(id)
                .bind(w.version)
                .bind(STATE)
                .bind("Annotate")
                .bind(&w.payload)
                .bind(STATE)
                .bind(Some(key))
                .bind(Some(&FINGERPRINT[..]))
                .bind(w.at)
                .execute(&mut *tx)
                .await?;
            let mut outbox = sqlx::query(&self.outbox);
            for (seq, effect) in (0i32..).zip(&w.effects) {
                outbox = outbox
                    .bind(MACHINE)
                    .bind(id)
                    .bind(w.version)
                    .bind(seq)
                    .bind(effect)
                    .bind(w.at);
            }
            outbox.execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn close(self) -> Res<()> {
            drop(self.store);
            self.pool.close().await;
            sqlx::raw_sql(&format!("DROP DATABASE {}", self.database))
                .execute(&self.admin)
                .await?;
            self.admin.close().await;
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// Driving clients and measuring.

/// When a run warms up, measures, and stops.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    until: Instant,
    seconds: f64,
    cpu_at_start: Option<Duration>,
}

impl Window {
    fn new(cfg: &Config) -> Window {
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
struct ClientLog {
    /// Latencies of operations started inside the window.
    latencies: Vec<Duration>,
    /// Fires applied over the whole run (warm-up included).
    applied: u64,
    /// Fires that gave up after the retry policy was exhausted (hot row).
    gave_up: u64,
    /// Compare-and-set races lost (hot row, counted mode).
    retries: u64,
    /// Versions of the applied transitions (hot row).
    versions: Vec<u64>,
}

/// Throughput and latency of one run.
#[derive(Debug, Clone, Copy)]
struct Stats {
    tps: f64,
    p50: Duration,
    p99: Duration,
    samples: usize,
    /// Fires applied over the whole run, warm-up included.
    fires: u64,
    /// The 1-minute load average at the end of the run: the machine is shared.
    load: Option<f64>,
    /// CPU time of this process (every thread: clients, sqlx, SQLite itself) per
    /// applied fire, over the whole run.
    cpu_per_fire: Option<Duration>,
}

fn stats(window: &Window, logs: &[ClientLog]) -> Stats {
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
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `nproc` and the CPU model (Linux).
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}")
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
fn deal(instances: usize, clients: usize) -> (Vec<String>, Vec<Vec<String>>) {
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
async fn join(handles: Vec<tokio::task::JoinHandle<Res<ClientLog>>>) -> Res<Vec<ClientLog>> {
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

/// Drops the run's database whether or not the run succeeded.
async fn closing<D: Db, T>(db: Arc<D>, result: Res<T>) -> Res<T> {
    let db = Arc::into_inner(db).ok_or("database still shared")?;
    let closed = db.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Fsm,
    Baseline,
}

/// One uncontended run: `clients` clients, each at its own instances.
async fn run_pair_side<D: Db>(cfg: &Config, run: usize, clients: usize, side: Side) -> Res<Stats> {
    let mode = if cfg.pessimistic && side == Side::Fsm {
        Concurrency::Pessimistic
    } else {
        Concurrency::Optimistic
    };
    let db = Arc::new(D::open(cfg, run, mode, RetryPolicy::default()).await?);
    let result = pair_side_on(cfg, &db, clients, side).await;
    closing(db, result).await
}

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

struct PairRow {
    clients: usize,
    fsm: Stats,
    baseline: Stats,
    ratios: Vec<f64>,
    /// 1-minute load averages at the end of each run.
    loads: Vec<f64>,
}

async fn run_pairs<D: Db>(cfg: &Config, run: &mut usize) -> Res<Vec<PairRow>> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HotMode {
    /// The store's default retry policy, as shipped.
    StorePolicy,
    /// `RetryPolicy::NONE` in the store, the default policy applied by the client.
    Counted,
    /// `Concurrency::Pessimistic`: the row is locked while deciding, writers queue.
    Pessimistic,
}

struct HotRow {
    mode: HotMode,
    clients: usize,
    stats: Stats,
    applied: u64,
    gave_up: u64,
    retries: Option<u64>,
    final_version: u64,
    lost: i64,
    gapless: bool,
    context_bytes: usize,
}

async fn run_hot<D: Db>(cfg: &Config, run: usize, mode: HotMode) -> Res<HotRow> {
    let (concurrency, store_policy) = match mode {
        HotMode::StorePolicy => (Concurrency::Optimistic, RetryPolicy::default()),
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

async fn bench<D: Db>(cfg: &Config) -> Res<()> {
    check_hand_built_json()?;
    D::check(cfg)?;
    let mut run = 0;
    let pairs = if cfg.pairs {
        run_pairs::<D>(cfg, &mut run).await?
    } else {
        Vec::new()
    };
    let mut hot = Vec::new();
    if cfg.hot {
        for mode in [HotMode::StorePolicy, HotMode::Counted, HotMode::Pessimistic] {
            run += 1;
            hot.push(run_hot::<D>(cfg, run, mode).await?);
        }
    }
    report(cfg, &pairs, &hot);
    if cfg.dispatch {
        let mut rows = Vec::new();
        for workers in [1, 4] {
            run += 1;
            rows.push(run_dispatch::<D>(cfg, run, workers).await?);
        }
        report_dispatch(cfg, &rows);
    }
    Ok(())
}

/// One dispatcher measurement: the outbox drained by `workers` concurrent dispatchers.
struct DispatchRow {
    workers: usize,
    effects: usize,
    handled: usize,
    elapsed: Duration,
    load: Option<f64>,
}

/// Fills the outbox through fsm (8 clients firing keyed `Annotate`s at their own
/// instances, one `Noted` effect each), then times `workers` dispatchers draining it
/// with a no-op handler: claim (`FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL), hand
/// over, mark done.
async fn run_dispatch<D: Db>(cfg: &Config, run: usize, workers: usize) -> Res<DispatchRow> {
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
                    std::future::ready(Ok::<(), fsm_core::error::BoxError>(()))
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

fn report_dispatch(cfg: &Config, rows: &[DispatchRow]) {
    println!(
        "\n## {}: outbox dispatcher (no-op handler, batch 32)\n",
        cfg.kind.name()
    );
    println!("| workers | effects | handled | seconds | effects/s | load |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {} |",
            row.workers,
            row.effects,
            row.handled,
            row.elapsed.as_secs_f64(),
            row.effects as f64 / row.elapsed.as_secs_f64(),
            row.load.map_or("-".into(), |l| format!("{l:.1}"))
        );
    }
}

fn report(cfg: &Config, pairs: &[PairRow], hot: &[HotRow]) {
    let name = cfg.kind.name();
    let loads: Vec<f64> = pairs
        .iter()
        .flat_map(|p| p.loads.iter().copied())
        .chain(hot.iter().filter_map(|h| h.stats.load))
        .collect();
    let (low, high) = loads
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| {
            (l.min(*x), h.max(*x))
        });
    println!(
        "\nMachine: {}; 1-minute load average at the end of the runs: {low:.1} to {high:.1}",
        machine()
    );
    println!(
        "\n### {name}: {} s measured after {} s warm-up, {} instances, pool {}{}, {} round(s)\n",
        cfg.seconds,
        cfg.warmup,
        cfg.instances,
        match (cfg.kind, cfg.pool) {
            (Kind::Sqlite, None) if cfg.ping => "8 (SqliteStore::open)".to_owned(),
            (_, pool) => pool.unwrap_or(8).to_string(),
        },
        [
            (!cfg.ping, " without ping on acquire"),
            (cfg.pessimistic, "; fsm side PESSIMISTIC (experiment)"),
            (
                cfg.one_checkout,
                "; baseline on ONE checkout per fire (experiment)"
            ),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, note)| *note)
        .collect::<String>(),
        cfg.rounds
    );
    if !pairs.is_empty() {
        println!(
            "| clients | fsm tx/s | fsm p50 ms | fsm p99 ms | baseline tx/s | baseline p50 ms | baseline p99 ms | fsm/baseline | goal >= 0.8 | bench-process CPU us/fire, fsm / baseline |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
        for row in pairs {
            let ratio = row.fsm.tps / row.baseline.tps;
            let rounds = if row.ratios.len() > 1 {
                let each: Vec<String> = row.ratios.iter().map(|r| format!("{r:.2}")).collect();
                format!(" ({})", each.join(", "))
            } else {
                String::new()
            };
            println!(
                "| {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {ratio:.2}{rounds} | {} | {:.0} / {:.0} |",
                row.clients,
                row.fsm.tps,
                ms(row.fsm.p50),
                ms(row.fsm.p99),
                row.baseline.tps,
                ms(row.baseline.p50),
                ms(row.baseline.p99),
                if ratio >= 0.8 { "yes" } else { "**no**" },
                us(row.fsm.cpu_per_fire),
                us(row.baseline.cpu_per_fire)
            );
        }
    }
    if !hot.is_empty() {
        println!(
            "\n| hot row ({name}) | clients | tx/s | p50 ms | p99 ms | applied | gave up | CAS retries | retries per applied | lost updates | history gapless | final context bytes |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|");
        for row in hot {
            let (retries, per) = match row.retries {
                Some(r) => (
                    r.to_string(),
                    format!("{:.2}", r as f64 / row.applied.max(1) as f64),
                ),
                None => ("(not observable)".to_owned(), "-".to_owned()),
            };
            println!(
                "| {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {retries} | {per} | {} | {} | {} |",
                match row.mode {
                    HotMode::StorePolicy => "store retries (default policy)",
                    HotMode::Counted => "client retries (NONE + default policy), counted",
                    HotMode::Pessimistic => "pessimistic (row lock, default policy)",
                },
                row.clients,
                row.stats.tps,
                ms(row.stats.p50),
                ms(row.stats.p99),
                row.applied,
                row.gave_up,
                row.lost,
                if row.gapless { "yes" } else { "**no**" },
                row.context_bytes
            );
            debug_assert!(row.final_version as i64 + row.lost == row.applied as i64);
        }
    }
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
