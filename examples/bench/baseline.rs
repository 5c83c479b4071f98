//! The hand-written side: what both sides write (idempotency keys, notes), the JSON the
//! baseline builds by hand, the read it decodes and the write it plans, the binds its
//! statements take, and the start-up checks that keep it honest: the hand-built strings
//! are byte-identical to fsm's serialization, and every statement the baseline issues
//! stands verbatim in the store's source files ([`SQLITE_SOURCES`], [`POSTGRES_SOURCES`],
//! [`MYSQL_SOURCES`]).

use std::path::PathBuf;
use std::time::SystemTime;

use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent};
use fsm_core::{StateMachine, Trigger};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, Pool, Row, Type};

use crate::cli::Kind;
use crate::{MACHINE, Res, STATE};

/// What the baseline binds as the event's fingerprint: 32 bytes, like fsm's SHA-256.
pub(crate) const FINGERPRINT: [u8; 32] = [0x5a; 32];

/// Milliseconds since the Unix epoch, as the stores stamp rows.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The idempotency key of a client's `seq`-th fire (unique per run).
pub(crate) fn key_of(client: usize, seq: u64) -> String {
    format!("req-{client:03}-{seq:010}")
}

/// The note of a client's `seq`-th fire: 8 characters, so contexts grow by 11 bytes.
pub(crate) fn note_of(seq: u64) -> String {
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
pub(crate) fn seed_context() -> Res<(String, Vec<u8>)> {
    let context = OrderData {
        total_cents: 500,
        paid_cents: 500,
        notes: Vec::new(),
    };
    let fingerprint = fsm_core::kit::fingerprint(&context)?;
    Ok((serde_json::to_string(&context)?, fingerprint.0.to_vec()))
}

/// The hand-built strings are byte-identical to fsm's serialization.
pub(crate) fn check_hand_built_json() -> Res<()> {
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

/// `Err` saying that the hand-built `what` differs from fsm's, unless `ok`.
pub(crate) fn ensure(ok: bool, what: &str) -> Res<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("hand-built {what} differs from fsm's").into())
    }
}

// The store's source files, per backend, relative to the workspace root: every
// statement the baseline issues must stand verbatim in one of its backend's files (SQL
// shared by the backends in one, the backend's own in another). When the store's files
// move, edit these lists, nothing else; e.g. for SQLite
// `&["fsm-sqlx/src/dialect/mod.rs", "fsm-sqlx/src/dialect/sqlite.rs"]`.

/// Where `SqliteStore`'s SQL is, and its checkpoint backstop.
pub(crate) const SQLITE_SOURCES: &[&str] = &[
    "fsm-sqlx/src/dialect/mod.rs",
    "fsm-sqlx/src/dialect/sqlite.rs",
    "fsm-sqlx/src/checkpoint.rs",
];
/// Where `PgStore`'s SQL is.
pub(crate) const POSTGRES_SOURCES: &[&str] = &[
    "fsm-sqlx/src/dialect/mod.rs",
    "fsm-sqlx/src/dialect/postgres.rs",
];
/// Where `MySqlStore`'s SQL is.
pub(crate) const MYSQL_SOURCES: &[&str] = &[
    "fsm-sqlx/src/dialect/mod.rs",
    "fsm-sqlx/src/dialect/mysql.rs",
];

/// The store's source files of backend `kind`.
fn store_sources(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Sqlite => SQLITE_SOURCES,
        Kind::Postgres => POSTGRES_SOURCES,
        Kind::Mysql => MYSQL_SOURCES,
    }
}

/// Every statement the baseline issues appears verbatim in the store's source, so the
/// two sides cannot drift apart silently.
pub(crate) fn check_statements(kind: Kind, statements: &[&str]) -> Res<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    let mut sources = Vec::new();
    for file in store_sources(kind) {
        let path = root.join(file);
        let source = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} to check the SQL: {e} (the store's files are listed in examples/bench/baseline.rs)",
                path.display()
            )
        })?;
        paths.push(path.display().to_string());
        sources.push(source);
    }
    for statement in statements {
        if !sources.iter().any(|source| source.contains(statement)) {
            return Err(format!(
                "the baseline's statement is not in {} any more, update examples/bench/{}.rs:\n{statement}",
                paths.join(" or "),
                kind.name()
            )
            .into());
        }
    }
    Ok(())
}

