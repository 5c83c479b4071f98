//! The DSL's state-level forms through real stores, MemoryStore and SQLite alike: entry
//! and exit actions, and what each transition writes to the outbox.
// Every generated item carries docs.
#![deny(missing_docs)]

use std::time::Duration;

use fsm::{Command, Dispatcher, DurableStore, Effects, MemoryStore};

fsm::state_machine! {
    /// A parcel: each action writes one line to the outbox, so the outbox shows the order
    /// in which entry, edge and exit actions ran.
    machine Parcel {
        effect: String,
        states {
            /// At the depot.
            #[exit(leave_depot)]
            Depot,
            /// On the truck.
            #[entry(board_truck)]
            #[exit(leave_truck)]
            Truck,
            /// Handed over.
            #[entry(ring_doorbell)]
            Door,
            /// Back at the sender, after too long on the truck.
            #[entry(notify_sender)]
            Returned,
        }
        *Depot + Load / load => Truck,
        Truck + Scan / scan => Truck,
        Truck + Deliver / hand_over => Door,
        Truck + after(1 ms) / give_up => Returned,
    }
}

impl ParcelRules for () {
    fn leave_depot(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Depot".into());
    }
    fn board_truck(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Truck".into());
    }
    fn leave_truck(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Truck".into());
    }
    fn ring_doorbell(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Door".into());
    }
    fn notify_sender(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Returned".into());
    }
    fn load(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Load".into());
    }
    fn scan(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Scan".into());
    }
    fn hand_over(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Deliver".into());
    }
    fn give_up(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge after(1 ms)".into());
    }
}

/// The effects written for instance `id`, in outbox (emission) order, with the version
/// of the transition that wrote each.
async fn outbox<S: DurableStore>(store: &S, id: &str) -> Vec<(u64, String)> {
    store
        .outbox::<Parcel>(id)
        .await
        .expect("outbox")
        .into_iter()
        .map(|row| (row.id.version, row.effect.expect("decodes")))
        .collect()
}

fn fire(event: ParcelEvent) -> Command<Parcel> {
    Command::new(event)
}

fn lines(version: u64, effects: &[&str]) -> Vec<(u64, String)> {
    effects.iter().map(|e| (version, (*e).to_owned())).collect()
}

async fn exit_then_edge_then_entry_in_the_outbox<S: DurableStore>(store: S) {
    store.create::<Parcel>("p-1", ()).await.unwrap();
    store.fire("p-1", fire(ParcelEvent::Load)).await.unwrap();
    store.fire("p-1", fire(ParcelEvent::Deliver)).await.unwrap();
    let expected = [
        lines(1, &["exit Depot", "edge Load", "entry Truck"]),
        lines(2, &["exit Truck", "edge Deliver", "entry Door"]),
    ]
    .concat();
    assert_eq!(outbox(&store, "p-1").await, expected);
}

async fn a_self_loop_runs_its_edge_action_but_no_exit_or_entry<S: DurableStore>(store: S) {
    store.create::<Parcel>("p-1", ()).await.unwrap();
    store.fire("p-1", fire(ParcelEvent::Load)).await.unwrap();
    let outcome = store.fire("p-1", fire(ParcelEvent::Scan)).await.unwrap();
    assert_eq!(outcome.transition().to, ParcelState::Truck);
    let rows = outbox(&store, "p-1").await;
    let scan: Vec<_> = rows.into_iter().filter(|(v, _)| *v == 2).collect();
    assert_eq!(scan, lines(2, &["edge Scan"]));
}

async fn a_timer_runs_exit_edge_and_entry_actions_too<S: DurableStore>(store: S) {
    store.create::<Parcel>("p-1", ()).await.unwrap();
    store.fire("p-1", fire(ParcelEvent::Load)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fired = store
        .fire_due_timers::<Parcel>(10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].1.to, ParcelState::Returned);
    let timer: Vec<_> = outbox(&store, "p-1")
        .await
        .into_iter()
        .filter(|(v, _)| *v == 2)
        .collect();
    assert_eq!(
        timer,
        lines(2, &["exit Truck", "edge after(1 ms)", "entry Returned"])
    );
}

async fn the_dispatcher_delivers_effects_in_the_documented_order<S: DurableStore>(store: S) {
    store.create::<Parcel>("p-1", ()).await.unwrap();
    store.fire("p-1", fire(ParcelEvent::Load)).await.unwrap();
    let delivered = std::sync::Mutex::new(Vec::new());
    let report = Dispatcher::new(store.clone())
        .dispatch_once::<Parcel, _, _>(&|delivery: fsm::Delivery<String>| {
            delivered.lock().unwrap().push(delivery.effect);
            async { Ok(()) }
        })
        .await
        .unwrap();
    assert_eq!(report.done, 3);
    assert_eq!(
        delivered.into_inner().unwrap(),
        ["exit Depot", "edge Load", "entry Truck"]
    );
}

#[test]
fn the_definition_carries_entry_and_exit_actions() {
    let truck = Parcel::DEFINITION.state("Truck").unwrap();
    assert_eq!(
        (truck.entry, truck.exit),
        (Some("board_truck"), Some("leave_truck"))
    );
    let depot = Parcel::DEFINITION.state("Depot").unwrap();
    assert_eq!((depot.entry, depot.exit), (None, Some("leave_depot")));
    let mermaid = fsm::diagram::mermaid(Parcel::DEFINITION);
    assert!(mermaid.contains("    Truck : entry / board_truck\n    Truck : exit / leave_truck\n"));
}

#[test]
fn step_alone_orders_effects_the_same_way() {
    let step = fsm::step::<Parcel>(ParcelState::Depot, &mut (), &ParcelEvent::Load).unwrap();
    assert_eq!(
        step.effects.into_vec(),
        ["exit Depot", "edge Load", "entry Truck"]
    );
    let step = fsm::step::<Parcel>(ParcelState::Truck, &mut (), &ParcelEvent::Scan).unwrap();
    assert_eq!(step.effects.into_vec(), ["edge Scan"]);
}

async fn sqlite() -> fsm::sqlx::SqliteStore {
    let store = fsm::sqlx::SqliteStore::memory()
        .await
        .expect("in-memory SQLite");
    store.migrate().await.expect("migrate");
    store
}

/// One `#[tokio::test]` per case and store.
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::MemoryStore::new()).await;
                }
            )*
        }
        mod sqlite_store {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::sqlite().await).await;
                }
            )*
        }
    };
}

on_every_store!(
    exit_then_edge_then_entry_in_the_outbox,
    a_self_loop_runs_its_edge_action_but_no_exit_or_entry,
    a_timer_runs_exit_edge_and_entry_actions_too,
    the_dispatcher_delivers_effects_in_the_documented_order,
);
