//! What the test files share: where the server is, unique names, cleanup after a
//! failure, one fixture per backend (a database of the test's own) for the
//! conformance and durable suites of fsm-core, and the fault suite written once over
//! those fixtures (`faults`).

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) mod faults;
#[cfg(feature = "mysql")]
pub(crate) mod galera;
pub(crate) mod group;

/// The durable suite's 100k-rows prune under load, on the fixture `$make` yields (a
/// skip where it returns early); the rows are made done long ago with one `UPDATE`.
#[allow(unused_macros)] // the fault and cross-process test files use none
macro_rules! pruning_100k_done_rows_in_batches_while_transitions_apply {
    ($backend:literal, $make:expr) => {
        /// 100,000 done outbox rows pruned in batches of 1,000 while transitions keep
        /// applying.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn pruning_100k_done_rows_in_batches_while_transitions_apply() {
            use fsm_core::testing::DurableFixture;
            use fsm_core::testing::durable::pruning_100k_done_rows_in_batches_while_transitions_apply as spec;
            let fixture = $make;
            let store = DurableFixture::store(&fixture);
            let pool = store.pool().clone();
            let load = spec(store, || async move {
                sqlx::query("UPDATE fsm_outbox SET done_at = 1 WHERE machine_type = 'Meter'")
                    .execute(&pool)
                    .await
                    .expect("age the meter's outbox rows");
            })
            .await;
            eprintln!("{}: {load}", $backend);
            DurableFixture::cleanup(fixture).await;
        }
    };
}

/// The server URL in env var `var`, or `None` when the tests should be skipped.
///
/// # Panics
///
/// When `var` is unset and `CI` is set: a CI run must not skip a backend silently.
pub(crate) fn server_url(var: &str) -> Option<String> {
    if let Some(url) = std::env::var(var).ok().filter(|url| !url.is_empty()) {
        return Some(url);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|ci| !ci.is_empty());
    assert!(
        !in_ci,
        "{var} is not set, but CI is: CI runs these tests against a server, so set {var}"
    );
    eprintln!("skipping: {var} is not set");
    None
}

/// `store`, unshared, with group commit (a fixture's stores fire alone unless made so).
#[allow(dead_code)] // not every test binary builds a grouped store
pub(crate) fn grouped<D: fsm_sqlx::Dialect>(
    store: std::sync::Arc<fsm_sqlx::SqlStore<D>>,
) -> std::sync::Arc<fsm_sqlx::SqlStore<D>> {
    let store = std::sync::Arc::into_inner(store).expect("a fixture's store is not shared yet");
    std::sync::Arc::new(store.with_group_commit(fsm_sqlx::GroupCommit::new()))
}

/// A name no other test of any process uses, e.g. `fsm_t_4242_7_1763800000000000000`:
/// a valid unquoted identifier on every backend.
pub(crate) fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "fsm_t_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A directory of the test's own (database files, a child's logs), removed at the end,
/// also when the test fails.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    pub(crate) fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name());
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The runtime a crash test's parent drives its stores with: two workers, as on CI.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
}

/// Runs `cleanup` to completion from a `Drop` (a failed test unwinding), on a thread
/// and runtime of its own since the test's runtime may be gone or busy.
pub(crate) fn block_on_own_thread<F>(cleanup: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let thread = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime")
            .block_on(cleanup);
    });
    let _ = thread.join();
}

/// PostgreSQL helpers of the tests beyond the conformance suite: a schema of their own,
/// and connections into it that `pg_stat_activity` can tell apart.
#[cfg(feature = "postgres")]
pub(crate) mod pg {
    use std::str::FromStr;

    use std::sync::Arc;
    use std::time::Duration;

    use fsm_core::testing::{DurableFixture, Fixture};
    use fsm_sqlx::{Concurrency, PgStore};
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{Connection, Executor, PgConnection};

    use super::faults::{Blocked, FaultFixture, KillFixture};

    /// Options connecting to `url` with `schema` as the `search_path`, shown as
    /// `application_name` in `pg_stat_activity`.
    pub(crate) fn options(url: &str, schema: &str, application_name: &str) -> PgConnectOptions {
        PgConnectOptions::from_str(url)
            .expect("parse the PostgreSQL URL")
            .options([("search_path", schema)])
            .application_name(application_name)
    }

