//! The conformance and durable suites on SQLite, in a file and in memory.
#![cfg(feature = "sqlite")]

#[macro_use]
mod common;

use std::sync::Arc;

use common::sqlite::SqliteFile;
use fsm_sqlx::{Concurrency, SqliteStore};

mod file {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::new());
}

mod file_pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::with(Concurrency::Pessimistic));
}

mod file_adaptive {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::with(Concurrency::Adaptive));
}

mod file_grouped {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::grouped(Concurrency::Adaptive));
    fsm_core::durable_store_tests!(SqliteFile::grouped(Concurrency::Adaptive));
    common::group::group_commit_tests!(SqliteFile::grouped(Concurrency::Adaptive));
}

// Fires through sqlx's path on a file, as a store built with `from_pool` makes them.
mod file_through_sqlx {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::through_sqlx(Concurrency::Adaptive));
    fsm_core::durable_store_tests!(SqliteFile::through_sqlx(Concurrency::Adaptive));
}

mod file_through_sqlx_grouped {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::through_sqlx_grouped());
    fsm_core::durable_store_tests!(SqliteFile::through_sqlx_grouped());
    common::group::group_commit_tests!(SqliteFile::through_sqlx_grouped());
}

mod file_through_sqlx_pessimistic {
    use super::*;
    fsm_core::store_conformance_tests!(SqliteFile::through_sqlx(Concurrency::Pessimistic));
}

