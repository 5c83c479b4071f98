//! The relay against a JetStream server (`FSM_NATS_URL`, e.g. `nats://127.0.0.1:4222`):
//! subjects, headers and payloads, the duplicate window, and failures that retry.

mod common;

use std::time::Duration;

use fsm_core::testing::{Note, Order, OrderData, OrderEffect, OrderEvent, Payment};
use fsm_core::{Command, Delivery, DispatchOptions, Dispatcher, DurableStore, MemoryStore, Store};
use fsm_nats::{Relay, RelayError, subject::token};

use common::{TestStream, header};

fn order() -> OrderData {
    OrderData {
        total_cents: 500,
        ..OrderData::default()
    }
}

const WINDOW: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_are_published_with_their_id_and_debezium_headers() {
    let Some(url) = common::server_url() else {
        return;
    };
    let jetstream = common::jetstream(&url).await;
    let mut stream = TestStream::create(&url, &jetstream, WINDOW).await;

    let store = MemoryStore::new();
    store.create::<Order>("o-1", order()).await.unwrap();
    store
        .fire(
            "o-1",
            Command::new(OrderEvent::Pay(Payment { amount_cents: 500 })),
        )
        .await
        .unwrap();
    store
        .fire(
            "o-1",
            Command::new(OrderEvent::Annotate(Note("gift".into()))),
        )
        .await
        .unwrap();
    store
        .fire("o-1", Command::new(OrderEvent::Cancel))
        .await
        .unwrap();

    let relay = Relay::<Order>::new(jetstream.clone(), stream.name.clone());
    let report = Dispatcher::new(store.clone())
        .dispatch_once::<Order, _, _>(&relay.handler())
        .await
        .unwrap();
    assert_eq!((report.done, report.retried, report.dead), (3, 0, 0));

    let messages = stream.messages().await;
    let expected = [
        (
            "Order/o-1/1/0",
            "Charge",
            OrderEffect::Charge { cents: 500 },
        ),
        ("Order/o-1/2/0", "Noted", OrderEffect::Noted("gift".into())),
        (
            "Order/o-1/3/0",
            "Refund",
            OrderEffect::Refund { cents: 500 },
        ),
    ];
    assert_eq!(messages.len(), expected.len());
    for (message, (id, kind, effect)) in messages.iter().zip(expected) {
        assert_eq!(
            message.subject.as_str(),
            format!("{}.Order.{kind}", stream.name)
        );
        assert_eq!(header(message, "Nats-Msg-Id"), Some(id));
        assert_eq!(header(message, "id"), Some(id));
        assert_eq!(header(message, "aggregatetype"), Some("Order"));
        assert_eq!(header(message, "aggregateid"), Some("o-1"));
        assert_eq!(header(message, "type"), Some(kind));
        let published: OrderEffect = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(published, effect);
    }
    let outbox = store.outbox::<Order>("o-1").await.unwrap();
    assert!(outbox.iter().all(|row| row.done_at_ms.is_some()));
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_republished_effect_is_absorbed_by_the_duplicate_window() {
    let Some(url) = common::server_url() else {
        return;
    };
    let jetstream = common::jetstream(&url).await;
    let mut stream = TestStream::create(&url, &jetstream, WINDOW).await;
    let relay = Relay::<Order>::new(jetstream.clone(), stream.name.clone());
    let delivery = Delivery {
        id: fsm_core::EffectId {
            machine: "Order",
            id: "o-1".into(),
            version: 1,
            seq: 0,
        },
        effect: OrderEffect::Charge { cents: 500 },
        attempt: 1,
    };

    let first = relay.publish(&delivery).await.unwrap();
    let again = relay
        .publish(&Delivery {
            attempt: 2,
            ..delivery.clone()
        })
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "the second publish was stored again");
    assert_eq!(again.sequence, first.sequence);
    assert_eq!(stream.messages().await.len(), 1);
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_dots_wildcards_spaces_and_line_breaks_stay_in_their_place() {
    let Some(url) = common::server_url() else {
        return;
    };
    let jetstream = common::jetstream(&url).await;
    let mut stream = TestStream::create(&url, &jetstream, WINDOW).await;
    let store = MemoryStore::new();
    let ids = ["eu.o-1 *>", "line\r\nNats-Msg-Id: forged"];
    for id in ids {
        store.create::<Order>(id, order()).await.unwrap();
        store
            .fire(
                id,
                Command::new(OrderEvent::Pay(Payment { amount_cents: 500 })),
            )
            .await
            .unwrap();
    }
    let prefix = stream.name.clone();
    let relay =
        Relay::<Order>::new(jetstream.clone(), prefix.clone()).with_subject(move |id, kind| {
            format!(
                "{prefix}.{}.{}.{}",
                token(id.machine),
                token(&id.id),
                token(kind)
            )
        });
    let report = Dispatcher::new(store)
        .dispatch_once::<Order, _, _>(&relay.handler())
        .await
        .unwrap();
    assert_eq!(report.done, 2);

    let mut messages = stream.messages().await;
    messages.sort_by_key(|m| m.subject.to_string());
    let subjects: Vec<String> = messages.iter().map(|m| m.subject.to_string()).collect();
    assert_eq!(
        subjects,
        [
            format!("{}.Order.eu_o-1___.Charge", stream.name),
            format!("{}.Order.line__Nats-Msg-Id:_forged.Charge", stream.name),
        ]
    );
    assert_eq!(header(&messages[0], "aggregateid"), Some("eu.o-1 *>"));
    assert_eq!(
        header(&messages[0], "Nats-Msg-Id"),
        Some("Order/eu.o-1 *>/1/0")
    );
    assert_eq!(
        header(&messages[1], "Nats-Msg-Id"),
        Some("Order/line%0D%0ANats-Msg-Id: forged/1/0")
    );
    assert_eq!(messages[1].headers.get_all("Nats-Msg-Id").count(), 1);
    stream.delete(&jetstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_is_retried_then_dead_lettered() {
    let Some(url) = common::server_url() else {
        return;
    };
    let jetstream = common::jetstream(&url).await;
    let store = MemoryStore::new();
    store.create::<Order>("o-1", order()).await.unwrap();
    store
        .fire(
            "o-1",
            Command::new(OrderEvent::Pay(Payment { amount_cents: 500 })),
        )
        .await
        .unwrap();
    let relay = Relay::<Order>::new(jetstream, common::unique_name());
    let dispatcher = Dispatcher::new(store.clone()).with_options(DispatchOptions {
        max_attempts: 2,
        backoff: Duration::ZERO,
        ..DispatchOptions::default()
    });
    let handler = relay.handler();
    let first = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!((first.retried, first.dead), (1, 0));
    let second = dispatcher
        .dispatch_once::<Order, _, _>(&handler)
        .await
        .unwrap();
    assert_eq!((second.retried, second.dead), (0, 1));
    let dead = store.dead_letters::<Order>().await.unwrap();
    assert_eq!(dead[0].id.to_string(), "Order/o-1/1/0");
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(
        error.contains("Order/o-1/1/0") && error.contains("publish"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_within_the_timeout_is_a_failed_publish() {
    let Some(url) = common::server_url() else {
        return;
    };
    let jetstream = common::jetstream(&url).await;
    // A plain subscriber, not a stream: the publish has a responder that never acks.
    let prefix = common::unique_name();
    let _silent = jetstream
        .client()
        .subscribe(format!("{prefix}.>"))
        .await
        .unwrap();
    jetstream.client().flush().await.unwrap();
    let relay = Relay::<Order>::new(jetstream, prefix).with_timeout(Duration::from_millis(300));
    let delivery = Delivery {
        id: fsm_core::EffectId {
            machine: "Order",
            id: "o-1".into(),
            version: 1,
            seq: 0,
        },
        effect: OrderEffect::Charge { cents: 500 },
        attempt: 1,
    };
    let started = std::time::Instant::now();
    let err = relay.publish(&delivery).await.unwrap_err();
    assert!(matches!(err, RelayError::TimedOut { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