/// What the baseline's read returns, decoded as the store decodes it.
pub(crate) struct Read {
    pub(crate) state: String,
    pub(crate) version: i64,
    pub(crate) context: String,
}

impl Read {
    /// The instance's columns of the store's read (state, version, context, initial
    /// fingerprint), after checking that the key's column is empty: the baseline's keys
    /// are fresh, so no transition may be recorded under one yet.
    pub(crate) fn decode<R>(row: &R) -> Res<Read>
    where
        R: Row,
        usize: ColumnIndex<R>,
        for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
        for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    {
        let read = Read {
            state: row.try_get(0)?,
            version: row.try_get(1)?,
            context: row.try_get(2)?,
        };
        let _init: Vec<u8> = row.try_get(3)?;
        if row.try_get::<Option<i64>, _>(4)?.is_some() {
            return Err("key already recorded".into());
        }
        Ok(read)
    }
}

/// What the baseline writes for one transition.
pub(crate) struct Planned {
    pub(crate) version: i64,
    pub(crate) context: String,
    pub(crate) payload: String,
    pub(crate) effects: Vec<String>,
    pub(crate) at: i64,
}

/// The write of one `Annotate(note)` after `read`.
pub(crate) fn plan(read: &Read, note: &str) -> Res<Planned> {
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

/// The connection the baseline writes on: like the store, a second pool checkout after
/// the read's, unless `--one-checkout` keeps the read's.
pub(crate) async fn write_checkout<DB: Database>(
    pool: &Pool<DB>,
    read_on: PoolConnection<DB>,
    one_checkout: bool,
) -> Res<PoolConnection<DB>> {
    if one_checkout {
        return Ok(read_on);
    }
    drop(read_on);
    Ok(pool.acquire().await?)
}

/// The store's read `sql` of instance `id` and of the transition recorded under `key`,
/// bound in the order every dialect's statement takes (`idem_key`, its fsm 0.1.0 form
/// which for a client key is itself, `machine_type`, `machine_id`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn read<'q, DB>(
    sql: &'q str,
    id: &'q str,
    key: &'q str,
) -> Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
{
    sqlx::query(sql)
        .bind(Some(key))
        .bind(Some(key))
        .bind(MACHINE)
        .bind(id)
}

/// The compare-and-set `UPDATE` `cas` of instance `id` from `read` to `w` and the history
/// `INSERT` `record` of `w` under `key`, bound in the order SQLite's and MySQL's
/// statements take (`UPDATE`: `state, version, context, updated_at`, then
/// `machine_type, machine_id, version`; `INSERT`: the columns' order).
#[cfg(any(feature = "sqlite", feature = "mysql"))]
pub(crate) fn cas_and_record<'q, DB>(
    cas: &'q str,
    record: &'q str,
    id: &'q str,
    key: &'q str,
    read: &Read,
    w: &'q Planned,
) -> (
    Query<'q, DB, DB::Arguments<'q>>,
    Query<'q, DB, DB::Arguments<'q>>,
)
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    Option<&'q str>: Encode<'q, DB> + Type<DB>,
    Option<&'q [u8]>: Encode<'q, DB> + Type<DB>,
    Option<i64>: Encode<'q, DB> + Type<DB>,
{
    let cas = sqlx::query(cas)
        .bind(STATE)
        .bind(w.version)
        .bind(&w.context)
        .bind(w.at)
        // A self-loop: the instance does not re-enter its state.
        .bind(None::<i64>)
        .bind(MACHINE)
        .bind(id)
        .bind(read.version)
        // Decided on a read, not a caller's snapshot: no claim to check.
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(None::<&str>);
    let record = sqlx::query(record)
        .bind(MACHINE)
        .bind(id)
        .bind(w.version)
        .bind(STATE)
        .bind("Annotate")
        .bind(&w.payload)
        .bind(STATE)
        .bind(Some(key))
        .bind(Some(&FINGERPRINT[..]))
        .bind(w.at);
    (cas, record)
}
