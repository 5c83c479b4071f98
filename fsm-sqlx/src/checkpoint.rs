//! SQLite's WAL checkpoints on a connection of their own, off the writers' path.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them back
//! into the database file, and with `synchronous = NORMAL` it is the only step that
//! waits for the disk (an `fsync` of the WAL, then one of the database). SQLite's own
//! automatic checkpoint runs inside the commit that crosses 1,000 pages, so one writer
//! in every few dozen pays both `fsync`s while holding everyone else up. Measured with
//! `benches/sqlite/batch_floor.py` (2026-12-07): 11,000 fires/s with the automatic
//! checkpoint against 24,000 with `synchronous = OFF`, so most of a fire's cost there
//! was that wait.
//!
//! [`start`] moves it: the store's connections checkpoint only as a backstop
//! ([`BACKSTOP_PAGES`]), and a task checkpoints on a connection of its own, `PASSIVE`
//! (never blocking a writer) every few milliseconds while pages come in. A `PASSIVE`
//! checkpoint never rewinds the WAL, which only restarts from its beginning when a
//! writer finds every frame copied, rare while writes keep coming, so once the WAL
//! holds [`RESTART_PAGES`] and a `PASSIVE` pass copied all of it (no reader held it
//! back) the task tries a `RESTART` checkpoint without waiting for any lock: it goes
//! ahead only at an instant when nothing writes or reads the WAL, holds the write lock
//! while it copies the pages committed since that pass and syncs them (a writer
//! arriving meanwhile waits that long, once per [`RESTART_PAGES`]), and the next writer
//! starts the WAL afresh. Durability is unchanged: a commit was never `fsync`ed under
//! `synchronous = NORMAL`, and the checkpoint syncs the WAL before copying it.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePool};
use sqlx::{ConnectOptions, Connection};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The store's connections checkpoint themselves (`wal_autocheckpoint`) only when the WAL
/// reaches this many pages (64 MiB of 4 KiB pages): when the checkpointer fell far
/// behind, or stopped with the store while its pool lives on.
pub(crate) const BACKSTOP_PAGES: u32 = 16_384;

/// WAL pages after which the checkpointer rewinds the WAL (`RESTART`): 16 MiB of 4 KiB
/// pages.
const RESTART_PAGES: i64 = 4_096;

/// The pause between checkpoints while pages come in.
const ACTIVE: Duration = Duration::from_millis(5);

/// The longest pause between checkpoints of an idle database.
const IDLE: Duration = Duration::from_millis(100);

/// Opens a connection on `options`' database and checkpoints it in a task until the
/// returned guard is dropped (by the last clone of the store) or `pool` closes; `None`
/// when the connection cannot be opened, cannot checkpoint (read-only) or the database is
/// not in WAL mode (an in-memory one, say). Without the task the connections' backstop
/// ([`BACKSTOP_PAGES`]) is the only checkpoint.
pub(crate) async fn start(options: &SqliteConnectOptions, pool: &SqlitePool) -> Option<DropGuard> {
    // No lock wait: a `RESTART` would hold the write lock while it waited for readers.
    let options = options.clone().busy_timeout(Duration::ZERO);
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "SQLite checkpointer not started");
            return None;
        }
    };
    let mode: sqlx::Result<String> = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await;
    let wal = matches!(mode.as_deref(), Ok(m) if m.eq_ignore_ascii_case("wal"));
    // A first pass, so that a database it cannot checkpoint (opened read-only, say) keeps
    // SQLite's own behaviour instead of a task that fails every pass.
    let first = match wal {
        true => pass(&mut conn).await.map_err(|e| e.to_string()),
        false => Err("not in WAL mode".to_owned()),
    };
    let last = match first {
        Ok(wal) => wal,
        Err(why) => {
            tracing::debug!(why, "SQLite checkpointer not started");
            let _ = conn.close().await;
            return None;
        }
    };
    let stop = CancellationToken::new();
    let (ended, closed) = (stop.clone(), pool.close_event());
    tokio::spawn(async move {
        tokio::select! {
            () = run(&mut conn, last) => {}
            () = ended.cancelled() => {}
            () = closed => {}
        }
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the SQLite checkpointer's connection");
        }
    });
    Some(stop.drop_guard())
}

/// Checkpoints for ever (its caller stops it), pausing [`ACTIVE`] after a pass that found
/// new pages and twice as long (up to [`IDLE`]) after each that found none.
async fn run(conn: &mut SqliteConnection, mut last: Wal) {
    let mut pause = ACTIVE;
    let mut failing = false;
    loop {
        tokio::time::sleep(pause).await;
        match pass(conn).await {
            Ok(wal) => {
                pause = if wal == last {
                    (pause * 2).min(IDLE)
                } else {
                    ACTIVE
                };
                last = wal;
                failing = false;
            }
            // Once per run of failures; the store's own backstop checkpoints meanwhile.
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "SQLite checkpoint failed; retrying");
                }
                failing = true;
                pause = IDLE;
            }
        }
    }
}

/// What `PRAGMA wal_checkpoint` reports: pages in the WAL, and how many of them are
/// copied into the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wal {
    pages: i64,
    copied: i64,
}

/// One `PASSIVE` checkpoint, and a `RESTART` one when the WAL has grown to
/// [`RESTART_PAGES`] and the `PASSIVE` one copied all of it. A `RESTART` that found a
/// writer or a reader in its way reports busy and is tried again at a later pass.
async fn pass(conn: &mut SqliteConnection) -> sqlx::Result<Wal> {
    let wal = checkpoint(conn, "PRAGMA wal_checkpoint(PASSIVE)").await?;
    if wal.pages < RESTART_PAGES || wal.copied < wal.pages {
        return Ok(wal);
    }
    checkpoint(conn, "PRAGMA wal_checkpoint(RESTART)").await
}

/// Runs one `PRAGMA wal_checkpoint`; whether it was busy shows in the pages it copied.
async fn checkpoint(conn: &mut SqliteConnection, sql: &'static str) -> sqlx::Result<Wal> {
    let (_busy, pages, copied): (i64, i64, i64) = sqlx::query_as(sql).fetch_one(conn).await?;
    Ok(Wal { pages, copied })
}
