//! What `state_machine!` generates, exercised through the public API.
// Every generated item carries docs.
#![deny(missing_docs)]

use std::time::Duration;

use fsm::On;
use fsm::{Effects, Rejection, StateMachine, UnknownName};
use serde::{Deserialize, Serialize};

/// Payload of `Pay`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    amount: u64,
}

/// Payload of `Cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason(String);

/// Payload of `Ship`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracking {
    number: String,
}

/// The order's context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderData {
    total: u64,
    paid: u64,
    reminders: u32,
    notes: Vec<String>,
}

/// What the order's actions emit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEffect {
    /// Charge the card this much.
    Charge(u64),
    /// Refund this much.
    Refund(u64),
    /// Send the n-th payment reminder.
    Remind(u32),
}

fsm::state_machine! {
    /// An order from checkout to delivery.
    pub machine Order {
        context: OrderData,
        effect: OrderEffect,
        states {
            /// Waiting for payment.
            Created,
            #[terminal] Delivered,
        }
        events {
            /// The customer paid.
            Pay,
        }
        *Created + Pay(Payment) [covers_total] / record_payment => Paid,
        Created + Pay [is_positive] / record_payment => PartlyPaid,
        PartlyPaid + Pay(Payment) [covers_total] / record_payment => Paid,
        Created | PartlyPaid | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
        Paid + Ship(Tracking) => Shipped,
        Shipped + Deliver => Delivered,
        Created + after(30 min) => Expired,
        PartlyPaid + after(2 d) [reminders_left] / remind => PartlyPaid,
    }
}

impl OrderRules for OrderData {
    fn covers_total(&self, payment: &Payment) -> bool {
        self.paid + payment.amount >= self.total
    }

    fn is_positive(&self, payment: &Payment) -> bool {
        payment.amount > 0
    }

    fn record_payment(&mut self, payment: &Payment, effects: &mut Effects<OrderEffect>) {
        self.paid += payment.amount;
        effects.emit(OrderEffect::Charge(payment.amount));
    }

    fn refund_if_paid(&mut self, reason: &Reason, effects: &mut Effects<OrderEffect>) {
        if self.paid > 0 {
            effects.emit(OrderEffect::Refund(self.paid));
        }
        self.notes.push(reason.0.clone());
    }

    fn reminders_left(&self) -> bool {
        self.reminders < 2
    }

    fn remind(&mut self, effects: &mut Effects<OrderEffect>) {
        self.reminders += 1;
        effects.emit(OrderEffect::Remind(self.reminders));
    }
}

fsm::state_machine! {
    machine Toggle {
        *Off + Flip => On,
        On + Flip => Off,
    }
}

fn order(total: u64) -> OrderData {
    OrderData {
        total,
        ..OrderData::default()
    }
}

fn pay(amount: u64) -> OrderEvent {
    OrderEvent::Pay(Payment { amount })
}

fn timer_edge(from: &str) -> fsm::EdgeIndex {
    let (index, _) = Order::DEFINITION
        .timers()
        .find(|(_, edge)| edge.from == from)
        .expect("a timer leaves this state");
    fsm::EdgeIndex::try_from(index).unwrap()
}

#[test]
fn guarded_edges_run_in_declaration_order_and_the_first_passing_one_wins() {
    // A full payment passes both `covers_total` and `is_positive`; the first edge wins.
    let mut ctx = order(100);
    let step = fsm::step::<Order>(OrderState::Created, &mut ctx, &pay(100)).unwrap();
    assert_eq!(
        (step.from, step.to, step.edge),
        (OrderState::Created, OrderState::Paid, 0)
    );
    assert_eq!(ctx.paid, 100);
}

#[test]
fn a_later_guard_takes_what_an_earlier_one_rejects() {
    let mut ctx = order(100);
    let step = fsm::step::<Order>(OrderState::Created, &mut ctx, &pay(40)).unwrap();
    assert_eq!(step.to, OrderState::PartlyPaid);
    let step = fsm::step::<Order>(step.to, &mut ctx, &pay(60)).unwrap();
    assert_eq!(step.to, OrderState::Paid);
    assert_eq!(ctx.paid, 100);
}

#[test]
fn guard_rejection_lists_every_guard_tried_and_leaves_the_context_alone() {
    let mut ctx = order(100);
    let before = ctx.clone();
    let rejection = fsm::step::<Order>(OrderState::Created, &mut ctx, &pay(0)).unwrap_err();
    assert_eq!(
        rejection,
        Rejection::GuardRejected {
            guards: vec!["covers_total", "is_positive"]
        }
    );
    assert_eq!(ctx, before);
}

