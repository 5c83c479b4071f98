//! The fault suite: bad stored data and failing databases give typed errors, never
//! panics, and a connection killed in the middle of a transition writes nothing of it.
//!
//! Written once, generic over a [`FaultFixture`] (and, for the servers, a
//! [`KillFixture`]), which each backend's fixture in `common` implements; each
//! `*_faults.rs` expands [`fault_tests!`] (and [`connection_kill_tests!`]) to one
//! `#[tokio::test]` per case. The raw SQL that corrupts rows is the same text on every
//! backend; what differs (how to make `version` hold text, where nothing answers, how to
//! find and kill a connection) is behind the fixture traits.

// Each test crate includes `common`; only the `*_faults.rs` ones expand the macros.
#![allow(unused_macros, unused_imports)]

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsm_core::testing::{Fixture, Order, OrderData, OrderEvent, OrderState, Payment};
use fsm_core::{Command, Error, Outcome, Store};
use fsm_sqlx::{Dialect, SqlStore};
use sqlx::{Connection, Executor, FromRow, IntoArguments, Pool};

/// The instance every case works on.
pub(crate) const ID: &str = "o-1";
/// How long a case waits for the server to show what it expects.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A connection of database `D`.
pub(crate) type Conn<D> = <D as sqlx::Database>::Connection;

/// Expands to one `#[tokio::test]` per backend-independent fault case, each on a fresh
/// `$fixture` (a [`FaultFixture`]) holding order `o-1`.
macro_rules! fault_tests {
    ($fixture:ty) => {
        $crate::common::faults::fault_cases! { $fixture;
            unknown_stored_state_name_is_corrupt,
            invalid_context_json_is_corrupt,
            column_of_the_wrong_type_is_corrupt,
            corrupt_history_rows_are_reported_not_skipped,
            oversized_key_is_rejected_before_any_io,
            unreachable_database_is_a_database_error_keeping_the_sqlx_source,
            fire_with_never_overwrites_a_row_corrupted_since_its_snapshot,
            a_missing_last_history_row_is_corrupt,
            a_truncated_initial_fingerprint_is_corrupt,
            a_poison_outbox_row_does_not_stop_the_others,
            a_timer_the_definition_does_not_know_is_kept_and_does_not_stop_the_batch,
        }
    };
}

/// Expands to one `#[tokio::test]` per case of a server whose connections can be killed
/// (`$fixture` is a [`KillFixture`]).
macro_rules! connection_kill_tests {
    ($fixture:ty) => {
        $crate::common::faults::fault_cases! { $fixture;
            connection_killed_mid_transition_leaves_no_partial_write,
            connection_killed_after_its_compare_and_set_leaves_no_partial_write,
        }
    };
}

macro_rules! fault_cases {
    ($fixture:ty; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(fixture) = $crate::common::faults::with_order::<$fixture>().await else {
                    return;
                };
                $crate::common::faults::$case(&fixture).await;
                ::fsm_core::testing::Fixture::cleanup(fixture).await;
            }
        )*
    };
}

pub(crate) use {connection_kill_tests, fault_cases, fault_tests};

/// A store on a database of the test's own, and what differs between backends in
/// breaking it.
pub(crate) trait FaultFixture: Fixture<Store = SqlStore<Self::Db>> {
    /// The backend.
    type Db: RawSql;

    /// Statements that leave the text `seven` in the `version` column of `o-1`'s row.
    const VERSION_AS_TEXT: &'static [&'static str];

    /// A URL of this backend at which nothing answers.
    const UNREACHABLE_URL: &'static str;

    /// A fresh fixture, or `None` (with the reason printed) when the tests are skipped.
    fn open() -> impl Future<Output = Option<Self>>;

    /// Runs `sql` behind the store's back, on a connection of its pool.
    async fn exec(&self, sql: &str) {
        let store = self.store();
        let mut conn = store.pool().acquire().await.expect("a pooled connection");
        Self::Db::exec(&mut conn, sql).await;
    }

    /// Rows in `table`, one of fsm's.
    async fn rows(&self, table: &str) -> i64 {
        Self::Db::rows(self.store().pool(), table).await
    }
}

/// A server whose connections a test can find waiting for a lock, and kill.
pub(crate) trait KillFixture: FaultFixture {
    /// How the server numbers a connection.
    type ConnectionId: Copy + Display + Send;

    /// A connection of the test's own to the fixture's database, apart from the store's
    /// pool (named after `role` where the server shows names).
    fn connect(&self, role: &str) -> impl Future<Output = Conn<Self::Db>>;

    /// The store's connection that waits for a lock in a statement on fsm's tables, and
    /// that statement; `None` while none does.
    fn blocked(
        &self,
        conn: &mut Conn<Self::Db>,
    ) -> impl Future<Output = Option<(Self::ConnectionId, String)>>;

