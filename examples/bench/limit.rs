//! `--limit`: fsm against what the database itself does with the same statements, per
//! client count, interleaved (the limit, then fsm, the same seconds each):
//!
//! * PostgreSQL: `pgbench -M prepared` on `benches/pgbench/fire.sql` (the read and the
//!   write `PgStore::fire` sends), `-c` clients = connections, after `setup.sql`.
//! * SQLite: C SQLite through rusqlite (the bundled library) on one connection, one
//!   client: the statements `SqliteStore::fire` issues (read, `BEGIN IMMEDIATE`,
//!   compare-and-set, history, outbox, `COMMIT`), prepared once, on the run's own seeded
//!   file, while fsm's pool is idle and its checkpointing task checkpoints for both.
//! * MySQL: no such client here; the table gives fsm alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::RetryPolicy;
use fsm_sqlx::Concurrency;

use crate::Res;
use crate::cli::{Config, Kind, Side};
use crate::db::{Db, closing};
use crate::measure::{Stats, deal, load_average};
use crate::throughput::run_pair_side;

/// One client count: the limit's transactions per second (if measured) and fsm's run.
pub(crate) struct LimitRow {
    pub(crate) clients: usize,
    pub(crate) limit: Option<f64>,
    pub(crate) fsm: Stats,
    pub(crate) load: Option<f64>,
}

/// What the limit is on backend `kind`, as the table names it.
pub(crate) fn limit_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "pgbench (libpq), tx/s",
        Kind::Sqlite => "C SQLite, 1 connection, tx/s",
        Kind::Mysql => "(none)",
    }
}

/// Every client count of `cfg`: the limit, then fsm.
pub(crate) async fn run_limits<D: Db>(cfg: &Config, run: &mut usize) -> Res<Vec<LimitRow>> {
    let mut rows = Vec::new();
    for &clients in &cfg.clients {
        *run += 1;
        let limit = match cfg.kind {
            Kind::Postgres => pgbench(cfg, clients).await?,
            Kind::Sqlite => Some(c_sqlite::<D>(cfg, *run).await?),
            Kind::Mysql => None,
        };
        *run += 1;
        let fsm = run_pair_side::<D>(cfg, *run, clients, Side::Fsm).await?;
        eprintln!(
            "  {} clients={clients} limit {:>8.0} tx/s  fsm {:>8.0} tx/s  ({:.0} us CPU/fire, load {:.1})",
            cfg.kind.name(),
            limit.unwrap_or(f64::NAN),
            fsm.tps,
            crate::report::us(fsm.cpu_per_fire),
            fsm.load.unwrap_or(f64::NAN)
        );
        rows.push(LimitRow {
            clients,
            limit,
            fsm,
            load: load_average(),
        });
    }
    Ok(rows)
}

/// Without the `postgres` feature there is no PostgreSQL run to compare with.
#[cfg(not(feature = "postgres"))]
async fn pgbench(_: &Config, _: usize) -> Res<Option<f64>> {
    Ok(None)
}

