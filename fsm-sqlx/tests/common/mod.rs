//! What the server-backed test files share: where the server is, unique names, cleanup
//! after a failure, and specifications beyond the conformance suite.

// Each test crate includes this module and uses only part of it.
#![allow(dead_code)]

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