#[test]
fn an_event_without_an_edge_is_illegal_and_says_whether_it_repeats() {
    let mut ctx = order(100);
    let repeat = fsm::step::<Order>(OrderState::Paid, &mut ctx, &pay(100)).unwrap_err();
    assert_eq!(repeat, Rejection::Illegal { repeat: true });
    let ship = OrderEvent::Ship(Tracking {
        number: "T1".into(),
    });
    let illegal = fsm::step::<Order>(OrderState::Created, &mut ctx, &ship).unwrap_err();
    assert_eq!(illegal, Rejection::Illegal { repeat: false });
    let delivered = fsm::step::<Order>(OrderState::Delivered, &mut ctx, &OrderEvent::Deliver);
    assert_eq!(delivered.unwrap_err(), Rejection::Illegal { repeat: true });
}

#[test]
fn actions_change_the_context_and_emit_effects() {
    let mut ctx = order(100);
    let step = fsm::step::<Order>(OrderState::Created, &mut ctx, &pay(100)).unwrap();
    assert_eq!(step.effects.into_vec(), vec![OrderEffect::Charge(100)]);
    let cancel = OrderEvent::Cancel(Reason("changed my mind".into()));
    let step = fsm::step::<Order>(OrderState::Paid, &mut ctx, &cancel).unwrap();
    assert_eq!(step.to, OrderState::Cancelled);
    assert_eq!(step.effects.into_vec(), vec![OrderEffect::Refund(100)]);
    assert_eq!(ctx.notes, ["changed my mind"]);
}

#[test]
fn an_edge_without_action_emits_nothing() {
    let mut ctx = order(100);
    let ship = OrderEvent::Ship(Tracking {
        number: "T1".into(),
    });
    let step = fsm::step::<Order>(OrderState::Paid, &mut ctx, &ship).unwrap();
    assert_eq!(step.to, OrderState::Shipped);
    assert!(step.effects.is_empty());
    assert_eq!(ctx, order(100));
}

#[test]
fn a_line_with_several_sources_leaves_each_of_them() {
    for from in [
        OrderState::Created,
        OrderState::PartlyPaid,
        OrderState::Paid,
    ] {
        let mut ctx = order(100);
        let cancel = OrderEvent::Cancel(Reason("no".into()));
        let step = fsm::step::<Order>(from, &mut ctx, &cancel).unwrap();
        assert_eq!(step.to, OrderState::Cancelled, "from {from}");
    }
}

#[test]
fn timers_fire_through_step_timer() {
    let expire = Duration::from_secs(30 * 60);
    let mut ctx = order(100);
    let step = fsm::step_timer::<Order>(OrderState::Created, &mut ctx, expire).unwrap();
    assert_eq!(step.to, OrderState::Expired);
    assert!(step.effects.is_empty());
    // The machine moved on: the timer no longer applies.
    let moved_on = fsm::step_timer::<Order>(OrderState::Paid, &mut ctx, expire).unwrap_err();
    assert_eq!(moved_on, Rejection::Illegal { repeat: false });
}

#[test]
fn guarded_timers_run_their_guard_and_action() {
    let remind = fsm::kit::timer_delay::<Order>(timer_edge("PartlyPaid")).unwrap();
    let mut ctx = order(100);
    for n in 1..=2 {
        let step = fsm::step_timer::<Order>(OrderState::PartlyPaid, &mut ctx, remind).unwrap();
        assert_eq!(step.to, OrderState::PartlyPaid);
        assert_eq!(step.effects.into_vec(), vec![OrderEffect::Remind(n)]);
    }
    let done = fsm::step_timer::<Order>(OrderState::PartlyPaid, &mut ctx, remind).unwrap_err();
    assert_eq!(
        done,
        Rejection::GuardRejected {
            guards: vec!["reminders_left"]
        }
    );
}

#[test]
fn timer_edges_are_listed_per_state() {
    assert_eq!(
        Order::timer_edges(OrderState::Created),
        [timer_edge("Created")]
    );
    assert_eq!(
        Order::timer_edges(OrderState::PartlyPaid),
        [timer_edge("PartlyPaid")]
    );
    assert!(Order::timer_edges(OrderState::Paid).is_empty());
    let delay = fsm::kit::timer_delay::<Order>(timer_edge("Created"));
    assert_eq!(delay, Some(Duration::from_secs(30 * 60)));
}

#[test]
fn edges_are_listed_per_state_and_event_in_declaration_order() {
    assert_eq!(Order::edges(OrderState::Created, &pay(1)), [0, 1]);
    assert_eq!(
        Order::edges(OrderState::Delivered, &pay(1)),
        [] as [fsm::EdgeIndex; 0]
    );
    for (i, edge) in Order::DEFINITION.edges.iter().enumerate() {
        let i = fsm::EdgeIndex::try_from(i).unwrap();
        assert_eq!(Order::target(i).as_str(), edge.to);
    }
}

