//! The listing cases of the conformance suite: pages by state, by time in state and by id
//! prefix, counts per state, and refused queries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Note, Order, OrderData, OrderEvent, OrderState};
use crate::kit::now_ms;
use crate::{Command, Cursor, Error, Page, Query, Store};

/// Every page of `query`, followed to the end.
async fn all_pages<S: Store>(store: &S, query: Query<Order>) -> Vec<Page<Order>> {
    let mut pages = Vec::new();
    let mut query = query;
    loop {
        let page = store.list(&query).await.expect("list a page");
        let next = page.next.clone();
        pages.push(page);
        match next {
            Some(cursor) => query = query.after(cursor),
            None => return pages,
        }
    }
}

fn ids(pages: &[Page<Order>]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.items.iter().map(|l| l.snapshot.id.clone()))
        .collect()
}

fn annotate(note: &str) -> Command<Order> {
    Command::new(OrderEvent::Annotate(Note(note.to_owned())))
}

/// Pagination by state, and over every instance, returns each instance that matches
/// throughout exactly once while 8 tasks keep firing transitions (self-loops on the
/// listed instances, state changes on others) and creating instances.
pub async fn listing_pages_every_steady_match_exactly_once_while_8_tasks_fire<S: Store>(
    store: Arc<S>,
) {
    let steady: Vec<String> = (0..60).map(|n| format!("steady-{n:03}")).collect();
    let movers: Vec<String> = (0..40).map(|n| format!("mover-{n:03}")).collect();
    for id in steady.iter().chain(&movers) {
        store
            .create::<Order>(id, OrderData::default())
            .await
            .unwrap();
    }
    const NEW_PER_TASK: usize = 25;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..8 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        let (steady, movers) = (steady.clone(), movers.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // A self-loop keeps an instance in its state and in its place.
                let id = &steady[(task * 7 + n) % steady.len()];
                store.fire(id, annotate("still here")).await.unwrap();
                if let Some(id) = movers.get(task * 5 + n) {
                    let _ = store.fire(id, Command::new(OrderEvent::Cancel)).await;
                }
                // Creations are bounded: a listing can only end once the
                // set it walks stops growing past its cursor.
                if n < NEW_PER_TASK {
                    let new = format!("new-{task}-{n:04}");
                    store
                        .create::<Order>(&new, OrderData::default())
                        .await
                        .unwrap();
                }
                n += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    let by_state = Query::<Order>::new().in_state(OrderState::Created).limit(7);
    let oldest = all_pages(&*store, by_state.clone()).await;
    let newest = all_pages(&*store, by_state.newest_first()).await;
    let everything = all_pages(&*store, Query::<Order>::new().limit(9)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    for (name, pages) in [
        ("oldest first", &oldest),
        ("newest first", &newest),
        ("every instance", &everything),
    ] {
        let listed = ids(pages);
        let unique: BTreeSet<&String> = listed.iter().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{name}: an instance listed twice"
        );
        for id in &steady {
            assert!(unique.contains(id), "{name}: {id} is missing");
        }
        assert!(pages.iter().all(|p| p.unreadable.is_empty()));
    }
    for listed in oldest.iter().chain(&newest).flat_map(|p| &p.items) {
        assert_eq!(listed.snapshot.state, OrderState::Created);
    }
    for id in &movers {
        assert!(
            ids(&everything).contains(id),
            "every instance: {id} is missing"
        );
    }
}

/// The counts per state are what a full listing finds.
pub async fn counts_per_state_equal_a_full_scan<S: Store>(store: Arc<S>) {
    let total = OrderData {
        total_cents: 100,
        ..OrderData::default()
    };
    for n in 0..23 {
        let id = format!("count-{n}");
        store.create::<Order>(&id, total.clone()).await.unwrap();
        match n % 3 {
            0 => {}
            1 => {
                store
                    .fire(&id, Command::new(OrderEvent::Cancel))
                    .await
                    .unwrap();
            }
            _ => {
                let pay = OrderEvent::Pay(super::Payment { amount_cents: 100 });
                store.fire(&id, Command::new(pay)).await.unwrap();
            }
        }
    }
    let counts = store.count_by_state::<Order>().await.unwrap();
    let mut scanned: BTreeMap<OrderState, u64> = BTreeMap::new();
    for page in all_pages(&*store, Query::<Order>::new().limit(5)).await {
        for listed in page.items {
            *scanned.entry(listed.snapshot.state).or_default() += 1;
        }
    }
    for state in OrderState::ALL {
        assert_eq!(
            counts.get(state),
            scanned.get(&state).copied().unwrap_or(0),
            "{state}"
        );
    }
    assert_eq!(counts.total(), 23);
    assert_eq!(counts.get(OrderState::Created), 8);
    assert!(counts.unknown.is_empty());
    assert_eq!(counts.states.len(), OrderState::ALL.len());
}

/// "In its state since before T" finds instances by when they entered their current
/// state; a self-loop does not re-enter.
pub async fn entered_before_finds_instances_by_time_in_their_state<S: Store>(store: Arc<S>) {
    store
        .create::<Order>("since-old", OrderData::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .create::<Order>("since-new", OrderData::default())
        .await
        .unwrap();
    let waiting = || {
        Query::<Order>::new()
            .in_state(OrderState::Created)
            .entered_before_ms(cut)
    };
    let listed = ids(&all_pages(&*store, waiting()).await);
    assert_eq!(listed, ["since-old"]);
    store.fire("since-old", annotate("poke")).await.unwrap();
    let listed = ids(&all_pages(&*store, waiting()).await);
    assert_eq!(listed, ["since-old"], "a self-loop does not re-enter");
    store
        .fire("since-old", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    assert!(ids(&all_pages(&*store, waiting()).await).is_empty());
    let cancelled_before = Query::<Order>::new()
        .in_state(OrderState::Cancelled)
        .entered_before_ms(cut);
    assert!(ids(&all_pages(&*store, cancelled_before).await).is_empty());
    let page = store
        .list(&Query::<Order>::new().in_state(OrderState::Cancelled))
        .await
        .unwrap();
    let listed = &page.items[0];
    assert_eq!(listed.snapshot.id, "since-old");
    assert!(listed.entered_at_ms >= cut && listed.created_at_ms < cut);
    assert!(listed.updated_at_ms >= listed.entered_at_ms);
    // Nothing has been anywhere for a day.
    let stuck = Query::<Order>::new()
        .in_states([OrderState::Created, OrderState::Cancelled])
        .stuck_for(Duration::from_secs(86_400));
    assert!(store.list(&stuck).await.unwrap().items.is_empty());
}

/// An id prefix lists the ids that start with it, in byte order, across pages.
pub async fn id_prefix_lists_matching_ids_in_byte_order<S: Store>(store: Arc<S>) {
    let matching = ["p-a", "p-b", "p-z", "p-\u{e9}", "p-\u{10FFFF}"];
    for id in matching.iter().chain(&["p", "p.", "pa", "q-a"]) {
        store
            .create::<Order>(id, OrderData::default())
            .await
            .unwrap();
    }
    store
        .fire("p-b", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    let ascending = ids(&all_pages(&*store, Query::<Order>::new().id_prefix("p-").limit(2)).await);
    assert_eq!(ascending, matching);
    let descending = ids(&all_pages(
        &*store,
        Query::<Order>::new()
            .id_prefix("p-")
            .newest_first()
            .limit(2),
    )
    .await);
    let mut reversed = matching.to_vec();
    reversed.reverse();
    assert_eq!(descending, reversed);
    let created = Query::<Order>::new()
        .in_state(OrderState::Created)
        .id_prefix("p-");
    let mut listed = ids(&all_pages(&*store, created).await);
    listed.sort();
    assert_eq!(listed, ["p-a", "p-z", "p-\u{e9}", "p-\u{10FFFF}"]);
}

/// A cursor no store issued, one of another ordering, and a limit outside 1..=1000 are
/// [`Error::InvalidQuery`], before any I/O.
pub async fn foreign_cursors_and_bad_limits_are_invalid_queries<S: Store>(store: Arc<S>) {
    for id in ["c-1", "c-2", "c-3"] {
        store
            .create::<Order>(id, OrderData::default())
            .await
            .unwrap();
    }
    let page = store.list(&Query::<Order>::new().limit(1)).await.unwrap();
    let cursor = page.next.expect("more than one page");
    let other_order = Query::<Order>::new().newest_first().after(cursor.clone());
    let forged: Cursor = "not-a-cursor".parse().unwrap();
    for query in [
        other_order,
        Query::<Order>::new()
            .in_state(OrderState::Paid)
            .after(cursor),
        Query::<Order>::new().after(forged),
        Query::<Order>::new().limit(0),
        Query::<Order>::new().limit(1001),
    ] {
        let err = store.list(&query).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidQuery {
                    machine: "Order",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