    /// A schema, dropped with all it holds by `drop_now` or, if a test panicked, on drop.
    pub(crate) struct Schema {
        pub(crate) url: String,
        pub(crate) name: String,
        dropped: bool,
    }

    impl Schema {
        pub(crate) async fn create(url: String) -> Self {
            let name = super::unique_name();
            // An identifier cannot be bound; this one is generated, never a caller's value.
            admin(&url, format!("CREATE SCHEMA {name}")).await;
            Schema {
                url,
                name,
                dropped: false,
            }
        }

        /// Options connecting into this schema as `application_name`.
        pub(crate) fn options(&self, application_name: &str) -> PgConnectOptions {
            options(&self.url, &self.name, application_name)
        }

        pub(crate) async fn drop_now(&mut self) {
            admin(&self.url, self.drop_sql()).await;
            self.dropped = true;
        }

        fn drop_sql(&self) -> String {
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            if !self.dropped {
                let (url, sql) = (self.url.clone(), self.drop_sql());
                super::block_on_own_thread(async move { admin(&url, sql).await });
            }
        }
    }

    /// A [`PgStore`] whose connections' `search_path` is a fresh schema, dropped
    /// afterwards: the fixture of the conformance, durable and fault suites.
    pub(crate) struct PgSchema {
        store: Arc<PgStore>,
        schema: Schema,
    }

    impl PgSchema {
        pub(crate) async fn new(url: String, concurrency: Concurrency) -> Self {
            let schema = Schema::create(url).await;
            let store = PgStore::from_pool(pool(&schema).await)
                .with_concurrency(concurrency)
                .without_group_commit();
            store.migrate().await.expect("migrate");
            PgSchema {
                store: Arc::new(store),
                schema,
            }
        }

        pub(crate) fn schema(&self) -> &Schema {
            &self.schema
        }

        /// As [`new`](Self::new), with group commit.
        pub(crate) async fn grouped(url: String, concurrency: Concurrency) -> Self {
            let mut fixture = Self::new(url, concurrency).await;
            fixture.store = super::grouped(fixture.store);
            fixture
        }

        /// As [`new`](Self::new), with every transaction SERIALIZABLE
        /// (`default_transaction_isolation`), as on CockroachDB or YugabyteDB.
        pub(crate) async fn serializable(url: String, concurrency: Concurrency) -> Self {
            let schema = Schema::create(url).await;
            let options = schema
                .options(&schema.name)
                .options([("default_transaction_isolation", "serializable")]);
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .expect("connect to the PostgreSQL server");
            let store = PgStore::from_pool(pool)
                .with_concurrency(concurrency)
                .without_group_commit();
            store.migrate().await.expect("migrate");
            PgSchema {
                store: Arc::new(store),
                schema,
            }
        }
    }