    /// How often to ask [`blocked`](Self::blocked) again.
    const POLL: Duration;

    /// How the statement the fire waits in begins, when blocked at `point`.
    fn waits_in(point: Blocked) -> &'static str;

    /// Kills connection `id`.
    fn kill(conn: &mut Conn<Self::Db>, id: Self::ConnectionId) -> impl Future<Output = ()>;

    /// Whether connection `id` still exists (its transaction may not be over).
    fn exists(conn: &mut Conn<Self::Db>, id: Self::ConnectionId) -> impl Future<Output = bool>;
}

/// Where the fire is blocked when its connection is killed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Blocked {
    /// In its compare-and-set of the machine row.
    InCompareAndSet,
    /// After its compare-and-set, inserting the history row.
    AfterCompareAndSet,
}

/// Raw SQL behind the store's back, on its pool or on a connection of the test's own.
pub(crate) trait RawSql: Dialect {
    /// Runs `sql`; panics with it when it fails.
    fn exec(conn: &mut Conn<Self>, sql: &str) -> impl Future<Output = ()>;

    /// Rows in `table`, one of fsm's (a constant, never a caller's value).
    fn rows(pool: &Pool<Self>, table: &str) -> impl Future<Output = i64>;
}

impl<D> RawSql for D
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D>,
    for<'q> <D as sqlx::Database>::Arguments<'q>: IntoArguments<'q, D>,
    for<'r> (i64,): FromRow<'r, <D as sqlx::Database>::Row>,
{
    async fn exec(conn: &mut Conn<D>, sql: &str) {
        sqlx::query::<D>(sql)
            .execute(conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn rows(pool: &Pool<D>, table: &str) -> i64 {
        sqlx::query_scalar::<D, i64>(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }
}

/// A fresh `F` holding order `o-1` (total 500), or `None` when the tests are skipped.
pub(crate) async fn with_order<F: FaultFixture>() -> Option<F> {
    let fixture = F::open().await?;
    let total = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    let store = fixture.store();
    store.create::<Order>(ID, total).await.expect("create o-1");
    Some(fixture)
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

fn cancel() -> Command<Order> {
    Command::new(OrderEvent::Cancel)
}

/// `err` is `Corrupt` of `o-1` in `table`, its detail containing `detail`, and says so.
pub(crate) fn assert_corrupt(err: &Error, table: &str, detail: &str) {
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
pub(crate) fn assert_transient_database_error(err: &Error) {
    let Error::Database { source, .. } = err else {
        panic!("expected Database, got {err:?}")
    };
    assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    assert!(err.is_transient(), "{err:?}");
}

/// As [`assert_transient_database_error`], its operation mentioning `operation`.
pub(crate) fn assert_database_error_in(err: &Error, operation: &str) {
    let Error::Database { operation: op, .. } = err else {
        panic!("expected Database, got {err:?}")
    };
    assert!(op.contains(operation), "{op:?} lacks {operation:?}");
    assert_transient_database_error(err);
}

// ---------------------------------------------------------------------------------------
// The cases every backend runs.

pub(crate) async fn unknown_stored_state_name_is_corrupt<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    fixture.exec("UPDATE fsm_machines SET state = 'Lost'").await;
    let err = store.load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
    let err = store.fire(ID, cancel()).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
}

pub(crate) async fn invalid_context_json_is_corrupt<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
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
}

/// See each backend's [`FaultFixture::VERSION_AS_TEXT`] for how the row gets there.
pub(crate) async fn column_of_the_wrong_type_is_corrupt<F: FaultFixture>(fixture: &F) {
    for sql in F::VERSION_AS_TEXT {
        fixture.exec(sql).await;
    }
    let err = fixture.store().load::<Order>(ID).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "decode");
}

pub(crate) async fn corrupt_history_rows_are_reported_not_skipped<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    store.fire(ID, cancel()).await.unwrap();
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
}

pub(crate) async fn oversized_key_is_rejected_before_any_io<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    // With the pool closed, anything that reached the database would be a Database error.
    store.pool().close().await;
    let err = store
        .fire(ID, cancel().with_key("k".repeat(256)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { len: 256, .. }), "{err:?}");
    let err = store.fire(ID, cancel()).await.unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
}

/// A snapshot the store issued, then the row corrupted behind its back: `fire_with`
/// checks what the snapshot claims along with the version, reads, and reports the
/// corruption instead of overwriting it.
pub(crate) async fn fire_with_never_overwrites_a_row_corrupted_since_its_snapshot<
    F: FaultFixture,
