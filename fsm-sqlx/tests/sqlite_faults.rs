//! Bad stored data and failing databases give typed errors on SQLite, never panics.
#![cfg(feature = "sqlite")]

use fsm_core::testing::{Order, OrderData, OrderEvent};
use fsm_core::{Command, Error, Store};
use fsm_sqlx::SqliteStore;

async fn store_with_order() -> SqliteStore {
    let store = SqliteStore::memory().await.unwrap();
    store.migrate().await.unwrap();
    store
        .create::<Order>(
            "o-1",
            OrderData {
                total_cents: 5,
                ..OrderData::default()
            },
        )
        .await
        .unwrap();
    store
}

async fn exec(store: &SqliteStore, sql: &str) {
    sqlx::query(sql).execute(store.pool()).await.unwrap();
}

fn assert_corrupt(err: &Error, table: &str, detail: &str) {
    match err {
        Error::Corrupt {
            table: t,
            machine: "Order",
            id,
            detail: d,
        } => {
            assert_eq!((*t, id.as_str()), (table, "o-1"));
            assert!(d.contains(detail), "{d:?} lacks {detail:?}");
        }
        other => panic!("expected Corrupt in {table}, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("Order") && message.contains("o-1") && message.contains(table),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_stored_state_name_is_corrupt() {
    let store = store_with_order().await;
    exec(&store, "UPDATE fsm_machines SET state = 'Lost'").await;
    let err = store.load::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
    let err = store
        .fire("o-1", Command::new(OrderEvent::Cancel))
        .await
        .unwrap_err();
    assert_corrupt(&err, "fsm_machines", "\"Lost\"");
}

#[tokio::test]
async fn invalid_context_json_is_corrupt() {
    let store = store_with_order().await;
    exec(
        &store,
        "UPDATE fsm_machines SET context = '{\"total_cents\": '",
    )
    .await;
    let err = store.load::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "context");
    exec(
        &store,
        "UPDATE fsm_machines SET context = '{\"unrelated\": true}'",
    )
    .await;
    let err = store.load::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "OrderData");
}

#[tokio::test]
async fn column_of_the_wrong_type_is_corrupt() {
    let store = store_with_order().await;
    exec(&store, "UPDATE fsm_machines SET version = 'seven'").await;
    let err = store.load::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_machines", "decode");
}

#[tokio::test]
async fn corrupt_history_rows_are_reported_not_skipped() {
    let store = store_with_order().await;
    store
        .fire("o-1", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    exec(&store, "UPDATE fsm_transitions SET to_state = 'Vanished'").await;
    let err = store.history::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "\"Vanished\"");
    exec(
        &store,
        "UPDATE fsm_transitions SET to_state = 'Cancelled', trigger_json = 'garbage'",
    )
    .await;
    let err = store.history::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "trigger");
    exec(
        &store,
        "UPDATE fsm_transitions SET trigger_json = '{\"event\":\"Cancel\"}', version = 2",
    )
    .await;
    let err = store.history::<Order>("o-1").await.unwrap_err();
    assert_corrupt(&err, "fsm_transitions", "version 2 where 1 was expected");
}

#[tokio::test]
async fn oversized_key_is_rejected_before_any_io() {
    let store = store_with_order().await;
    // With the pool closed, anything that reached the database would be a Database error.
    store.pool().close().await;
    let command = Command::new(OrderEvent::Cancel).with_key("k".repeat(256));
    let err = store.fire("o-1", command).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { len: 256, .. }), "{err:?}");
    let err = store
        .fire("o-1", Command::new(OrderEvent::Cancel))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
}

#[tokio::test]
async fn unopenable_database_is_a_database_error_keeping_the_sqlx_source() {
    let path = std::env::temp_dir()
        .join("fsm-no-such-dir")
        .join("deeper")
        .join("x.db");
    let err = SqliteStore::open(&path).await.unwrap_err();
    let Error::Database { operation, source } = &err else {
        panic!("{err:?}")
    };
    assert!(operation.contains("x.db"), "{operation}");
    assert!(source.downcast_ref::<sqlx::Error>().is_some(), "{source:?}");
    assert!(err.is_transient());
}