    /// A small pool on the test's own schema (tests run in parallel against one server),
    /// its connections named after the schema in `pg_stat_activity`.
    pub(crate) async fn pool(schema: &Schema) -> sqlx::PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect_with(schema.options(&schema.name))
            .await
            .expect("connect to the PostgreSQL server")
    }

    impl Fixture for PgSchema {
        type Store = PgStore;

        fn store(&self) -> Arc<PgStore> {
            Arc::clone(&self.store)
        }

        async fn cleanup(mut self) {
            self.store.pool().close().await;
            self.schema.drop_now().await;
        }
    }

    impl DurableFixture for PgSchema {
        type Store = PgStore;

        fn store(&self) -> PgStore {
            PgStore::clone(&self.store)
        }

        async fn expire_timers(&self) {
            sqlx::query("UPDATE fsm_timers SET due_at = 0")
                .execute(self.store.pool())
                .await
                .expect("expire timers");
        }

        async fn reopen(&self) -> PgStore {
            PgStore::from_pool(pool(&self.schema).await)
        }

        async fn cleanup(self) {
            Fixture::cleanup(self).await;
        }
    }

    impl FaultFixture for PgSchema {
        type Db = sqlx::Postgres;

        async fn open() -> Option<Self> {
            let url = super::server_url("FSM_POSTGRES_URL")?;
            Some(PgSchema::new(url, Concurrency::Optimistic).await)
        }

        /// PostgreSQL keeps a `BIGINT` column's values numbers, so the row can only hold
        /// text where the store expects a number once the column itself has the wrong
        /// type, as after a hand-made schema change. Before anything reads the table: a
        /// statement prepared against the old column type would fail with "cached plan
        /// must not change result type" instead.
        const VERSION_AS_TEXT: &'static [&'static str] =
            &["ALTER TABLE fsm_machines ALTER COLUMN version TYPE TEXT USING 'seven'"];

        /// Port 1 of this host, where nothing listens.
        const UNREACHABLE_URL: &'static str = "postgres://postgres@127.0.0.1:1/test";
    }

    /// The store's connections are named after the schema in `pg_stat_activity`, the
    /// test's own after the schema and their role.
    impl KillFixture for PgSchema {
        type ConnectionId = i32;

        async fn connect(&self, role: &str) -> PgConnection {
            let schema = self.schema();
            PgConnection::connect_with(&schema.options(&format!("{}-{role}", schema.name)))
                .await
                .expect("connect to FSM_POSTGRES_URL")
        }

        async fn blocked(&self, conn: &mut PgConnection) -> Option<(i32, String)> {
            sqlx::query_as(
                "SELECT pid, query FROM pg_stat_activity \
                 WHERE application_name = $1 AND wait_event_type = 'Lock' \
                   AND query LIKE '%fsm_machines%'",
            )
            .bind(&self.schema().name)
            .fetch_optional(conn)
            .await
            .expect("read pg_stat_activity")
        }

        const POLL: Duration = Duration::from_millis(20);

        /// A transition is one statement, so the fire waits in it at either point.
        fn waits_in(_: Blocked) -> &'static str {
            "WITH updated AS ("
        }

        async fn kill(conn: &mut PgConnection, pid: i32) {
            let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(conn)
                .await
                .expect("pg_terminate_backend");
            assert!(terminated, "backend {pid} was not terminated");
        }

        async fn exists(conn: &mut PgConnection, pid: i32) -> bool {
            sqlx::query_scalar("SELECT count(*) > 0 FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(conn)
                .await
                .expect("read pg_stat_activity")
        }
    }

    async fn admin(url: &str, sql: String) {
        let mut conn = PgConnection::connect(url)
            .await
            .expect("connect to the PostgreSQL server");
        conn.execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }
}

/// MySQL helpers: a database of the test's own, dropped afterwards.
#[cfg(feature = "mysql")]
pub(crate) mod mysql {
    use std::str::FromStr;
    use std::sync::Arc;
    use std::time::Duration;

    use fsm_core::testing::{DurableFixture, Fixture};
    use fsm_sqlx::{Concurrency, MySqlStore};
    use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
    use sqlx::{Connection, Executor, MySqlConnection};

    use super::faults::{Blocked, FaultFixture, KillFixture};

    /// A database, dropped with all it holds by `drop_now` or, if a test panicked, on drop.
    pub(crate) struct Database {
        pub(crate) url: String,
        pub(crate) name: String,
        dropped: bool,
    }

    impl Database {
        pub(crate) async fn create(url: String) -> Self {
            let name = super::unique_name();
            // An identifier cannot be bound; this one is generated, never a caller's value.
            admin(&url, format!("CREATE DATABASE {name}")).await;
            Database {
                url,
                name,
                dropped: false,
            }
        }

        /// Options connecting into this database.
        pub(crate) fn options(&self) -> MySqlConnectOptions {
            MySqlConnectOptions::from_str(&self.url)
                .expect("parse the MySQL URL")
                .database(&self.name)
        }

