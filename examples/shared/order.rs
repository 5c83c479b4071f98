//! The Order machine of the examples: an order from checkout to delivery, its payloads,
//! its context [`OrderData`], the effects it writes to the outbox, and its rules.
//!
//! Not an example of its own: `examples/order_lifecycle.rs` and
//! `examples/http_service/app.rs` (and through it `tests/http_service.rs`) include it with
//! `#[path = ".."] mod order;`.

use serde::{Deserialize, Serialize};

use fsm::Effects;

/// A card payment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Payment {
    /// Amount in cents.
    pub(crate) amount_cents: u64,
}

/// A carrier's tracking number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tracking(pub(crate) String);

/// Why an order was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reason(pub(crate) String);

/// What the service knows about an order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OrderData {
    /// What the customer owes, in cents.
    pub(crate) total_cents: u64,
    /// What was paid, in cents.
    pub(crate) paid_cents: u64,
    /// The parcel's tracking number once shipped.
    pub(crate) tracking: Option<String>,
}

/// Side effects, written to the outbox with each transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OrderEffect {
    /// Capture the payment at the card processor.
    Charge {
        /// Amount in cents.
        cents: u64,
    },
    /// Give money back.
    Refund {
        /// Amount in cents.
        cents: u64,
    },
    /// Tell the customer where the parcel is.
    EmailTracking(String),
}

fsm::state_machine! {
    /// An order from checkout to delivery.
    pub(crate) machine Order {
        context: OrderData,
        effect: OrderEffect,

        states {
            /// Placed, waiting for payment.
            Created,
            /// Paid, waiting for the warehouse.
            Paid,
            /// Handed to the carrier.
            Shipped,
            /// At the customer.
            Delivered,
            /// Cancelled before shipping; any payment is refunded.
            Cancelled,
            /// Never paid.
            Expired,
        }

        *Created + Pay(Payment) [amount_matches] / record_payment => Paid,
        Created | Paid + Cancel(Reason) / refund_if_paid => Cancelled,
        Paid + Ship(Tracking) / email_tracking => Shipped,
        Shipped + Deliver => Delivered,
        Created + after(30 min) => Expired,
    }
}

impl OrderRules for OrderData {
    fn amount_matches(&self, payment: &Payment) -> bool {
        payment.amount_cents == self.total_cents
    }

    fn record_payment(&mut self, payment: &Payment, effects: &mut Effects<OrderEffect>) {
        self.paid_cents += payment.amount_cents;
        effects.emit(OrderEffect::Charge {
            cents: payment.amount_cents,
        });
    }

    fn refund_if_paid(&mut self, _reason: &Reason, effects: &mut Effects<OrderEffect>) {
        if self.paid_cents > 0 {
            effects.emit(OrderEffect::Refund {
                cents: self.paid_cents,
            });
            self.paid_cents = 0;
        }
    }

    fn email_tracking(&mut self, tracking: &Tracking, effects: &mut Effects<OrderEffect>) {
        self.tracking = Some(tracking.0.clone());
        effects.emit(OrderEffect::EmailTracking(tracking.0.clone()));
    }
}
