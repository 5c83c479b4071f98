//! Dispatchers of other stores on the database woken by `LISTEN/NOTIFY`: a store over a
//! pool of its own stands for another process (it shares nothing in memory with the
//! store that commits), and its dispatcher polls every 30 s, so handling an effect
//! within seconds means a notification woke it.
//!
//! Reads the server from `FSM_POSTGRES_URL`, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`; without it the tests are skipped, or fail
//! when `CI` is set.
#![cfg(feature = "postgres")]

mod common;

use std::time::{Duration, Instant};

use common::pg::Schema;
use fsm_core::kit::OutboxWakeup;
use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent};
use fsm_core::{Command, Delivery, DispatchOptions, Dispatcher, DurableStore, Store};
use fsm_sqlx::PgStore;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const URL_VAR: &str = "FSM_POSTGRES_URL";
/// The dispatchers' poll: far longer than any wait the tests allow.
const POLL: Duration = Duration::from_secs(30);
/// What "at once" means on a loaded machine: well before the poll.
const SOON: Duration = Duration::from_secs(5);
/// How long a wake-up that must not come is waited for.
const QUIET: Duration = Duration::from_secs(1);

/// A store on `schema` over a pool of its own, its connections named `name` in
/// `pg_stat_activity`.
async fn store_on(schema: &Schema, name: &str) -> PgStore {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(schema.options(name))
        .await
        .expect("connect to FSM_POSTGRES_URL");
    PgStore::from_pool(pool)
}

/// A dispatcher of `Order` effects on `store` polling every 30 s, reporting each
/// effect's instance id; stopped by the token.
fn dispatch(store: &PgStore) -> (mpsc::UnboundedReceiver<String>, CancellationToken) {
    let (handled, receiver) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let dispatcher = Dispatcher::new(store.clone()).with_options(DispatchOptions {
        idle_poll: POLL,
        ..DispatchOptions::default()
    });
    let handler = move |delivery: Delivery<OrderEffect>| {
        let _ = handled.send(delivery.id.id.clone());
        std::future::ready(Ok::<(), fsm_core::BoxError>(()))
    };
    tokio::spawn(dispatcher.run::<Order, _, _>(handler, shutdown.clone()));
    (receiver, shutdown)
}

/// Commits one `Noted` effect of a new instance `id` through `store`.
async fn commit_effect(store: &PgStore, id: &str) {
    store
        .create::<Order>(id, OrderData::default())
        .await
        .expect("create");
    store
        .fire(id, Command::new(OrderEvent::Annotate(Note(id.into()))))
        .await
        .expect("annotate");
}

/// A wake-up of `Order` effects on `store`, once its listener is connected: the
/// listener wakes every wake-up when it connects, which is waited for here.
async fn listening(store: &PgStore) -> OutboxWakeup {
    let mut wakeup = store
        .outbox_wakeup("Order")
        .expect("a PgStore offers wake-ups");
    tokio::time::timeout(SOON, wakeup.wait())
        .await
        .expect("the listener connects and wakes its dispatchers");
    wakeup.mark_seen();
    wakeup
}

async fn woken(wakeup: &mut OutboxWakeup, within: Duration) -> bool {
    tokio::time::timeout(within, wakeup.wait()).await.is_ok()
}

async fn next_handled(handled: &mut mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(SOON, handled.recv())
        .await
        .ok()
        .flatten()
}

/// The pid of the listening connection among `application_name`'s: the last statement
/// it ran is the listener's own.
async fn listener_pid(store: &PgStore, application_name: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
         AND (query LIKE 'SELECT coalesce(current_schema()%' OR query LIKE 'LISTEN %')",
    )
    .bind(application_name)
    .fetch_optional(store.pool())
    .await
    .expect("read pg_stat_activity")
}

