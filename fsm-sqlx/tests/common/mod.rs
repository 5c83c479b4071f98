//! What the server-backed test files share: where the server is, unique names, cleanup
//! after a failure, and specifications beyond the conformance suite.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

pub(crate) mod durable;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent, Payment};
use fsm_core::{Command, Store};

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

/// Applied transitions queue their effects as outbox rows (version, seq from 0) in the
/// same commit; a duplicate or a rejected command queues nothing. `outbox` reads
/// `(version, seq, effect)` of every outbox row in that order.
pub(crate) async fn effects_are_queued_once_with_their_transition<S, F, Fut>(
    store: Arc<S>,
    outbox: F,
) where
    S: Store,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Vec<(i64, i32, String)>>,
{
    let pay = || Command::<Order>::new(OrderEvent::Pay(Payment { amount_cents: 500 }));
    let total = OrderData {
        total_cents: 500,
        ..OrderData::default()
    };
    store.create::<Order>("o", total).await.unwrap();
    store.fire("o", pay().with_key("p")).await.unwrap();
    assert!(
        store
            .fire("o", pay().with_key("p"))
            .await
            .unwrap()
            .is_duplicate()
    );
    store.fire("o", pay()).await.unwrap_err();
    let note = OrderEvent::Annotate(Note("gift wrap".to_owned()));
    store.fire("o", Command::new(note)).await.unwrap();
    let rows: Vec<_> = outbox()
        .await
        .into_iter()
        .map(|(version, seq, effect)| {
            let effect: OrderEffect = serde_json::from_str(&effect).expect("effect as JSON");
            (version, seq, effect)
        })
        .collect();
    assert_eq!(
        rows,
        [
            (1, 0, OrderEffect::Charge { cents: 500 }),
            (2, 0, OrderEffect::Noted("gift wrap".to_owned())),
        ]
    );
}

/// PostgreSQL helpers of the tests beyond the conformance suite: a schema of their own,
/// and connections into it that `pg_stat_activity` can tell apart.
#[cfg(feature = "postgres")]
pub(crate) mod pg {
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;
    use sqlx::{Connection, Executor, PgConnection};

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