>(
    fixture: &F,
) {
    let store = fixture.store();
    let mut snapshot = store.load::<Order>(ID).await.unwrap();
    fixture.exec("UPDATE fsm_machines SET state = 'Lost'").await;
    let err = store.fire_with(&mut snapshot, cancel()).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
    fixture
        .exec("UPDATE fsm_machines SET state = 'Created'")
        .await;
    let mut snapshot = store.load::<Order>(ID).await.unwrap();
    fixture
        .exec("UPDATE fsm_machines SET context = '{\"total_cents\": '")
        .await;
    let err = store.fire_with(&mut snapshot, cancel()).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "context");
    assert_eq!(
        fixture.rows("fsm_transitions").await,
        0,
        "nothing was written"
    );
}

/// An instance at version 2 whose history holds one row is reported, not shortened.
pub(crate) async fn a_missing_last_history_row_is_corrupt<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    store
        .fire(
            ID,
            Command::new(OrderEvent::Annotate(fsm_core::testing::Note("a".into()))),
        )
        .await
        .unwrap();
    store.fire(ID, cancel()).await.unwrap();
    fixture
        .exec("DELETE FROM fsm_transitions WHERE version = 2")
        .await;
    let err = store.history::<Order>(ID).await.unwrap_err();
    assert_corrupt(
        &err,
        "fsm_transitions",
        "1 history rows for an instance at version 2",
    );
}

/// A stored initial-context fingerprint of the wrong length is corruption, not a
/// different context (`AlreadyExists`).
pub(crate) async fn a_truncated_initial_fingerprint_is_corrupt<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    fixture
        .exec("UPDATE fsm_machines SET init_fingerprint = SUBSTR(init_fingerprint, 1, 16)")
        .await;
    let total = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    let err = store.create::<Order>(ID, total).await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "init_fingerprint of 16 bytes");
}

/// An outbox row whose attempts counter is at its maximum does not stop the claim of
/// the good rows (it saturates and is dead-lettered).
pub(crate) async fn a_poison_outbox_row_does_not_stop_the_others<F: FaultFixture>(fixture: &F) {
    let store = fixture.store();
    store.fire(ID, pay(500)).await.unwrap();
    let total = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    store.create::<Order>("o-2", total).await.unwrap();
    store.fire("o-2", pay(500)).await.unwrap();
    fixture
        .exec("UPDATE fsm_outbox SET attempts = 2147483647 WHERE machine_id = 'o-1'")
        .await;
    let handled: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&handled);
    let handler = move |d: fsm_core::Delivery<fsm_core::testing::OrderEffect>| {
        sink.lock().unwrap().push(d.id.to_string());
        std::future::ready(Ok::<(), fsm_core::BoxError>(()))
    };
    let report = fsm_core::Dispatcher::new(SqlStore::clone(&store))
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .expect("the claim goes through");
    assert_eq!(report.claimed, 2, "{report:?}");
    assert!(
        handled
            .lock()
            .unwrap()
            .contains(&"Order/o-2/1/0".to_owned())
    );
}

/// A timer row naming an edge that is not a timer is skipped and reported; the good
/// timers of the same batch fire.
pub(crate) async fn a_timer_the_definition_does_not_know_is_kept_and_does_not_stop_the_batch<
    F: FaultFixture,
>(
    fixture: &F,
) {
    let store = fixture.store();
    let total = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    store.create::<Order>("o-2", total).await.unwrap();
    fixture.exec("UPDATE fsm_timers SET due_at = 0").await;
    // As if a deploy had changed the delay of o-1's pending timer from 30 min to 12.345 s.
    fixture
        .exec("UPDATE fsm_timers SET after_ms = 12345 WHERE machine_id = 'o-1'")
        .await;
    let fired =
        fsm_core::DurableStore::fire_due_timers::<Order>(&*store, 10, Duration::from_secs(60))
            .await
            .expect("the batch goes on");
    assert_eq!(fired.len(), 1, "{fired:?}");
    let kept = fsm_core::DurableStore::pending_timers::<Order>(&*store, ID)
        .await
        .unwrap();
    assert_eq!(
        kept.len(),
        1,
        "an unknown timer is kept, not deleted: {kept:?}"
    );
    assert_eq!(
        (kept[0].state.as_str(), kept[0].after),
        ("Created", Duration::from_millis(12_345))
    );
    let report = store.verify::<Order>().await.unwrap();
    let unknown: Vec<_> = report.of_kind(fsm_core::UnknownKind::Timer).collect();
    assert_eq!(unknown.len(), 1, "{report}");
    assert_eq!(unknown[0].name, "Created + after(12345 ms)");
    assert_eq!(unknown[0].sample_ids, [ID]);
    assert_eq!(fired[0].0, "o-2");
    assert_eq!(
        store.load::<Order>("o-2").await.unwrap().state,
        OrderState::Expired
    );
    assert_eq!(
        store.load::<Order>(ID).await.unwrap().state,
        OrderState::Created
    );
}