#[test]
fn state_names_round_trip_for_every_state() {
    assert_eq!(OrderState::ALL.len(), Order::DEFINITION.states.len());
    for (state, info) in OrderState::ALL.into_iter().zip(Order::DEFINITION.states) {
        assert_eq!(state.as_str(), info.name);
        assert_eq!(state.to_string(), info.name);
        assert_eq!(info.name.parse::<OrderState>(), Ok(state));
        assert_eq!(Order::state_name(state), info.name);
        assert_eq!(Order::parse_state(info.name), Some(state));
    }
    assert_eq!(format!("{:>9}", OrderState::Paid), "     Paid");
}

#[test]
fn event_names_round_trip_for_every_kind() {
    assert_eq!(OrderEventKind::ALL.len(), Order::DEFINITION.events.len());
    for (kind, info) in OrderEventKind::ALL
        .into_iter()
        .zip(Order::DEFINITION.events)
    {
        assert_eq!(kind.as_str(), info.name);
        assert_eq!(kind.to_string(), info.name);
        assert_eq!(info.name.parse::<OrderEventKind>(), Ok(kind));
    }
    assert_eq!(pay(1).kind(), OrderEventKind::Pay);
    assert_eq!(pay(1).as_str(), "Pay");
    assert_eq!(Order::event_name(&OrderEvent::Deliver), "Deliver");
}

#[test]
fn unknown_names_are_an_error_naming_the_machine() {
    assert_eq!(
        "Lost".parse::<OrderState>(),
        Err(UnknownName {
            machine: "Order",
            kind: "state",
            name: "Lost".into()
        })
    );
    assert_eq!(
        "paid".parse::<OrderEventKind>(),
        Err(UnknownName {
            machine: "Order",
            kind: "event",
            name: "paid".into()
        })
    );
    assert_eq!(Order::parse_state("created"), None);
}

#[test]
fn states_and_events_serialize_by_name() {
    assert_eq!(
        serde_json::to_string(&OrderState::Paid).unwrap(),
        r#""Paid""#
    );
    assert_eq!(
        serde_json::from_str::<OrderState>(r#""Shipped""#).unwrap(),
        OrderState::Shipped
    );
    assert_eq!(
        serde_json::to_string(&pay(5)).unwrap(),
        r#"{"Pay":{"amount":5}}"#
    );
    assert_eq!(
        serde_json::to_string(&OrderEvent::Deliver).unwrap(),
        r#""Deliver""#
    );
    let event: OrderEvent = serde_json::from_str(r#"{"Cancel":"late"}"#).unwrap();
    assert!(matches!(event, OrderEvent::Cancel(Reason(r)) if r == "late"));
    assert_eq!(
        serde_json::to_string(&OrderEventKind::Ship).unwrap(),
        r#""Ship""#
    );
}

#[test]
fn the_definition_describes_the_machine() {
    let d = Order::DEFINITION;
    assert!(std::ptr::eq(d, <Order as StateMachine>::DEFINITION));
    assert_eq!(d.name, "Order");
    assert_eq!(d.doc, "An order from checkout to delivery.");
    assert_eq!((d.context, d.effect), ("OrderData", Some("OrderEffect")));
    assert_eq!(d.initial().name, "Created");
    assert_eq!(Order::INITIAL, OrderState::Created);
    assert_eq!(d.state("Created").unwrap().doc, "Waiting for payment.");
    let terminal: Vec<&str> = d
        .states
        .iter()
        .filter(|s| s.terminal)
        .map(|s| s.name)
        .collect();
    assert_eq!(terminal, ["Delivered", "Cancelled", "Expired"]);
    assert_eq!(d.event("Pay").unwrap().doc, "The customer paid.");
    assert_eq!(d.event("Pay").unwrap().payload, Some("Payment"));
    assert_eq!(d.event("Deliver").unwrap().payload, None);
    assert_eq!(d.edges.len(), 10);
    assert_eq!(d.edges[0].guard, Some("covers_total"));
    assert_eq!(d.edges[0].action, Some("record_payment"));
    assert_eq!(d.edges[0].on, On::Event("Pay"));
    let timers: Vec<(&str, On)> = d.timers().map(|(_, e)| (e.from, e.on)).collect();
    assert_eq!(
        timers,
        [
            ("Created", On::After(Duration::from_secs(30 * 60))),
            ("PartlyPaid", On::After(Duration::from_secs(2 * 86_400))),
        ]
    );
}

#[test]
fn a_machine_without_context_or_rules_uses_unit() {
    let mut ctx = ();
    let step = fsm::step::<Toggle>(ToggleState::Off, &mut ctx, &ToggleEvent::Flip).unwrap();
    assert_eq!(step.to, ToggleState::On);
    assert_eq!(Toggle::DEFINITION.context, "()");
    assert_eq!(Toggle::DEFINITION.effect, None);
    assert_eq!(ToggleState::ALL, [ToggleState::Off, ToggleState::On]);
}