        pub(crate) async fn drop_now(&mut self) {
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
                super::block_on_own_thread(async move { admin(&url, sql).await });
            }
        }
    }

    pub(crate) async fn admin(url: &str, sql: String) {
        let mut conn = MySqlConnection::connect(url)
            .await
            .expect("connect to the MySQL server");
        conn.execute(sql.as_str())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }

    impl FaultFixture for MySqlDatabase {
        type Db = sqlx::MySql;

        async fn open() -> Option<Self> {
            let url = super::server_url("FSM_MYSQL_URL")?;
            Some(MySqlDatabase::new(url, Concurrency::Optimistic).await)
        }

        /// A `BIGINT` column cannot hold text (strict mode rejects it, loose mode stores
        /// 0), so the row can only hold text where the store expects a number once the
        /// column itself has the wrong type, as after a hand-made schema change.
        const VERSION_AS_TEXT: &'static [&'static str] = &[
            "ALTER TABLE fsm_machines MODIFY version VARCHAR(16) NOT NULL",
            "UPDATE fsm_machines SET version = 'seven'",
        ];

        /// Port 1 of this host, where nothing listens.
        const UNREACHABLE_URL: &'static str = "mysql://root@127.0.0.1:1/test";
    }

    /// The store's connections are those to the fixture's database whose InnoDB
    /// transaction waits for a lock.
    impl KillFixture for MySqlDatabase {
        type ConnectionId = i64;

        async fn connect(&self, _role: &str) -> MySqlConnection {
            MySqlConnection::connect_with(&self.database().options())
                .await
                .expect("connect to FSM_MYSQL_URL")
        }

        async fn blocked(&self, conn: &mut MySqlConnection) -> Option<(i64, String)> {
            sqlx::query_as(
                "SELECT CAST(p.id AS SIGNED), CAST(p.info AS CHAR) \
                 FROM information_schema.processlist p \
                 JOIN information_schema.innodb_trx t ON t.trx_mysql_thread_id = p.id \
                 WHERE p.db = ? AND t.trx_state = 'LOCK WAIT' AND p.info LIKE '%fsm_%'",
            )
            .bind(&self.database().name)
            .fetch_optional(conn)
            .await
            .expect("read the process list")
        }

        /// InnoDB refreshes `innodb_trx` only when it was not read for 0.1 s, hence the slow
        /// poll.
        const POLL: Duration = Duration::from_millis(200);

        /// The compare-and-set, then the history insert: statements of their own.
        fn waits_in(point: Blocked) -> &'static str {
            match point {
                Blocked::InCompareAndSet => "UPDATE fsm_machines",
                Blocked::AfterCompareAndSet => "INSERT INTO fsm_transitions",
            }
        }

        async fn kill(conn: &mut MySqlConnection, id: i64) {
            // KILL takes no placeholder; `id` is a number the server gave.
            conn.execute(format!("KILL CONNECTION {id}").as_str())
                .await
                .expect("KILL CONNECTION");
        }

        async fn exists(conn: &mut MySqlConnection, id: i64) -> bool {
            let alive: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.processlist WHERE id = ?",
            )
            .bind(id)
            .fetch_one(conn)
            .await
            .expect("read the process list");
            alive > 0
        }
    }

    /// A small pool on the test's own database: tests run in parallel against one server.
    pub(crate) async fn pool(database: &Database) -> sqlx::MySqlPool {
        MySqlPoolOptions::new()
            .max_connections(4)
            .connect_with(database.options())
            .await
            .expect("connect to the MySQL server")
    }

    /// A [`MySqlStore`] on a fresh database: the fixture of the conformance, durable and
    /// fault suites.
    pub(crate) struct MySqlDatabase {
        store: Arc<MySqlStore>,
        database: Database,
    }

    impl MySqlDatabase {
        pub(crate) async fn new(url: String, concurrency: Concurrency) -> Self {
            let database = Database::create(url).await;
            let store = MySqlStore::from_pool(pool(&database).await).with_concurrency(concurrency);
            store.migrate().await.expect("migrate");
            MySqlDatabase {
                store: Arc::new(store),
                database,
            }
        }

        /// As [`new`](Self::new), with group commit.
        pub(crate) async fn grouped(url: String, concurrency: Concurrency) -> Self {
            let mut fixture = Self::new(url, concurrency).await;
            fixture.store = super::grouped(fixture.store);
            fixture
        }

        pub(crate) fn database(&self) -> &Database {
            &self.database
        }
    }

    impl Fixture for MySqlDatabase {
        type Store = MySqlStore;

        fn store(&self) -> Arc<MySqlStore> {
            Arc::clone(&self.store)
        }

        async fn cleanup(mut self) {
            self.store.pool().close().await;
            self.database.drop_now().await;
        }
    }

    impl DurableFixture for MySqlDatabase {
        type Store = MySqlStore;

        fn store(&self) -> MySqlStore {
            MySqlStore::clone(&self.store)
        }

        async fn expire_timers(&self) {
            sqlx::query("UPDATE fsm_timers SET due_at = 0")
                .execute(self.store.pool())
                .await
                .expect("expire timers");
        }

        async fn reopen(&self) -> MySqlStore {
            MySqlStore::from_pool(pool(&self.database).await)
        }

        async fn cleanup(self) {
            Fixture::cleanup(self).await;
        }
    }
}

