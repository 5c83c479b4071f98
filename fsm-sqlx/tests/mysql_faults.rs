//! Bad stored data and failing connections give typed errors on MySQL and MariaDB,
//! never panics; a connection killed in the middle of a transition writes nothing of it.
//!
//! Mirrors `sqlite_faults.rs`, each test in a database of its own. Reads the server
//! from `FSM_MYSQL_URL`, e.g. `mysql://root@127.0.0.1:3306/test`; without it the tests
//! are skipped, or fail when `CI` is set.
#![cfg(feature = "mysql")]

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use fsm_core::testing::{Order, OrderData, OrderEvent, OrderState, Payment};
use fsm_core::{Command, Error, Outcome, Store};
use fsm_sqlx::MySqlStore;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySqlConnection};

const URL_VAR: &str = "FSM_MYSQL_URL";
const ID: &str = "o-1";
/// How long a test waits for the server to show what it expects.
const PATIENCE: Duration = Duration::from_secs(10);

/// A store on a database of its own holding order `o-1` (total 500).
struct Fixture {
    store: MySqlStore,
    database: Database,
}

impl Fixture {
    /// `None` when the tests are skipped.
    async fn with_order() -> Option<Self> {
        let url = common::server_url(URL_VAR)?;
        let database = Database::create(url).await;
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .connect_with(database.options())
            .await
            .expect("connect to FSM_MYSQL_URL");
        let store = MySqlStore::from_pool(pool);
        store.migrate().await.expect("migrate");
        let total = OrderData {
            total_cents: 500,
            ..OrderData::default()
        };
        store.create::<Order>(ID, total).await.expect("create o-1");
        Some(Fixture { store, database })
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

    /// A connection of the test's own to the database, apart from the store's pool.
    async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect_with(&self.database.options())
            .await
            .expect("connect to FSM_MYSQL_URL")
    }

    async fn cleanup(mut self) {
        self.store.pool().close().await;
        self.database.drop_now().await;
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

/// A `BIGINT` column cannot hold text (strict mode rejects it, loose mode stores 0), so
/// the row can only hold text where the store expects a number once the column itself
/// has the wrong type, as after a hand-made schema change.
#[tokio::test]
async fn column_of_the_wrong_type_is_corrupt() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    fixture
        .exec("ALTER TABLE fsm_machines MODIFY version VARCHAR(16) NOT NULL")
        .await;
    fixture
        .exec("UPDATE fsm_machines SET version = 'seven'")
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
    let err = MySqlStore::connect("mysql://root@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let Error::Database { operation, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(operation.contains("connect"), "{operation}");
    assert_transient_database_error(&err);
}

/// The fire's transaction waits in its compare-and-set `UPDATE` for a row lock held by
/// another transaction and its connection is killed there: the fire fails with a
/// transient error, nothing of the transition is stored, and firing again with the same
/// key applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_transition_leaves_no_partial_write() {
    let Some(fixture) = Fixture::with_order().await else {
        return;
    };
    kill_the_fire_blocked_by(
        &fixture,
        "SELECT 1 FROM fsm_machines WHERE machine_id = 'o-1' FOR UPDATE",
        "UPDATE fsm_machines",
    )
    .await;
    fixture.cleanup().await;
}

/// As above, but the transaction has already compare-and-set the machine row when it
/// waits: the history row it inserts collides with another transaction's uncommitted
/// one. Killing it there must roll the state change back too.
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
        "INSERT INTO fsm_transitions",
    )
    .await;
    fixture.cleanup().await;
}

/// Runs `hold` in a transaction of its own, fires `Pay(500)` with key `k` (which waits
/// for that transaction in the statement starting with `waiting_in`), kills the fire's
/// connection, rolls `hold` back and checks that the fire left nothing behind and can
/// be retried.
async fn kill_the_fire_blocked_by(fixture: &Fixture, hold: &str, waiting_in: &str) {
    let mut holder = fixture.connect().await;
    let mut held = holder.begin().await.expect("BEGIN");
    sqlx::query(hold)
        .execute(&mut *held)
        .await
        .unwrap_or_else(|e| panic!("{hold}: {e}"));

    let store = fixture.store.clone();
    let fire = tokio::spawn(async move { store.fire(ID, pay(500).with_key("k")).await });
    let mut killer = fixture.connect().await;
    let (id, statement) = blocked_connection(&mut killer, &fixture.database.name).await;
    assert!(statement.starts_with(waiting_in), "{statement}");
    // KILL takes no placeholder; `id` is a number the server gave.
    killer
        .execute(format!("KILL CONNECTION {id}").as_str())
        .await
        .expect("KILL CONNECTION");

    let err = tokio::time::timeout(PATIENCE, fire)
        .await
        .expect("the fire returns once its connection is gone")
        .expect("fire task")
        .unwrap_err();
    assert_transient_database_error(&err);
    held.rollback().await.expect("ROLLBACK");
    wait_until_gone(&mut killer, id).await;

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

/// The id of the connection to `database` whose InnoDB transaction waits for a lock,
/// and the statement it waits in.
///
/// InnoDB refreshes `innodb_trx` only when it was not read for 0.1 s, hence the slow poll.
async fn blocked_connection(conn: &mut MySqlConnection, database: &str) -> (i64, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let blocked: Option<(i64, String)> = sqlx::query_as(
            "SELECT CAST(p.id AS SIGNED), CAST(p.info AS CHAR) \
             FROM information_schema.processlist p \
             JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id \
             WHERE p.db = ? AND t.trx_state = 'LOCK WAIT' AND p.info LIKE '%fsm_%'",
        )
        .bind(database)
        .fetch_optional(&mut *conn)
        .await
        .expect("read the process list");
        if let Some(blocked) = blocked {
            return blocked;
        }
        assert!(
            Instant::now() < deadline,
            "no connection to {database} waits for a lock after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until connection `id` has ended, so that its transaction is over.
async fn wait_until_gone(conn: &mut MySqlConnection, id: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: i64 =
            sqlx::query_scalar("SELECT count(*) FROM information_schema.processlist WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .expect("read the process list");
        if alive == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} still exists after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A database of its own per test, as in `mysql.rs`.

/// A database, dropped with all it holds by `drop_now` or, if a test panicked, on drop.
struct Database {
    url: String,
    name: String,
    dropped: bool,
}

impl Database {
    async fn create(url: String) -> Self {
        let name = common::unique_name();
        // An identifier cannot be bound; this one is generated, never a caller's value.
        admin(&url, format!("CREATE DATABASE {name}")).await;
        Database {
            url,
            name,
            dropped: false,
        }
    }

    /// Options connecting to this database.
    fn options(&self) -> MySqlConnectOptions {
        MySqlConnectOptions::from_str(&self.url)
            .expect("parse FSM_MYSQL_URL")
            .database(&self.name)
    }

    async fn drop_now(&mut self) {
        admin(&self.url, self.drop_sql()).await;
        self.dropped = true;
    }

    fn drop_sql(&self) -> String {
        format!("DROP DATABASE IF EXISTS {}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if !self.dropped {
            let (url, sql) = (self.url.clone(), self.drop_sql());
            common::block_on_own_thread(async move { admin(&url, sql).await });
        }
    }
}

async fn admin(url: &str, sql: String) {
    let mut conn = MySqlConnection::connect(url)
        .await
        .expect("connect to FSM_MYSQL_URL");
    conn.execute(sql.as_str())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}