mod memory_grouped {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory()
            .await
            .expect("in-memory SQLite")
            .with_group_commit(fsm_sqlx::GroupCommit::new());
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

mod memory {
    use super::*;
    fsm_core::store_conformance_tests!(async {
        let store = SqliteStore::memory()
            .await
            .expect("in-memory SQLite")
            .without_group_commit();
        store.migrate().await.expect("migrate");
        Arc::new(store)
    });
}

mod durable {
    use super::*;
    fsm_core::durable_store_tests!(SqliteFile::new());
    fsm_core::durable_restart_tests!(SqliteFile::new());
}

#[tokio::test]
async fn a_database_of_the_previous_release_upgrades_in_place() {
    use common::upgrade::{hex, previous_migrator, previous_rows, previous_rows_read_back};
    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    previous_migrator("sqlite")
        .await
        .run(store.pool())
        .await
        .expect("old migrations");
    for sql in previous_rows(|b| format!("X'{}'", hex(b))) {
        sqlx::query(&sql).execute(store.pool()).await.expect(&sql);
    }
    store.migrate().await.expect("upgrade");
    previous_rows_read_back(&store).await;
    store.pool().close().await;
    common::sqlite::remove_files(&path);
}

pruning_100k_done_rows_in_batches_while_transitions_apply!("SQLite", SqliteFile::new().await);

/// The database file of a WAL store grows only when a checkpoint copies pages into it,
/// and the store's own connections checkpoint only past 16,384 pages: a file that grows
/// after a few hundred writes was checkpointed by the store's task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_checkpoints_its_wal_in_a_task_of_its_own() {
    use fsm_core::Store;
    use fsm_core::testing::{Order, OrderData};

    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    let backstop: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
        .fetch_one(store.pool())
        .await
        .expect("wal_autocheckpoint");
    assert_eq!(
        backstop, 16_384,
        "the store's connections leave checkpoints to the task"
    );
    let settled = std::fs::metadata(&path).expect("database file").len();
    let notes = "n".repeat(2_000);
    for n in 0..300 {
        let order = OrderData {
            notes: vec![notes.clone()],
            ..OrderData::default()
        };
        store
            .create::<Order>(&format!("o-{n}"), order)
            .await
            .expect("create");
    }
    let waited = std::time::Instant::now();
    while std::fs::metadata(&path).expect("database file").len() <= settled {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "nothing was checkpointed into the database file within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(store);
    common::sqlite::remove_files(&path);
}

/// Writes `rows` rows of 2 KB through `conn` (a few hundred WAL pages) and tells whether
/// the database file grew within a second: whether anything checkpointed them.
async fn checkpointed_after_writes(
    path: &std::path::Path,
    conn: &mut sqlx::SqliteConnection,
    rows: usize,
) -> bool {
    // Whatever was in flight when the task was told to stop has settled.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = std::fs::metadata(path).expect("database file").len();
    sqlx::query("CREATE TABLE IF NOT EXISTS scratch (body BLOB)")
        .execute(&mut *conn)
        .await
        .expect("scratch table");
    for _ in 0..rows {
        sqlx::query("INSERT INTO scratch (body) VALUES (randomblob(2000))")
            .execute(&mut *conn)
            .await
            .expect("scratch row");
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    std::fs::metadata(path).expect("database file").len() > before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointing_task_ends_with_the_stores_last_clone() {
    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    let pool = store.pool().clone();
    drop(store);
    let mut conn = pool.acquire().await.expect("connection");
    assert!(
        !checkpointed_after_writes(&path, &mut conn, 300).await,
        "something checkpointed the database after the store was dropped"
    );
    drop(conn);
    pool.close().await;
    common::sqlite::remove_files(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointing_task_ends_when_the_stores_pool_closes() {
    use sqlx::{ConnectOptions, Connection};

    let path = std::env::temp_dir().join(format!("{}.db", common::unique_name()));
    let store = SqliteStore::open(&path).await.expect("open SQLite file");
    store.migrate().await.expect("migrate");
    store.pool().close().await;
    // A connection of the test's own, which never checkpoints by itself.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .pragma("wal_autocheckpoint", "0")
        .connect()
        .await
        .expect("connection");
    assert!(
        !checkpointed_after_writes(&path, &mut conn, 300).await,
        "something checkpointed the database after the store's pool closed"
    );
    conn.close().await.expect("close");
    drop(store);
    common::sqlite::remove_files(&path);
}

/// A file store holding instance `o-1` of `Order`, as created.
async fn a_store_with_one_order() -> (SqliteFile, Arc<SqliteStore>) {
    use fsm_core::Store;
    use fsm_core::testing::{Order, OrderData};

    let fixture = SqliteFile::new().await;
    let store = fsm_core::testing::Fixture::store(&fixture);
    store
        .create::<Order>("o-1", OrderData::default())
        .await
        .expect("create");
    (fixture, store)
}

/// Another connection to the fixture's file, holding SQLite's write lock until it
/// commits.
async fn hold_the_write_lock(fixture: &SqliteFile) -> sqlx::SqliteConnection {
    use sqlx::Connection;

    let url = format!("sqlite:{}", fixture.path().display());
    let mut other = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("second connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .expect("take the write lock");
    other
}

/// A fire that finds another connection holding SQLite's write lock waits for it on the
/// store's write lane, as long as the busy timeout allows, and applies once the lock
/// is released; meanwhile the caller's thread is free (on a runtime of one thread, the
/// test's own sleep would not end otherwise).
#[tokio::test(flavor = "current_thread")]
async fn a_fire_waits_for_a_write_lock_held_elsewhere_and_then_applies() {
    use fsm_core::testing::{Order, OrderEvent, OrderState};
    use fsm_core::{Command, Store};

    let (fixture, store) = a_store_with_one_order().await;
    let mut other = hold_the_write_lock(&fixture).await;
    let firing = Arc::clone(&store);
    let fire = tokio::spawn(async move {
        firing
            .fire("o-1", Command::<Order>::new(OrderEvent::Cancel))
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !fire.is_finished(),
        "the fire went ahead while another connection held the write lock"
    );
    sqlx::query("COMMIT")
        .execute(&mut other)
        .await
        .expect("release the write lock");
    let outcome = fire.await.expect("fire task").expect("fire");
    assert_eq!(outcome.transition().to, OrderState::Cancelled);
    let history = store.history::<Order>("o-1").await.expect("history");
    assert_eq!(history.len(), 1);
    drop(other);
    fsm_core::testing::Fixture::cleanup(fixture).await;
}

/// A file store reads what a fire decides on under SQLite's write lock: even an
/// optimistic store that never retries a lost race loses none when 32 callers fire at
/// one instance at once. Every fire applies, in a gapless history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_racing_fires_at_one_instance_all_apply_without_retries() {
    use fsm_core::testing::{Note, Order, OrderData, OrderEvent};
    use fsm_core::{Command, RetryPolicy, Store};

    for grouped in [false, true] {
        let fixture = match grouped {
            false => SqliteFile::with(Concurrency::Optimistic).await,
            true => SqliteFile::grouped(Concurrency::Optimistic).await,
        };
        let store = fsm_core::testing::Fixture::store(&fixture);
        let store = Arc::new(SqliteStore::clone(&store).with_retry(RetryPolicy::NONE));
        store
            .create::<Order>("o-1", OrderData::default())
            .await
            .expect("create");
        let fires: Vec<_> = (0..32)
            .map(|n| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let note = OrderEvent::Annotate(Note(format!("note {n}")));
                    store
                        .fire(
                            "o-1",
                            Command::<Order>::new(note).with_key(format!("k-{n}")),
                        )
                        .await
                })
            })
            .collect();
        for fire in fires {
            fire.await
                .expect("fire task")
                .unwrap_or_else(|e| panic!("grouped={grouped}: {e:?}"));
        }
        let history = store.history::<Order>("o-1").await.expect("history");
        let versions: Vec<u64> = history.iter().map(|t| t.version).collect();
        assert_eq!(
            versions,
            (1..=32).collect::<Vec<u64>>(),
            "grouped={grouped}"
        );
        drop(store);
        fsm_core::testing::Fixture::cleanup(fixture).await;
    }
}

/// A store opened read-only writes nothing, whatever path its fires take.
#[tokio::test]
async fn a_read_only_store_refuses_to_fire() {
    use fsm_core::testing::{Order, OrderEvent};
    use fsm_core::{Command, Error, Store};

    let (fixture, store) = a_store_with_one_order().await;
    let url = format!("sqlite:{}?mode=ro", fixture.path().display());
    let read_only = SqliteStore::connect(&url).await.expect("read-only store");
    let err = read_only
        .fire("o-1", Command::<Order>::new(OrderEvent::Cancel))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    let snapshot = store.load::<Order>("o-1").await.expect("load");
    assert_eq!(snapshot.version, 0, "the read-only store wrote");
    read_only.pool().close().await;
    fsm_core::testing::Fixture::cleanup(fixture).await;
}

/// A write SQLite refuses (here a trigger on the history) fails that fire alone, with a
/// database error that keeps sqlx's error as its source, and leaves its instance as it
/// was; fires at other instances, in one transaction with it or not, apply. The fires
/// are sent while another connection holds the write lock, so that with group commit
/// they queue into one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sqlite_refuses_fails_only_its_own_fire_and_changes_nothing() {
    use fsm_core::testing::{Order, OrderData, OrderEvent};
    use fsm_core::{Command, Store};

    for grouped in [false, true] {
        let fixture = match grouped {
            false => SqliteFile::new().await,
            true => SqliteFile::grouped(Concurrency::Adaptive).await,
        };
        let store = fsm_core::testing::Fixture::store(&fixture);
        let ids: Vec<String> = (0..16).map(|n| format!("o-{n}")).collect();
        for id in &ids {
            store
                .create::<Order>(id, OrderData::default())
                .await
                .expect("create");
        }
        sqlx::query(
            "CREATE TRIGGER refuse_o_7 BEFORE INSERT ON fsm_transitions
             WHEN NEW.machine_id = 'o-7'
             BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END",
        )
        .execute(store.pool())
        .await
        .expect("trigger");
        let mut other = hold_the_write_lock(&fixture).await;
        let fires: Vec<_> = ids
            .iter()
            .map(|id| {
                let (store, id) = (Arc::clone(&store), id.clone());
                tokio::spawn(async move {
                    store
                        .fire(&id, Command::<Order>::new(OrderEvent::Cancel))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sqlx::query("COMMIT")
            .execute(&mut other)
            .await
            .expect("release the write lock");
        drop(other);
        for (id, fire) in ids.iter().zip(fires) {
            let fired = fire.await.expect("fire task");
            let version = store.load::<Order>(id).await.expect("load").version;
            if id == "o-7" {
                let err = fired.expect_err("a refused write applied");
                common::faults::assert_transient_database_error(&err);
                let fsm_core::Error::Database { source, .. } = &err else {
                    unreachable!()
                };
                assert!(
                    source.to_string().contains("refused by a trigger"),
                    "grouped={grouped}: {source}"
                );
                assert_eq!(version, 0, "grouped={grouped}: the refused fire wrote");
            } else {
                fired.unwrap_or_else(|e| panic!("grouped={grouped}, {id}: {e:?}"));
                assert_eq!(version, 1, "grouped={grouped}, {id}");
            }
        }
        drop(store);
        fsm_core::testing::Fixture::cleanup(fixture).await;
    }
}

/// Not a test but a measurement, run by hand (`cargo test --release -p fsm-sqlx --test
/// sqlite -- --ignored --nocapture creates_beside`): 32 tasks fire at 256 instances for
/// 8 s while one task creates an instance every 5 ms through sqlx's path, which waits
/// for SQLite's write lock in the busy handler. Prints the fires, the creates and the
/// slowest create (BENCHMARKS.md, "SQLite's write lane").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints figures"]
async fn creates_beside_32_firing_clients() {
    use std::time::{Duration, Instant};

    use fsm_core::testing::{Note, Order, OrderData, OrderEvent};
    use fsm_core::{Command, Store};

    let fixture = SqliteFile::grouped(Concurrency::Adaptive).await;
    let store = fsm_core::testing::Fixture::store(&fixture);
    for n in 0..256 {
        store
            .create::<Order>(&format!("o-{n}"), OrderData::default())
            .await
            .expect("create");
    }
    let stop = Instant::now() + Duration::from_secs(8);
    let firing: Vec<_> = (0..32)
        .map(|client| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut fires = 0u64;
                while Instant::now() < stop {
                    let id = format!("o-{}", (client * 8 + fires % 8) % 256);
                    let note = OrderEvent::Annotate(Note("n".into()));
                    store
                        .fire(&id, Command::<Order>::new(note))
                        .await
                        .expect("fire");
                    fires += 1;
                }
                fires
            })
        })
        .collect();
    let creating = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (mut creates, mut slowest) = (0u64, Duration::ZERO);
            while Instant::now() < stop {
                let started = Instant::now();
                store
                    .create::<Order>(&format!("c-{creates}"), OrderData::default())
                    .await
                    .expect("create");
                slowest = slowest.max(started.elapsed());
                creates += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (creates, slowest)
        })
    };
    let mut fires = 0;
    for task in firing {
        fires += task.await.expect("firing task");
    }
    let (creates, slowest) = creating.await.expect("creating task");
    eprintln!("{fires} fires, {creates} creates, the slowest create {slowest:?}");
    drop(store);
    fsm_core::testing::Fixture::cleanup(fixture).await;
}
