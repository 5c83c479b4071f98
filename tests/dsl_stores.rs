//! The DSL's newer forms through real stores, MemoryStore and SQLite alike: entry and
//! exit actions with what each transition writes to the outbox, wildcard sources, and
//! composite (parent) states.
// Every generated item carries docs.
#![deny(missing_docs)]

use std::time::Duration;

use fsm::{Command, Dispatcher, DurableStore, Effects, Error, MemoryStore};
use serde::{Deserialize, Serialize};

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

fsm::state_machine! {
    /// A support ticket: any open state may be closed, except that an assigned ticket
    /// closes only through its own guarded edge.
    machine Ticket {
        context: TicketData,
        effect: String,
        *New + Assign => Assigned,
        Assigned + Resolve => Resolved,
        Resolved + Reopen => New,
        Assigned + Close [assignee_agrees] / close_assigned => Closed,
        _ + Close / close_any => Closed,
    }
}

/// What a ticket knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TicketData {
    /// Whether the assignee agrees to close.
    agrees: bool,
}

impl TicketRules for TicketData {
    fn assignee_agrees(&self) -> bool {
        self.agrees
    }
    fn close_assigned(&mut self, effects: &mut Effects<String>) {
        effects.emit("closed by the assignee".into());
    }
    fn close_any(&mut self, effects: &mut Effects<String>) {
        effects.emit("closed".into());
    }
}

async fn a_wildcard_leaves_every_state_without_its_own_edge<S: DurableStore>(store: S) {
    for (id, path) in [
        ("t-new", &[][..]),
        (
            "t-resolved",
            &[TicketEvent::Assign, TicketEvent::Resolve][..],
        ),
    ] {
        store
            .create::<Ticket>(id, TicketData::default())
            .await
            .unwrap();
        for event in path {
            store.fire(id, Command::new(event.clone())).await.unwrap();
        }
        let outcome = store.fire(id, Command::new(TicketEvent::Close)).await;
        assert_eq!(
            outcome.unwrap().transition().to,
            TicketState::Closed,
            "{id}"
        );
        let effects: Vec<String> = store
            .outbox::<Ticket>(id)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|row| row.effect)
            .collect();
        assert_eq!(effects, ["closed"], "{id}");
    }
}

async fn an_explicit_edge_wins_over_the_wildcard_even_when_its_guard_fails<S: DurableStore>(
    store: S,
) {
    store
        .create::<Ticket>("t-1", TicketData { agrees: false })
        .await
        .unwrap();
    store
        .fire("t-1", Command::new(TicketEvent::Assign))
        .await
        .unwrap();
    let refused = store.fire("t-1", Command::new(TicketEvent::Close)).await;
    assert!(
        matches!(&refused, Err(Error::GuardRejected { guards, .. }) if guards == &["assignee_agrees"]),
        "{refused:?}"
    );
    store
        .create::<Ticket>("t-2", TicketData { agrees: true })
        .await
        .unwrap();
    store
        .fire("t-2", Command::new(TicketEvent::Assign))
        .await
        .unwrap();
    store
        .fire("t-2", Command::new(TicketEvent::Close))
        .await
        .unwrap();
    let effects: Vec<String> = store
        .outbox::<Ticket>("t-2")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|row| row.effect)
        .collect();
    assert_eq!(effects, ["closed by the assignee"]);
}

async fn a_terminal_state_gets_no_wildcard_edge<S: DurableStore>(store: S) {
    store
        .create::<Ticket>("t-1", TicketData::default())
        .await
        .unwrap();
    store
        .fire("t-1", Command::new(TicketEvent::Close))
        .await
        .unwrap();
    let again = store.fire("t-1", Command::new(TicketEvent::Close)).await;
    assert!(matches!(&again, Err(e) if e.is_repeat()), "{again:?}");
}

#[test]
fn the_definition_marks_the_edges_a_wildcard_generated() {
    let generated: Vec<(&str, &str)> = Ticket::DEFINITION
        .edges
        .iter()
        .filter(|e| e.from_wildcard)
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(generated, [("New", "Closed"), ("Resolved", "Closed")]);
    let closed = Ticket::DEFINITION.state("Closed").unwrap();
    assert!(closed.terminal);
    let mermaid = fsm::diagram::mermaid(Ticket::DEFINITION);
    assert!(mermaid.contains(
        "    %% _ + Close / close_any => Closed: every state without its own edge\n    \
         New --> Closed : Close (any) / close_any\n    \
         Resolved --> Closed : Close (any) / close_any\n"
    ));
}