/// Polls `condition` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_committed_through_another_pool_wakes_a_dispatcher_before_its_poll() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let mut schema = Schema::create(url).await;
    let committer = store_on(&schema, &format!("{}-a", schema.name)).await;
    committer.migrate().await.expect("migrate");
    let remote = store_on(&schema, &format!("{}-b", schema.name)).await;
    let (mut handled, shutdown) = dispatch(&remote);

    // Committed while the remote listener may still be connecting: its first
    // connection wakes the dispatcher, which finds the effect.
    commit_effect(&committer, "o-1").await;
    assert_eq!(next_handled(&mut handled).await.as_deref(), Some("o-1"));
    // Listening by now: each commit is heard.
    for id in ["o-2", "o-3"] {
        let committed = Instant::now();
        commit_effect(&committer, id).await;
        assert_eq!(next_handled(&mut handled).await.as_deref(), Some(id));
        eprintln!(
            "{id}: handled {:?} after the fire began",
            committed.elapsed()
        );
    }

    shutdown.cancel();
    committer.pool().close().await;
    remote.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_another_schema_is_not_woken() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let mut schema = Schema::create(url.clone()).await;
    let mut other_schema = Schema::create(url).await;
    let committer = store_on(&schema, &format!("{}-a", schema.name)).await;
    committer.migrate().await.expect("migrate");
    let same = store_on(&schema, &format!("{}-b", schema.name)).await;
    let other = store_on(&other_schema, &format!("{}-c", other_schema.name)).await;
    let mut same_wakeup = listening(&same).await;
    let mut other_wakeup = listening(&other).await;

    commit_effect(&committer, "o-1").await;
    assert!(
        woken(&mut same_wakeup, SOON).await,
        "the store on the same schema is woken"
    );
    assert!(
        !woken(&mut other_wakeup, QUIET).await,
        "the store on another schema is not"
    );

    for store in [committer, same, other] {
        store.pool().close().await;
    }
    schema.drop_now().await;
    other_schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_does_not_hear_its_own_notifications() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let mut schema = Schema::create(url).await;
    let store = store_on(&schema, &format!("{}-a", schema.name)).await;
    store.migrate().await.expect("migrate");
    let peer = store_on(&schema, &format!("{}-b", schema.name)).await;
    let mut own = listening(&store).await;
    let mut peers = listening(&peer).await;

    commit_effect(&store, "o-1").await;
    // Woken in process at the commit, before any notification is sent.
    assert!(woken(&mut own, Duration::ZERO).await);
    own.mark_seen();
    assert!(woken(&mut peers, SOON).await, "the notification was sent");
    assert!(
        !woken(&mut own, QUIET).await,
        "its own notification does not wake the store's dispatchers a second time"
    );

    store.pool().close().await;
    peer.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let mut schema = Schema::create(url).await;
    let committer = store_on(&schema, &format!("{}-a", schema.name)).await;
    committer.migrate().await.expect("migrate");
    let remote_name = format!("{}-b", schema.name);
    let remote = store_on(&schema, &remote_name).await;
    let (mut handled, shutdown) = dispatch(&remote);
    commit_effect(&committer, "o-1").await;
    assert_eq!(next_handled(&mut handled).await.as_deref(), Some("o-1"));

    let killed = listener_pid(&committer, &remote_name)
        .await
        .expect("the remote store's listening connection");
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(killed)
        .fetch_one(committer.pool())
        .await
        .expect("terminate the listener's backend");
    assert!(terminated);
    let reconnected = eventually(SOON, || async {
        listener_pid(&committer, &remote_name)
            .await
            .is_some_and(|pid| pid != killed)
    })
    .await;
    assert!(
        reconnected,
        "a new listening connection replaces the killed one"
    );

    commit_effect(&committer, "o-2").await;
    assert_eq!(
        next_handled(&mut handled).await.as_deref(),
        Some("o-2"),
        "a commit after the reconnection still wakes the remote dispatcher"
    );

    shutdown.cancel();
    committer.pool().close().await;
    remote.pool().close().await;
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_store_ends_its_notifier_and_listener() {
    let Some(url) = common::server_url(URL_VAR) else {
        return;
    };
    let mut schema = Schema::create(url).await;
    let committer_name = format!("{}-a", schema.name);
    let committer = store_on(&schema, &committer_name).await;
    committer.migrate().await.expect("migrate");
    let remote_name = format!("{}-b", schema.name);
    let remote = store_on(&schema, &remote_name).await;
    let observer = store_on(&schema, &format!("{}-c", schema.name)).await;
    let (mut handled, shutdown) = dispatch(&remote);
    // The committer's notifier runs, and the remote's listener.
    commit_effect(&committer, "o-1").await;
    assert_eq!(next_handled(&mut handled).await.as_deref(), Some("o-1"));
    let listener = listener_pid(&observer, &remote_name)
        .await
        .expect("the remote store's listening connection");

    // No handle of the committer's pool is left: its connections close only if its
    // notifier let go of the pool.
    drop(committer);
    let backends = |name: String| {
        let observer = observer.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(name)
            .fetch_one(observer.pool())
            .await
            .expect("read pg_stat_activity")
        }
    };
    let closed = eventually(SOON, || {
        let count = backends(committer_name.clone());
        async move { count.await == 0 }
    })
    .await;
    assert!(closed, "the committer's pool closed with its last store");

    // The listener gives its connection back (UNLISTEN first), and the pool closes.
    shutdown.cancel();
    let pool = remote.pool().clone();
    drop(remote);
    let unlistened = eventually(SOON, || {
        let observer = observer.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT query FROM pg_stat_activity WHERE pid = $1")
                .bind(listener)
                .fetch_optional(observer.pool())
                .await
                .expect("read pg_stat_activity")
                .is_some_and(|query| query == "UNLISTEN *")
        }
    })
    .await;
    assert!(
        unlistened,
        "the listener stopped listening with the last store"
    );
    tokio::time::timeout(SOON, pool.close())
        .await
        .expect("the pool closes: no task of the store holds a connection");

    observer.pool().close().await;
    schema.drop_now().await;
}
