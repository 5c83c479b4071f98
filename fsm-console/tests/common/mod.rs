//! A console served on 127.0.0.1 over a real store, with orders in every situation the
//! pages show: several states, a stuck one, history, timers, effects and a dead letter.

// Each test crate uses part of this module.
#![allow(dead_code)]

use std::time::Duration;

use fsm_core::kit::Settlement;
use fsm_core::testing::{Note, Order, OrderData, OrderEvent, Payment};
use fsm_core::{Command, DurableStore, EffectId, MemoryStore};

/// The id an attacker would choose.
pub(crate) const SCRIPT_ID: &str = "<script>alert('id')</script>";

/// A running console.
pub(crate) struct Served {
    /// `http://127.0.0.1:PORT/console`.
    pub(crate) url: String,
    /// The `Origin` of the server.
    pub(crate) origin: String,
    pub(crate) http: reqwest::Client,
}

/// Serves `console` nested at `/console` on a free port, as the HTTP example does.
pub(crate) async fn serve(console: axum::Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().nest("/console", console);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Served {
        url: format!("{origin}/console"),
        origin,
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

impl Served {
    /// The body of `GET path`, which must answer `status`.
    pub(crate) async fn page(&self, path: &str, status: u16) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "GET {path}");
        response.text().await.unwrap()
    }
}

fn order(total_cents: u64) -> OrderData {
    OrderData {
        total_cents,
        ..OrderData::default()
    }
}

fn pay(amount_cents: u64) -> Command<Order> {
    Command::new(OrderEvent::Pay(Payment { amount_cents }))
}

/// Orders: 3 created (one with a hostile id and context), 2 paid (one annotated), 1
/// shipped, 1 cancelled after payment whose refund is a dead letter. Returns the dead
/// letter's id.
pub(crate) async fn seed<S: DurableStore>(store: &S) -> EffectId {
    for id in ["o-created-1", "o-created-2"] {
        store.create::<Order>(id, order(500)).await.unwrap();
    }
    let hostile = OrderData {
        total_cents: 1,
        notes: vec!["<script>alert('context')</script>".into()],
        ..OrderData::default()
    };
    store.create::<Order>(SCRIPT_ID, hostile).await.unwrap();
    for id in ["o-paid-1", "o-paid-2", "o-shipped", "o-refunded"] {
        store.create::<Order>(id, order(500)).await.unwrap();
        store
            .fire(id, pay(500).with_key(format!("pay-{id}")))
            .await
            .unwrap();
    }
    store
        .fire(
            "o-paid-1",
            Command::new(OrderEvent::Annotate(Note("<b>gift</b> wrap".into()))),
        )
        .await
        .unwrap();
    store
        .fire("o-shipped", Command::new(OrderEvent::Ship))
        .await
        .unwrap();
    store
        .fire("o-refunded", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();
    // Every charge is handled; the refund fails for good.
    let claimed = store
        .claim_effects("Order", Duration::from_secs(60), 100)
        .await
        .unwrap();
    let mut dead = None;
    for row in &claimed {
        let settlement = if row.machine_id == "o-refunded" && row.version == 2 {
            dead = Some(row.id("Order"));
            Settlement::Dead {
                error: "<i>processor</i> refused",
            }
        } else {
            Settlement::Done
        };
        assert!(store.settle_effect("Order", row, settlement).await.unwrap());
    }
    dead.expect("the refund was claimed")
}

/// A memory store seeded with [`seed`].
pub(crate) async fn memory() -> (MemoryStore, EffectId) {
    let store = MemoryStore::new();
    let dead = seed(&store).await;
    (store, dead)
}