fsm::state_machine! {
    /// An order whose fulfilment is one parent state, `Active`, with a nested parent
    /// `Packing`. Each action writes one line to the outbox, so the outbox shows which
    /// entry, exit and edge actions ran, in order.
    machine Fulfilment {
        effect: String,
        states {
            #[exit(leave_cart)]
            Cart,
            /// Paid for and not yet delivered.
            #[entry(open_case)]
            #[exit(close_case)]
            Active {
                #[entry(enter_paid)]
                #[exit(leave_paid)]
                *Paid,
                #[entry(open_box)]
                #[exit(seal_box)]
                Packing { *Picking, Packed }
                #[entry(enter_shipped)]
                Shipped,
            }
            #[entry(enter_cancelled)]
            Cancelled,
            Delivered,
        }
        *Cart + Checkout / checkout => Active,
        Paid + Pack / pack => Packing,
        Picking + Pick / pick => Packed,
        Packed + Ship / ship => Shipped,
        Shipped + Deliver => Delivered,
        Shipped + Cancel / refuse => Shipped,
        Packing + Cancel / unpack => Paid,
        Active + Cancel / cancel => Cancelled,
    }
}

impl FulfilmentRules for () {
    fn leave_cart(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Cart".into());
    }
    fn open_case(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Active".into());
    }
    fn close_case(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Active".into());
    }
    fn enter_paid(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Paid".into());
    }
    fn leave_paid(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Paid".into());
    }
    fn open_box(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Packing".into());
    }
    fn seal_box(&mut self, effects: &mut Effects<String>) {
        effects.emit("exit Packing".into());
    }
    fn enter_shipped(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Shipped".into());
    }
    fn enter_cancelled(&mut self, effects: &mut Effects<String>) {
        effects.emit("entry Cancelled".into());
    }
    fn checkout(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Checkout".into());
    }
    fn pack(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Pack".into());
    }
    fn pick(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Pick".into());
    }
    fn ship(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Ship".into());
    }
    fn refuse(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Cancel refused".into());
    }
    fn unpack(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Cancel unpack".into());
    }
    fn cancel(&mut self, effects: &mut Effects<String>) {
        effects.emit("edge Cancel".into());
    }
}

/// Creates fulfilment `id` and fires `events` at it.
async fn fulfilment<S: DurableStore>(store: &S, id: &str, events: &[FulfilmentEvent]) {
    store.create::<Fulfilment>(id, ()).await.unwrap();
    for event in events {
        store.fire(id, Command::new(event.clone())).await.unwrap();
    }
}

/// The effects of fulfilment `id`'s transition to `version`, in outbox order.
async fn effects_of<S: DurableStore>(store: &S, id: &str, version: u64) -> Vec<String> {
    store
        .outbox::<Fulfilment>(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.id.version == version)
        .filter_map(|row| row.effect)
        .collect()
}

async fn an_edge_into_a_parent_enters_its_initial_child_parent_entry_first<S: DurableStore>(
    store: S,
) {
    fulfilment(&store, "f-1", &[FulfilmentEvent::Checkout]).await;
    assert_eq!(
        effects_of(&store, "f-1", 1).await,
        ["exit Cart", "edge Checkout", "entry Active", "entry Paid"]
    );
    let snapshot = store.load::<Fulfilment>("f-1").await.unwrap();
    assert_eq!(snapshot.state, FulfilmentState::Paid);
    assert!(snapshot.state.is_within("Active"));
}

async fn a_parent_edge_applies_to_a_child_without_its_own<S: DurableStore>(store: S) {
    fulfilment(&store, "f-1", &[FulfilmentEvent::Checkout]).await;
    let outcome = store
        .fire("f-1", Command::new(FulfilmentEvent::Cancel))
        .await
        .unwrap();
    assert_eq!(outcome.transition().to, FulfilmentState::Cancelled);
    // Leaving the parent: exit the child, exit the parent, the edge, entry of the target.
    assert_eq!(
        effects_of(&store, "f-1", 2).await,
        ["exit Paid", "exit Active", "edge Cancel", "entry Cancelled"]
    );
}

async fn a_childs_own_edge_wins_over_its_parents<S: DurableStore>(store: S) {
    use FulfilmentEvent::{Cancel, Checkout, Pack, Pick, Ship};
    fulfilment(&store, "f-1", &[Checkout, Pack, Pick, Ship]).await;
    let outcome = store.fire("f-1", Command::new(Cancel)).await.unwrap();
    // `Shipped + Cancel` is a self-loop: its edge action only.
    assert_eq!(outcome.transition().to, FulfilmentState::Shipped);
    assert_eq!(effects_of(&store, "f-1", 5).await, ["edge Cancel refused"]);
}

async fn a_nearer_parents_edge_wins_and_exits_only_up_to_the_common_parent<S: DurableStore>(
    store: S,
) {
    use FulfilmentEvent::{Cancel, Checkout, Pack};
    fulfilment(&store, "f-1", &[Checkout, Pack]).await;
    let outcome = store.fire("f-1", Command::new(Cancel)).await.unwrap();
    // `Packing + Cancel`, not `Active + Cancel`: Picking -> Paid stays inside Active.
    assert_eq!(outcome.transition().to, FulfilmentState::Paid);
    assert_eq!(
        effects_of(&store, "f-1", 3).await,
        ["exit Packing", "edge Cancel unpack", "entry Paid"]
    );
}