/// pgbench's tps at `clients` connections, or `None` when pgbench or psql is missing.
#[cfg(feature = "postgres")]
async fn pgbench(cfg: &Config, clients: usize) -> Res<Option<f64>> {
    let url = cfg.server_url(
        "FSM_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let (seconds, warmup) = (cfg.seconds, cfg.warmup);
    tokio::task::spawn_blocking(move || -> Res<Option<f64>> {
        use std::process::Command;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pgbench");
        let psql = |args: &[&str]| -> Res<bool> {
            match Command::new("psql")
                .arg(&url)
                .args(["-q", "-v", "ON_ERROR_STOP=1"])
                .args(args)
                .output()
            {
                Ok(out) if out.status.success() => Ok(true),
                Ok(out) => Err(format!("psql: {}", String::from_utf8_lossy(&out.stderr)).into()),
                Err(_) => Ok(false),
            }
        };
        let setup = dir.join("setup.sql");
        if !psql(&["-f", &setup.to_string_lossy()])? {
            eprintln!("  pgbench: psql is not on PATH; no limit measured");
            return Ok(None);
        }
        let separator = if url.contains('?') { '&' } else { '?' };
        let target = format!("{url}{separator}options=-csearch_path%3Dfsm_pgbench");
        let script = dir.join("fire.sql");
        // pgbench has no warm-up: a short run first, discarded.
        let run = |secs: u64| {
            Command::new("pgbench")
                .args(["-n", "-M", "prepared", "-f"])
                .arg(&script)
                .args([
                    "-c",
                    &clients.to_string(),
                    "-j",
                    &clients.min(2).to_string(),
                ])
                .args(["-T", &secs.to_string()])
                .arg(&target)
                .output()
        };
        let measured = (|| -> Res<Option<f64>> {
            if warmup > 0.0 {
                match run(warmup.ceil() as u64) {
                    Err(_) => return Ok(None),
                    Ok(out) if !out.status.success() => {
                        return Err(
                            format!("pgbench: {}", String::from_utf8_lossy(&out.stderr)).into()
                        );
                    }
                    Ok(_) => {}
                }
            }
            let out = match run(seconds.ceil() as u64) {
                Err(_) => {
                    eprintln!("  pgbench is not on PATH; no limit measured");
                    return Ok(None);
                }
                Ok(out) => out,
            };
            let stdout = String::from_utf8_lossy(&out.stdout);
            let tps = stdout
                .lines()
                .find_map(|l| l.strip_prefix("tps = "))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .ok_or_else(|| {
                    format!(
                        "pgbench printed no tps: {stdout}{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            Ok(Some(tps))
        })();
        psql(&["-c", "DROP SCHEMA fsm_pgbench CASCADE"])?;
        measured
    })
    .await?
}

/// C SQLite's transactions per second on one connection, on a fresh seeded run file.
async fn c_sqlite<D: Db>(cfg: &Config, run: usize) -> Res<f64> {
    let db = Arc::new(D::open(cfg, run, Concurrency::default(), RetryPolicy::default()).await?);
    let result = async {
        let (ids, _) = deal(cfg.instances, 1);
        db.seed(&ids).await?;
        let path = db.file().ok_or("no database file")?.to_owned();
        let (seconds, warmup) = (cfg.seconds, cfg.warmup);
        tokio::task::spawn_blocking(move || c_sqlite_loop(&path, &ids, warmup, seconds)).await?
    }
    .await;
    closing(db, result).await
}

#[cfg(feature = "sqlite")]
fn c_sqlite_loop(path: &std::path::Path, ids: &[String], warmup: f64, seconds: f64) -> Res<f64> {
    use crate::baseline::{FINGERPRINT, Read, key_of, note_of, plan};
    use crate::sqlite::{BEGIN, CAS, OUTBOX_HEAD, OUTBOX_ROW, READ, RECORD, WAL_BACKSTOP_PAGES};
    use crate::{MACHINE, STATE};
    use rusqlite::{Connection, OptionalExtension, params};

    let conn = Connection::open(path)?;
    // As `SqliteStore::open` sets them. The run's store, idle meanwhile, checkpoints this
    // connection's WAL from its own task as it does its own connections'; like them, this
    // one checkpoints itself only past the backstop.
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "normal")?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        WAL_BACKSTOP_PAGES.replace('_', ""),
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let outbox = format!("{OUTBOX_HEAD}{OUTBOX_ROW}");
    let measure_from = Instant::now() + Duration::from_secs_f64(warmup);
    let until = measure_from + Duration::from_secs_f64(seconds);
    let mut measured = 0u64;
    for seq in 0u64.. {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let id = &ids[(seq % ids.len() as u64) as usize];
        let (key, note) = (key_of(0, seq), note_of(seq));
        let read = conn
            .prepare_cached(READ)?
            .query_row(params![key, key, MACHINE, id], |row| {
                let recorded: Option<i64> = row.get(4)?;
                let _init: Vec<u8> = row.get(3)?;
                Ok((
                    Read {
                        state: row.get(0)?,
                        version: row.get(1)?,
                        context: row.get(2)?,
                    },
                    recorded,
                ))
            })
            .optional()?
            .ok_or("instance not found")?;
        if read.1.is_some() {
            return Err("key already recorded".into());
        }
        let (read, w) = (&read.0, plan(&read.0, &note)?);
        conn.prepare_cached(BEGIN)?.execute([])?;
        let updated = conn.prepare_cached(CAS)?.execute(params![
            STATE,
            w.version,
            w.context,
            w.at,
            None::<i64>,
            MACHINE,
            id,
            read.version,
            None::<&str>,
            None::<&str>,
            None::<&str>
        ])?;
        if updated != 1 {
            return Err("compare-and-set missed".into());
        }
        conn.prepare_cached(RECORD)?.execute(params![
            MACHINE,
            id,
            w.version,
            STATE,
            "Annotate",
            w.payload,
            STATE,
            key,
            &FINGERPRINT[..],
            w.at
        ])?;
        for (seq, effect) in (0i32..).zip(&w.effects) {
            conn.prepare_cached(&outbox)?
                .execute(params![MACHINE, id, w.version, seq, effect, w.at])?;
        }
        conn.prepare_cached("COMMIT")?.execute([])?;
        if now >= measure_from {
            measured += 1;
        }
    }
    Ok(measured as f64 / seconds)
}

#[cfg(not(feature = "sqlite"))]
fn c_sqlite_loop(_: &std::path::Path, _: &[String], _: f64, _: f64) -> Res<f64> {
    Err("C SQLite needs the sqlite feature".into())
}
