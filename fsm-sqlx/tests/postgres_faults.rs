//! Bad stored data and failing connections give typed errors on PostgreSQL, never
//! panics; a connection killed in the middle of a transition writes nothing of it.
//!
//! Mirrors `sqlite_faults.rs`, each test in a schema of its own. Reads the server from
//! `FSM_POSTGRES_URL`, e.g. `postgres://postgres@127.0.0.1:5432/test`; without it the
//! tests are skipped, or fail when `CI` is set.
#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use common::pg::Schema;
use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState, Payment};
use fsm_core::{Command, Error, Outcome, Store};
use fsm_sqlx::PgStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

const URL_VAR: &str = "FSM_POSTGRES_URL";
const ID: &str = "o-1";
/// How long a test waits for the server to show what it expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store in a schema of its own holding order `o-1` (total 500), whose connections
/// are named after the schema in `pg_stat_activity`.
struct Fixture {
    store: PgStore,
    schema: Schema,
}

impl Fixture {
    /// `None` when the tests are skipped.
    async fn with_order() -> Option<Self> {
        let url = common::server_url(URL_VAR)?;
        let schema = Schema::create(url).await;
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(schema.options(&schema.name))
            .await
            .expect("connect to FSM_POSTGRES_URL");
        let store = PgStore::from_pool(pool);
        store.migrate().await.expect("migrate");
        let total = OrderData {
            total_cents: 500,
            ..OrderData::default()
        };
        store.create::<Order>(ID, total).await.expect("create o-1");
        Some(Fixture { store, schema })
    }

    /// The `application_name` of the store's connections.
    fn store_connections(&self) -> &str {
        &self.schema.name
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Rows in `table`, one of fsm's (a constant, never a caller's value).
    async fn rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    /// A connection of the test's own into the schema, apart from the store's pool.
    async fn connect(&self, role: &str) -> PgConnection {
        let name = format!("{}-{role}", self.schema.name);
        PgConnection::connect_with(&self.schema.options(&name))
            .await
            .expect("connect to FSM_POSTGRES_URL")
    }

    async fn cleanup(mut self) {
        self.store.pool().close().await;
        self.schema.drop_now().await;
    }
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

fn assert_corrupt(err: &Error, table: &str, detail: &str) {
    match err {
        Error::Corrupt {
            table: t,
            machine: "Order",
            id,
            detail: d,
        } => {
            assert_eq!((*t, id.as_str()), (table, ID));
            assert!(d.contains(detail), "{d:?} lacks {detail:?}");
        }
        other => panic!("expected Corrupt in {table}, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("Order") && message.contains(ID) && message.contains(table),
        "{message}"
    );
}

/// A database error that keeps sqlx's error as its source, and is worth retrying.
fn assert_transient_database_error(err: &Error) {
    let Error::Database { source, .. } = err else {
        panic!("expected Database, got {err:?}")
    };
    assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn unknown_stored_state_name_is_corrupt() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    let store = &fixture.store;
    fixture.exec("UPDATE fsm_machines SET state = 'Lost'").await;
    let err = store.load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
    let err = store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
    fixture.cleanup().await;
}

#[tokio::test]
async fn invalid_context_json_is_corrupt() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    let store = &fixture.store;
    fixture
        .exec("UPDATE fsm_machines SET context = '{\"total_cents\": '")
        .await;
    let err = store.load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "context");
    fixture
        .exec("UPDATE fsm_machines SET context = '{\"unrelated\": true}'")
        .await;
    let err = store.load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "OrderData");
    fixture.cleanup().await;
}

/// PostgreSQL keeps a `BIGINT` column's values numbers, so the row can only hold text
/// where the store expects a number once the column itself has the wrong type, as after
/// a hand-made schema change.
#[tokio::test]
async fn column_of_the_wrong_type_is_corrupt() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    // Before anything reads the table: a statement prepared against the old column type
    // would fail with "cached plan must not change result type" instead.
    fixture
        .exec("ALTER TABLE fsm_machines ALTER COLUMN version TYPE TEXT USING 'seven'")
        .await;
    let err = fixture.store.load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "decode");
    fixture.cleanup().await;
}

#[tokio::test]
async fn corrupt_history_rows_are_reported_not_skipped() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    let store = &fixture.store;
    store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    fixture
        .exec("UPDATE fsm_transitions SET to_state = 'Vanished'")
        .await;
    let err = store.history::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "\"Vanished\"");
    fixture
        .exec("UPDATE fsm_transitions SET to_state = 'Cancelled', trigger_json = 'garbage'")
        .await;
    let err = store.history::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "trigger");
    fixture
        .exec("UPDATE fsm_transitions SET trigger_json = '{\"event\":\"Cancel\"}', version = 2")
        .await;
    let err = store.history::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "version 2 where 1 was expected");
    fixture.cleanup().await;
}