/// SQLite helpers: a database file of the test's own, removed afterwards.
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite {
    use std::path::PathBuf;
    use std::sync::Arc;

    use fsm_core::testing::{DurableFixture, Fixture};
    use fsm_sqlx::{Concurrency, SqliteStore};

    use super::faults::FaultFixture;

    /// Removes the database file at `path` and its `-wal` and `-shm` files, whichever
    /// exist.
    pub(crate) fn remove_files(path: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.to_owned().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }

    /// A [`SqliteStore`] on a fresh file: the fixture of the conformance, durable and
    /// fault suites.
    pub(crate) struct SqliteFile {
        store: Arc<SqliteStore>,
        path: PathBuf,
    }

    impl SqliteFile {
        pub(crate) async fn new() -> Self {
            Self::with(Concurrency::Optimistic).await
        }

        pub(crate) async fn with(concurrency: Concurrency) -> Self {
            let path = std::env::temp_dir().join(format!("{}.db", super::unique_name()));
            let store = SqliteStore::open(&path)
                .await
                .expect("open SQLite file")
                .with_concurrency(concurrency)
                .without_group_commit();
            store.migrate().await.expect("migrate");
            SqliteFile {
                store: Arc::new(store),
                path,
            }
        }

        /// As [`new`](Self::new), through sqlx alone: a store built with
        /// [`from_pool`](SqliteStore::from_pool) has no write lane, so its fires take
        /// the path in-memory stores and commands with tokens take.
        pub(crate) async fn through_sqlx(concurrency: Concurrency) -> Self {
            let path = std::env::temp_dir().join(format!("{}.db", super::unique_name()));
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = SqliteStore::pool_options()
                .connect_with(options)
                .await
                .expect("open SQLite file");
            let store = SqliteStore::from_pool(pool)
                .with_concurrency(concurrency)
                .without_group_commit();
            store.migrate().await.expect("migrate");
            SqliteFile {
                store: Arc::new(store),
                path,
            }
        }

        /// As [`through_sqlx`](Self::through_sqlx) (adaptive), with group commit:
        /// sqlx's SQLite batches, as a grouped store from `from_pool` makes them.
        pub(crate) async fn through_sqlx_grouped() -> Self {
            let mut fixture = Self::through_sqlx(Concurrency::Adaptive).await;
            fixture.store = super::grouped(fixture.store);
            fixture
        }

        /// As [`with`](Self::with), with group commit.
        pub(crate) async fn grouped(concurrency: Concurrency) -> Self {
            let mut fixture = Self::with(concurrency).await;
            fixture.store = super::grouped(fixture.store);
            fixture
        }

        pub(crate) fn path(&self) -> &PathBuf {
            &self.path
        }
    }

    impl Fixture for SqliteFile {
        type Store = SqliteStore;

        fn store(&self) -> Arc<SqliteStore> {
            Arc::clone(&self.store)
        }

        async fn cleanup(self) {
            self.store.pool().close().await;
            remove_files(&self.path);
        }
    }

    impl DurableFixture for SqliteFile {
        type Store = SqliteStore;

        fn store(&self) -> SqliteStore {
            SqliteStore::clone(&self.store)
        }

        async fn expire_timers(&self) {
            sqlx::query("UPDATE fsm_timers SET due_at = 0")
                .execute(self.store.pool())
                .await
                .expect("expire timers");
        }

        async fn reopen(&self) -> SqliteStore {
            SqliteStore::open(&self.path)
                .await
                .expect("reopen SQLite file")
        }

        async fn cleanup(self) {
            Fixture::cleanup(self).await;
        }
    }

    impl FaultFixture for SqliteFile {
        type Db = sqlx::Sqlite;

        async fn open() -> Option<Self> {
            Some(SqliteFile::new().await)
        }

        /// SQLite keeps what it is given where an `INTEGER` cannot be read from it.
        const VERSION_AS_TEXT: &'static [&'static str] =
            &["UPDATE fsm_machines SET version = 'seven'"];

        /// A file in a directory that does not exist (and is not created).
        const UNREACHABLE_URL: &'static str = "sqlite:/fsm-no-such-dir/deeper/x.db";
    }
}

