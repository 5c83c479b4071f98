//! Composite states compile with every generated item documented and no warning: a
//! parent's edge applies to its states, an edge into a parent enters its initial child,
//! and entry and exit actions run across the parent's boundary only.
#![deny(missing_docs, warnings)]

use fsm::Effects;

fsm::state_machine! {
    /// An order whose fulfilment is one parent state.
    pub machine Order {
        effect: String,
        states {
            /// Between payment and delivery.
            #[entry(open_case)]
            #[exit(close_case)]
            Active {
                *Paid,
                Shipping { *Packed, Sent }
            }
        }
        *Created + Pay => Active,
        Paid + Ship => Shipping,
        Packed + Send => Sent,
        Sent + Deliver => Delivered,
        Active + Cancel => Cancelled,
    }
}

impl OrderRules for () {
    fn open_case(&mut self, effects: &mut Effects<String>) {
        effects.emit("open".into());
    }

    fn close_case(&mut self, effects: &mut Effects<String>) {
        effects.emit("close".into());
    }
}

fn main() {
    let step = fsm::step::<Order>(OrderState::Created, &mut (), &OrderEvent::Pay).unwrap();
    assert_eq!(
        (step.to, step.effects.into_vec()),
        (OrderState::Paid, vec!["open".to_owned()])
    );
    let step = fsm::step::<Order>(OrderState::Paid, &mut (), &OrderEvent::Ship).unwrap();
    assert_eq!(step.to, OrderState::Packed);
    assert!(step.effects.is_empty());
    let step = fsm::step::<Order>(OrderState::Sent, &mut (), &OrderEvent::Cancel).unwrap();
    assert_eq!(
        (step.to, step.effects.into_vec()),
        (OrderState::Cancelled, vec!["close".to_owned()])
    );
    assert!(OrderState::Sent.is_within("Active"));
    assert!(!OrderState::Delivered.is_within("Active"));
}