#[tokio::test]
async fn oversized_key_is_rejected_before_any_io() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    let store = &fixture.store;
    // With the pool closed, anything that reached the database would be a Database error.
    store.pool().close().await;
    let command = Command::new(OrderEvent::Cancel).with_key("k".repeat(256));
    let err = store.fire(ID, command).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { len: 256, .. }), "{err:?}");
    let err = store
        .fire(ID, Command::new(OrderEvent::Cancel))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    fixture.cleanup().await;
}

/// Nothing listens on port 1. sqlx retries a refused connection until its pool's
/// acquire timeout (30 s) runs out, so this test takes that long.
#[tokio::test]
async fn unreachable_database_is_a_database_error_keeping_the_sqlx_source() {
    if common::server_url(URL_VAR).is_none() {
        return;
    }
    let err = PgStore::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let Error::Database { operation, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(operation.contains("connect"), "{operation}");
    assert_transient_database_error(&err);
}

/// The fire's one write statement waits for a row lock held by another transaction and
/// its connection is terminated there: the fire fails with a transient error, nothing of
/// the transition is stored, and firing again with the same key applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_transition_leaves_no_partial_write() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    kill_the_fire_blocked_by(
        &fixture,
        "SELECT 1 FROM fsm_machines WHERE machine_id = 'o-1' FOR UPDATE",
    )
    .await;
    fixture.cleanup().await;
}

/// As above, but the statement has already compare-and-set the machine row when it
/// waits: the history row it inserts collides with another transaction's uncommitted
/// one. Killing it there must take the state change back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_after_its_compare_and_set_leaves_no_partial_write() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    kill_the_fire_blocked_by(
        &fixture,
        "INSERT INTO fsm_transitions (machine_type, machine_id, version, from_state, event, \
         trigger_json, to_state, idem_key, fingerprint, at) \
         VALUES ('Order', 'o-1', 1, 'Created', 'Cancel', '{\"event\":\"Cancel\"}', \
         'Cancelled', NULL, NULL, 0)",
    )
    .await;
    fixture.cleanup().await;
}

/// Runs `hold` in a transaction of its own, fires `Pay(500)` with key `k` (which waits
/// for that transaction), terminates the fire's backend, rolls `hold` back and checks
/// that the fire left nothing behind and can be retried.
async fn kill_the_fire_blocked_by(fixture: &Fixture, hold: &str) {
    let mut holder = fixture.connect("holder").await;
    let mut held = holder.begin().await.expect("BEGIN");
    sqlx::query(hold)
        .execute(&mut *held)
        .await
        .unwrap_or_else(|e| panic!("{hold}: {e}"));

    let store = fixture.store.clone();
    let fire = tokio::spawn(async move { store.fire(ID, pay(500).with_key("k")).await });
    let mut killer = fixture.connect("killer").await;
    let pid = blocked_backend(&mut killer, fixture.store_connections()).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut killer)
        .await
        .expect("pg_terminate_backend");
    assert!(terminated, "backend {pid} was not terminated");

    let err = tokio::time::timeout(PATIENCE, fire)
        .await
        .expect("the fire returns once its connection is gone")
        .expect("fire task")
        .unwrap_err();
    assert_transient_database_error(&err);
    held.rollback().await.expect("ROLLBACK");
    wait_until_gone(&mut killer, pid).await;

    // Not the state change, not the history row, not the effect: nothing.
    let stored = fixture.store.load::<Order>(ID).await.unwrap();
    assert_eq!(
        (stored.state, stored.version, stored.context.paid_cents),
        (OrderState::Created, 0, 0)
    );
    assert!(fixture.store.history::<Order>(ID).await.unwrap().is_empty());
    assert_eq!(fixture.rows("fsm_transitions").await, 0);
    assert_eq!(fixture.rows("fsm_outbox").await, 0);

    // The key was never recorded, and the pool replaces the dead connection.
    let outcome = fixture
        .store
        .fire(ID, pay(500).with_key("k"))
        .await
        .expect("fire again");
    assert!(
        matches!(&outcome, Outcome::Applied(t) if t.version == 1 && t.to == OrderState::Paid),
        "{outcome:?}"
    );
    assert_eq!(fixture.rows("fsm_outbox").await, 1);
    let _ = holder.close().await;
    let _ = killer.close().await;
}

/// The pid of the store's backend waiting for a lock in a statement on fsm's tables.
async fn blocked_backend(conn: &mut PgConnection, application_name: &str) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock' \
               AND query LIKE '%fsm_machines%'",
        )
        .bind(application_name)
        .fetch_optional(&mut *conn)
        .await
        .expect("read pg_stat_activity");
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no backend of {application_name} waits for a lock after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until backend `pid` has exited, so that its transaction is over.
async fn wait_until_gone(conn: &mut PgConnection, pid: i32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut *conn)
            .await
            .expect("read pg_stat_activity");
        if alive == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend {pid} still exists after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
