//! A console served on 127.0.0.1 over a real store, with orders in every situation the
//! pages show: several states, a stuck one, history, timers, effects and a dead letter.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::time::Duration;

use fsm_core::kit::Settlement;
use fsm_core::testing::{Note, Order, OrderData, OrderEvent, Payment};
use fsm_core::{Command, DurableStore, EffectId, MemoryStore};

/// The id an attacker would choose.
pub(crate) const SCRIPT_ID: &str = "<script>alert('id')</script>";

/// A running console.
pub(crate) struct Served {
    /// `http://127.0.0.1:PORT/console`.
    pub(crate) url: String,
    /// The `Origin` of the server.
    pub(crate) origin: String,
    pub(crate) http: reqwest::Client,
}

/// Serves `console` nested at `/console` on a free port, as the HTTP example does.
pub(crate) async fn serve(console: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().nest("/console", console);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Served {
        url: format!("{origin}/console"),
        origin,
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Served {
    /// The body of `GET path`, which must answer `status`.
    pub(crate) async fn page(&self, path: &str, status: u16) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "GET {path}");
        response.text().await.unwrap()
    }
}

fn order(total_cents: u64) -> OrderData {
    OrderData {
        total_cents,
        ..OrderData::default()
    }
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

/// Orders: 3 created (one with a hostile id and context), 2 paid (one annotated), 1
/// shipped, 1 cancelled after payment whose refund is a dead letter. Returns the dead
/// letter's id.
pub(crate) async fn seed<S: DurableStore>(store: &S) -> EffectId {
    for id in ["o-created-1", "o-created-2"] {
        store.create::<Order>(id, order(500)).await.unwrap();
    }
    let hostile = OrderData {
        total_cents: 1,
        notes: vec!["<script>alert('context')</script>".into()],
        ..OrderData::default()
    };
    store.create::<Order>(SCRIPT_ID, hostile).await.unwrap();
    for id in ["o-paid-1", "o-paid-2", "o-shipped", "o-refunded"] {
        store.create::<Order>(id, order(500)).await.unwrap();
        store
            .fire(id, pay(500).with_key(format!("pay-{id}")))
            .await
            .unwrap();
    }
    store
        .fire(
            "o-paid-1",
            Command::new(OrderEvent::Annotate(Note("<b>gift</b> wrap".into()))),
        )
        .await
        .unwrap();
    store
        .fire("o-shipped", Command::new(OrderEvent::Ship))
        .await
        .unwrap();
    store
        .fire("o-refunded", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    // Every charge is handled; the refund fails for good.
    let claimed = store
        .claim_effects("Order", Duration::from_secs(60), 100)
        .await
        .unwrap();
    let mut dead = None;
    for row in &claimed {
        let settlement = if row.machine_id == "o-refunded" && row.version == 2 {
            dead = Some(row.id("Order"));
            Settlement::Dead {
                error: "<i>processor</i> refused",
            }
        } else {
            Settlement::Done
        };
        assert!(store.settle_effect("Order", row, settlement).await.unwrap());
    }
    dead.expect("the refund was claimed")
}

/// A memory store seeded with [`seed`].
pub(crate) async fn memory() -> (MemoryStore, EffectId) {
    let store = MemoryStore::new();
    let dead = seed(&store).await;
    (store, dead)
}

/// The server URL in env var `var`, or `None` (a skip, printed) when it is unset.
///
/// # Panics
///
/// When `var` is unset and `CI` is set: CI runs against the servers.
pub(crate) fn server_url(var: &str) -> Option<String> {
    if let Some(url) = std::env::var(var).ok().filter(|url| !url.is_empty()) {
        return Some(url);
    }
    let in_ci = std::env::var_os("CI").is_some_and(|ci| !ci.is_empty());
    assert!(!in_ci, "{var} is not set, but CI is: set {var}");
    eprintln!("skipping: {var} is not set");
    None
}

/// A name of this test's own, valid unquoted on every server.
pub(crate) fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "fsm_console_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A PostgreSQL store in a schema of its own; `drop_schema` removes it.
pub(crate) async fn postgres(url: &str) -> (fsm_sqlx::PgStore, String) {
    use std::str::FromStr;
    let schema = unique_name();
    let admin = sqlx::PgPool::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = fsm_sqlx::PgStore::from_pool(pool);
    store.migrate().await.unwrap();
    (store, schema)
}

pub(crate) async fn drop_schema(url: &str, schema: &str) {
    let admin = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// A MySQL store in a database of its own; `drop_database` removes it.
pub(crate) async fn mysql(url: &str) -> (fsm_sqlx::MySqlStore, String) {
    use std::str::FromStr;
    let name = unique_name();
    let admin = sqlx::MySqlPool::connect(url)
        .await
        .expect("connect to MySQL");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url)
        .unwrap()
        .database(&name);
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = fsm_sqlx::MySqlStore::from_pool(pool);
    store.migrate().await.unwrap();
    (store, name)
}

pub(crate) async fn drop_database(url: &str, name: &str) {
    let admin = sqlx::MySqlPool::connect(url).await.unwrap();
    sqlx::raw_sql(&format!("DROP DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}
