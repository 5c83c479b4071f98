//! The DSL's full example compiles with every generated item documented and no warning.
#![deny(missing_docs, warnings)]

use fsm::Effects;
use serde::{Deserialize, Serialize};

/// A payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    /// Amount in cents.
    pub amount: u64,
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reason(pub String);

/// A parcel's tracking number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tracking(pub String);

/// The order's data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrderData {
    /// Amount due in cents.
    pub total: u64,
    /// Amount paid in cents.
    pub paid: u64,
}

/// What the order's actions emit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OrderEffect {
    /// Refund this many cents.
    Refund(u64),
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
        *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
        Created | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
        Paid + Ship(Tracking) => Shipped,
        Shipped + Deliver => Delivered,
        Created + after(30 min) => Expired,
    }
}

impl OrderRules for OrderData {
    fn amount_matches(&self, payment: &Payment) -> bool {
        payment.amount == self.total
    }

    fn record_payment(&mut self, payment: &Payment, _: &mut Effects<OrderEffect>) {
        self.paid += payment.amount;
    }

    fn refund_if_paid(&mut self, _: &Reason, effects: &mut Effects<OrderEffect>) {
        if self.paid > 0 {
            effects.emit(OrderEffect::Refund(self.paid));
        }
    }
}

fn main() {
    let mut data = OrderData { total: 5, paid: 0 };
    let event = OrderEvent::Pay(Payment { amount: 5 });
    let step = fsm::step::<Order>(OrderState::Created, &mut data, &event).unwrap();
    assert_eq!(step.to, OrderState::Paid);
    let _ = (Reason(String::new()).0, Tracking(String::new()).0);
}