/// A database created by the previous release (migrations before the column renames)
/// upgrades in place with `migrate()`, and what it held reads back unchanged.
pub(crate) mod upgrade {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use fsm_core::kit::fingerprint;
    use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent, OrderState, Payment};
    use fsm_core::{Command, DurableStore, Trigger};
    use sqlx::migrate::Migrator;

    /// `bytes` as lowercase hex digits, for a backend's binary literal.
    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first migration of this release; everything before it is the previous schema.
    const FIRST_NEW: i64 = 20261202000001;

    /// The previous release's migrations of `dialect` (`sqlite`, `postgres`, `mysql`),
    /// copied into a directory of their own.
    pub(crate) async fn previous_migrator(dialect: &str) -> Migrator {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        let to: PathBuf = std::env::temp_dir().join(super::unique_name());
        std::fs::create_dir_all(&to).expect("a directory for the old migrations");
        for entry in std::fs::read_dir(&from).expect("the migrations directory") {
            let path = entry.expect("a migration").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let version: i64 = name.split('_').next().unwrap().parse().unwrap();
            if version < FIRST_NEW {
                std::fs::copy(&path, to.join(&name)).expect("copy a migration");
            }
        }
        let migrator = Migrator::new(to.as_path())
            .await
            .expect("read the old migrations");
        let _ = std::fs::remove_dir_all(&to);
        migrator
    }

    fn paid() -> OrderData {
        OrderData {
            total_cents: 500,
            paid_cents: 500,
            ..OrderData::default()
        }
    }

    fn pay() -> OrderEvent {
        OrderEvent::Pay(Payment { amount_cents: 500 })
    }

    fn annotate() -> OrderEvent {
        OrderEvent::Annotate(Note("gift".to_owned()))
    }

    /// Rows as the previous release wrote them for order `o-1`: paid at version 1 under
    /// key `k`, its `Charge` effect pending, annotated at version 2 under the source key
    /// `billing#7` (stored as fsm 0.1.0 stored source keys); `bytes` spells a binary
    /// literal.
    pub(crate) fn previous_rows(bytes: impl Fn(&[u8]) -> String) -> Vec<String> {
        let created = OrderData {
            total_cents: 500,
            ..OrderData::default()
        };
        let init = bytes(&fingerprint(&created).unwrap().0);
        let key = bytes(&fingerprint(&pay()).unwrap().0);
        let note_key = bytes(&fingerprint(&annotate()).unwrap().0);
        let mut annotated = paid();
        annotated.notes.push("gift".to_owned());
        let context = serde_json::to_string(&annotated).unwrap();
        let trigger = serde_json::to_string(&Trigger::Event(pay())).unwrap();
        let note = serde_json::to_string(&Trigger::Event(annotate())).unwrap();
        let effect = serde_json::to_string(&OrderEffect::Charge { cents: 500 }).unwrap();
        vec![
            format!(
                "INSERT INTO fsm_machines (machine_type, machine_id, state, version, context, \
                 init_fingerprint, created_at, updated_at) \
                 VALUES ('Order', 'o-1', 'Paid', 2, '{context}', {init}, 1000, 3000)"
            ),
            format!(
                "INSERT INTO fsm_transitions (machine_type, machine_id, version, from_state, \
                 event, payload, to_state, idem_key, fingerprint, at) \
                 VALUES ('Order', 'o-1', 1, 'Created', 'Pay', '{trigger}', 'Paid', 'k', {key}, 2000)"
            ),
            format!(
                "INSERT INTO fsm_transitions (machine_type, machine_id, version, from_state, \
                 event, payload, to_state, idem_key, fingerprint, at) \
                 VALUES ('Order', 'o-1', 2, 'Paid', 'Annotate', '{note}', 'Paid', 'billing#7', \
                 {note_key}, 3000)"
            ),
            format!(
                "INSERT INTO fsm_outbox (machine_type, machine_id, version, seq, effect, \
                 available_at) VALUES ('Order', 'o-1', 1, 0, '{effect}', 2000)"
            ),
            // o-2 waits for payment: its expiry timer names edge 7, by index. o-1's timer
            // of version 0 is stale (o-1 moved on) and can never fire.
            format!(
                "INSERT INTO fsm_machines (machine_type, machine_id, state, version, context, \
                 init_fingerprint, created_at, updated_at) \
                 VALUES ('Order', 'o-2', 'Created', 0, '{created_context}', {init}, 1000, 1000)",
                created_context = serde_json::to_string(&created).unwrap()
            ),
            "INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at) \
             VALUES ('Order', 'o-2', 0, 7, 1801000)"
                .to_owned(),
            "INSERT INTO fsm_timers (machine_type, machine_id, version, edge, due_at) \
             VALUES ('Order', 'o-1', 0, 7, 1801000)"
                .to_owned(),
        ]
    }

    /// After `migrate()`: the instance, its history, its keys (a source key's message
    /// redelivered across the upgrade included) and its pending effect are as the
    /// previous release left them, and the instance goes on.
    pub(crate) async fn previous_rows_read_back<S: DurableStore>(store: &S) {
        let order = store
            .load::<Order>("o-1")
            .await
            .expect("load after upgrade");
        assert_eq!((order.state, order.version), (OrderState::Paid, 2));
        assert_eq!(order.context.notes, ["gift"]);
        let history = store.history::<Order>("o-1").await.expect("history");
        assert_eq!(history.len(), 2);
        let first = &history[0];
        assert_eq!(
            (first.from, first.to),
            (OrderState::Created, OrderState::Paid)
        );
        assert_eq!((first.key.as_deref(), first.at_ms), (Some("k"), 2000));
        assert!(matches!(
            first.event,
            Trigger::Event(OrderEvent::Pay(Payment { amount_cents: 500 }))
        ));
        assert_eq!(history[1].key.as_deref(), Some("billing#7"));
        let replay = store
            .fire("o-1", Command::<Order>::new(pay()).with_key("k"))
            .await
            .expect("the old key replays");
        assert!(replay.is_duplicate(), "{replay:?}");
        let redelivered = store
            .fire(
                "o-1",
                Command::<Order>::new(annotate()).from_source("billing", 7),
            )
            .await
            .expect("the old source key replays");
        assert!(
            redelivered.is_duplicate() && redelivered.transition().version == 2,
            "a message redelivered across the upgrade applies once: {redelivered:?}"
        );
        let pending = store
            .claim_effects("Order", Duration::from_secs(60), 10)
            .await
            .expect("claim the old effect");
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].version, pending[0].seq), (1, 0));
        let effect: OrderEffect = serde_json::from_str(&pending[0].effect).unwrap();
        assert_eq!(effect, OrderEffect::Charge { cents: 500 });
        // Timers are named by state and delay now: o-2's is its expiry; o-1's stale one
        // was not carried over.
        let armed = store.pending_timers::<Order>("o-2").await.unwrap();
        assert_eq!(armed.len(), 1, "{armed:?}");
        assert_eq!(
            (
                armed[0].state.as_str(),
                armed[0].after,
                armed[0].version,
                armed[0].due_at_ms
            ),
            ("Created", fsm_core::testing::EXPIRY, 0, 1_801_000)
        );
        assert!(
            store
                .pending_timers::<Order>("o-1")
                .await
                .unwrap()
                .is_empty()
        );
        // When each entered its state: o-1 at its payment (the annotation is a self-loop),
        // o-2 at its creation.
        let paid = store
            .list(&fsm_core::Query::<Order>::new().in_state(OrderState::Paid))
            .await
            .unwrap();
        assert_eq!(paid.items.len(), 1);
        assert_eq!(paid.items[0].entered_at_ms, 2000);
        let waiting = store
            .list(&fsm_core::Query::<Order>::new().in_state(OrderState::Created))
            .await
            .unwrap();
        assert_eq!(waiting.items[0].entered_at_ms, 1000);
        assert!(store.verify::<Order>().await.unwrap().is_clean());
        let fired = store
            .fire_due_timers::<Order>(10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(fired.len(), 1);
        assert_eq!(
            (fired[0].0.as_str(), fired[0].1.to),
            ("o-2", OrderState::Expired)
        );
        let shipped = store
            .fire("o-1", Command::<Order>::new(OrderEvent::Ship))
            .await
            .expect("fire after upgrade");
        assert_eq!(shipped.transition().version, 3);
    }
}