/// See each backend's [`FaultFixture::UNREACHABLE_URL`] for what is there. A server's
/// refused connection sqlx retries until its pool's acquire timeout (30 s) runs out, so
/// on the servers this case takes that long.
pub(crate) async fn unreachable_database_is_a_database_error_keeping_the_sqlx_source<
    F: FaultFixture,
>(
    _: &F,
) {
    let err = SqlStore::<F::Db>::connect(F::UNREACHABLE_URL)
        .await
        .unwrap_err();
    assert_database_error_in(&err, "connect");
}

// ---------------------------------------------------------------------------------------
// The cases of servers whose connections can be killed.

/// The fire waits for a row lock held by another transaction in its compare-and-set and
/// its connection is killed there: the fire fails with a transient error, nothing of the
/// transition is stored, and firing again with the same key applies it.
pub(crate) async fn connection_killed_mid_transition_leaves_no_partial_write<F: KillFixture>(
    fixture: &F,
) {
    kill_the_fire_blocked_by(
        fixture,
        "SELECT 1 FROM fsm_machines WHERE machine_id = 'o-1' FOR UPDATE",
        Blocked::InCompareAndSet,
    )
    .await;
}

/// As above, but the fire has already compare-and-set the machine row when it waits: the
/// history row it inserts collides with another transaction's uncommitted one. Killing
/// it there must take the state change back too.
pub(crate) async fn connection_killed_after_its_compare_and_set_leaves_no_partial_write<
    F: KillFixture,
>(
    fixture: &F,
) {
    kill_the_fire_blocked_by(
        fixture,
        "INSERT INTO fsm_transitions (machine_type, machine_id, version, from_state, event, \
         trigger_json, to_state, idem_key, fingerprint, at) \
         VALUES ('Order', 'o-1', 1, 'Created', 'Cancel', '{\"event\":\"Cancel\"}', \
         'Cancelled', NULL, NULL, 0)",
        Blocked::AfterCompareAndSet,
    )
    .await;
}

/// Runs `hold` in a transaction of its own, fires `Pay(500)` with key `k` (which waits
/// for that transaction at `point`), kills the fire's connection, rolls `hold` back and
/// checks that the fire left nothing behind and can be retried.
async fn kill_the_fire_blocked_by<F: KillFixture>(fixture: &F, hold: &str, point: Blocked) {
    let store = fixture.store();
    let mut holder = fixture.connect("holder").await;
    let mut held = holder.begin().await.expect("BEGIN");
    F::Db::exec(&mut held, hold).await;

    let fire = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.fire(ID, pay(500).with_key("k")).await }
    });
    let mut killer = fixture.connect("killer").await;
    let patience = Patience::start();
    let (id, statement) = loop {
        if let Some(blocked) = fixture.blocked(&mut killer).await {
            break blocked;
        }
        patience
            .wait(F::POLL, "no connection of the store waits for a lock")
            .await;
    };
    assert!(statement.starts_with(F::waits_in(point)), "{statement}");
    F::kill(&mut killer, id).await;

    let err = tokio::time::timeout(PATIENCE, fire)
        .await
        .expect("the fire returns once its connection is gone")
        .expect("fire task")
        .unwrap_err();
    assert_transient_database_error(&err);
    held.rollback().await.expect("ROLLBACK");
    let patience = Patience::start();
    while F::exists(&mut killer, id).await {
        let still = format!("connection {id} still exists");
        patience.wait(Duration::from_millis(20), &still).await;
    }

    // Not the state change, not the history row, not the effect: nothing.
    let stored = store.load::<Order>(ID).await.unwrap();
    assert_eq!(
        (stored.state, stored.version, stored.context.paid_cents),
        (OrderState::Created, 0, 0)
    );
    assert!(store.history::<Order>(ID).await.unwrap().is_empty());
    assert_eq!(fixture.rows("fsm_transitions").await, 0);
    assert_eq!(fixture.rows("fsm_outbox").await, 0);

    // The key was never recorded, and the pool replaces the dead connection.
    let outcome = store
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

/// A deadline [`PATIENCE`] away.
struct Patience(Instant);

impl Patience {
    fn start() -> Self {
        Patience(Instant::now() + PATIENCE)
    }

    /// Sleeps `poll`; panics with `failure` when the deadline has passed.
    async fn wait(&self, poll: Duration, failure: &str) {
        assert!(Instant::now() < self.0, "{failure} after {PATIENCE:?}");
        tokio::time::sleep(poll).await;
    }
}