async fn a_move_inside_a_parent_runs_none_of_its_actions<S: DurableStore>(store: S) {
    use FulfilmentEvent::{Checkout, Pack, Pick, Ship};
    fulfilment(&store, "f-1", &[Checkout, Pack, Pick, Ship]).await;
    // Paid -> Packing's initial child Picking: into Packing, not out of Active.
    assert_eq!(
        effects_of(&store, "f-1", 2).await,
        ["exit Paid", "edge Pack", "entry Packing"]
    );
    // Picking -> Packed inside Packing: neither Packing's nor Active's actions.
    assert_eq!(effects_of(&store, "f-1", 3).await, ["edge Pick"]);
    assert_eq!(
        effects_of(&store, "f-1", 4).await,
        ["exit Packing", "edge Ship", "entry Shipped"]
    );
}

async fn the_stored_state_is_always_a_leaf<S: DurableStore>(store: S) {
    use FulfilmentEvent::{Checkout, Pack};
    fulfilment(&store, "f-1", &[Checkout, Pack]).await;
    let snapshot = store.load::<Fulfilment>("f-1").await.unwrap();
    assert_eq!(snapshot.state.as_str(), "Picking");
    assert!(snapshot.state.is_within("Packing") && snapshot.state.is_within("Active"));
    let history = store.history::<Fulfilment>("f-1").await.unwrap();
    let path: Vec<(&str, &str)> = history
        .iter()
        .map(|t| (t.from.as_str(), t.to.as_str()))
        .collect();
    assert_eq!(path, [("Cart", "Paid"), ("Paid", "Picking")]);
}

#[test]
fn parents_are_not_states_an_instance_can_be_in() {
    let names: Vec<&str> = FulfilmentState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "Cart",
            "Paid",
            "Picking",
            "Packed",
            "Shipped",
            "Cancelled",
            "Delivered"
        ]
    );
    assert!("Active".parse::<FulfilmentState>().is_err());
    assert_eq!(
        <Fulfilment as fsm::StateMachine>::INITIAL,
        FulfilmentState::Cart
    );
}

#[test]
fn the_definition_carries_the_hierarchy() {
    let d = Fulfilment::DEFINITION;
    let parents: Vec<(&str, Option<&str>, Option<&str>)> = d
        .parents
        .iter()
        .map(|p| (p.name, p.parent, p.initial))
        .collect();
    assert_eq!(
        parents,
        [
            ("Active", None, Some("Paid")),
            ("Packing", Some("Active"), Some("Picking"))
        ]
    );
    let active = d.parent("Active").unwrap();
    assert_eq!(
        (active.doc, active.entry, active.exit),
        (
            "Paid for and not yet delivered.",
            Some("open_case"),
            Some("close_case")
        )
    );
    assert_eq!(d.state("Packed").unwrap().parent, Some("Packing"));
    let within: Vec<&str> = d.leaves_within("Active").map(|s| s.name).collect();
    assert_eq!(within, ["Paid", "Picking", "Packed", "Shipped"]);
    let generated: Vec<(&str, &str, Option<&str>)> = d
        .edges
        .iter()
        .filter(|e| e.from_parent.is_some())
        .map(|e| (e.from, e.to, e.from_parent))
        .collect();
    assert_eq!(
        generated,
        [
            ("Picking", "Paid", Some("Packing")),
            ("Packed", "Paid", Some("Packing")),
            ("Paid", "Cancelled", Some("Active")),
        ]
    );
    let checkout = &d.edges[0];
    assert_eq!((checkout.to, checkout.to_parent), ("Paid", Some("Active")));
}

#[test]
fn step_alone_runs_exits_and_entries_across_parents() {
    let step =
        fsm::step::<Fulfilment>(FulfilmentState::Packed, &mut (), &FulfilmentEvent::Ship).unwrap();
    assert_eq!(
        step.effects.into_vec(),
        ["exit Packing", "edge Ship", "entry Shipped"]
    );
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
    a_wildcard_leaves_every_state_without_its_own_edge,
    an_explicit_edge_wins_over_the_wildcard_even_when_its_guard_fails,
    a_terminal_state_gets_no_wildcard_edge,
    an_edge_into_a_parent_enters_its_initial_child_parent_entry_first,
    a_parent_edge_applies_to_a_child_without_its_own,
    a_childs_own_edge_wins_over_its_parents,
    a_nearer_parents_edge_wins_and_exits_only_up_to_the_common_parent,
    a_move_inside_a_parent_runs_none_of_its_actions,
    the_stored_state_is_always_a_leaf,
);
